"""Write a tar file (optionally gzip-wrapped) member by member, streaming each member's content.

A member's size goes in its header, before its content: the caller gives it, then the content
as chunks of any size, written as they come (nothing is held whole; a 2 GB weight streams a
slab at a time). The bytes are those of :mod:`tarfile` (POSIX pax headers, 512-byte blocks,
the end-of-archive blocks and the padding to a 10240-byte record).

gzip at level 0 is written here as stored deflate blocks, each chunk split into blocks of at
most 65535 bytes that go to the file as they are (``os.writev``): zlib's level 0 copies every
byte through its window, which costs about as much as writing the file itself. Other levels
use zlib. Either way the stream is a standard gzip member (RFC 1952) with its CRC-32 and size.
"""

from __future__ import annotations

import os
import struct
import tarfile
import zlib
from typing import BinaryIO

from t2n_core.errors import ArchiveFormatError

#: a stored deflate block holds at most this many bytes
_STORED_MAX = 0xFFFF
#: writes smaller than this are gathered before they go to the file
_SMALL = 1 << 16
#: iovecs given to one ``os.writev`` call (Linux allows 1024)
_IOV_BATCH = 512


class _RawSink:
    """Bytes to an unbuffered file; small writes gathered."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.fd = raw.fileno()
        self.pending = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        if len(data) < _SMALL:
            self.pending += data
            if len(self.pending) >= _SMALL:
                self._flush()
            return
        self._flush()
        self._put(memoryview(data).cast("B"))

    def _flush(self) -> None:
        if self.pending:
            data, self.pending = self.pending, bytearray()
            self._put(memoryview(data))

    def _put(self, data: memoryview) -> None:
        _write_all(self.fd, [data])

    def close(self) -> None:
        self._flush()


class _StoredGzipSink(_RawSink):
    """A gzip member of stored (uncompressed) deflate blocks."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self.crc = 0
        self.size = 0
        # magic, deflate, no flags, mtime 0, no extra flags, OS unknown: as gzip.GzipFile writes
        _write_all(self.fd, [memoryview(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")])

    def _put(self, data: memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        buffers: list[memoryview | bytes] = []
        for start in range(0, len(data), _STORED_MAX):
            block = data[start : start + _STORED_MAX]
            n = len(block)
            buffers += [struct.pack("<BHH", 0, n, n ^ 0xFFFF), block]
        _write_all(self.fd, buffers)

    def close(self) -> None:
        self._flush()
        final = struct.pack("<BHH", 1, 0, 0xFFFF)  # an empty last block ends the stream
        trailer = struct.pack("<II", self.crc, self.size & 0xFFFFFFFF)
        _write_all(self.fd, [final, trailer])


class _ZlibGzipSink(_RawSink):
    """A gzip member compressed by zlib at ``level`` (1-9)."""

    def __init__(self, raw: BinaryIO, level: int) -> None:
        super().__init__(raw)
        self.crc = 0
        self.size = 0
        self.zlib = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([xfl]) + b"\xff"
        _write_all(self.fd, [memoryview(header)])

    def _put(self, data: memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        _write_all(self.fd, [memoryview(self.zlib.compress(data))])

    def close(self) -> None:
        self._flush()
        tail = self.zlib.flush() + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF)
        _write_all(self.fd, [memoryview(tail)])


def _write_all(fd: int, buffers: list[memoryview | bytes]) -> None:
    """Write ``buffers`` in order, in batches of ``os.writev`` calls (partial writes resumed)."""
    for i in range(0, len(buffers), _IOV_BATCH):
        batch = [m for b in buffers[i : i + _IOV_BATCH] if len(m := memoryview(b).cast("B"))]
        first = 0
        while first < len(batch):
            done = os.writev(fd, batch[first:] if first else batch)
            if done == 0:
                raise OSError(f"cannot write to file descriptor {fd}: nothing was written")
            while first < len(batch) and done >= len(batch[first]):
                done -= len(batch[first])
                first += 1
            if done:
                batch[first] = batch[first][done:]


class TarStream:
    """A tar file written member by member to ``raw`` (an unbuffered binary file).

    ``gzip``: None for a plain tar, else the compression level (0: stored blocks).
    """

    def __init__(self, raw: BinaryIO, gzip: int | None) -> None:
        if gzip is None:
            self.sink: _RawSink = _RawSink(raw)
        elif gzip == 0:
            self.sink = _StoredGzipSink(raw)
        else:
            self.sink = _ZlibGzipSink(raw, gzip)
        self.offset = 0

    def begin(self, info: tarfile.TarInfo) -> None:
        """Write the header of a member of ``info.size`` bytes; its content follows."""
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.sink.write(header)
        self.offset += len(header)
        self._member = (info.name, info.size, self.offset)

    def write(self, chunk: bytes | memoryview) -> None:
        """Write the next piece of the current member's content (any buffer: its bytes)."""
        data = memoryview(chunk).cast("B")
        self.sink.write(data)
        self.offset += len(data)

    def end(self) -> None:
        """Close the current member: its content must have had the size its header gave."""
        name, size, start = self._member
        if self.offset - start != size:
            raise ArchiveFormatError(
                f"{name}: {self.offset - start} bytes written, its tar header says {size}"
            )
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self.write(bytes(pad))

    def close(self) -> None:
        """The two zero blocks that end a tar, the padding to a full record, the gzip trailer."""
        self.write(bytes(2 * tarfile.BLOCKSIZE))
        rest = -self.offset % tarfile.RECORDSIZE
        if rest:
            self.write(bytes(rest))
        self.sink.close()

"""Write a tar file (optionally gzip-wrapped) member by member, streaming each member's content.

A member's size goes in its header, before its content: the caller gives it, then the content
as chunks of any size, written as they come (nothing is held whole; a 2 GB weight streams a
slab at a time). The bytes are those of :mod:`tarfile` (POSIX pax headers, 512-byte blocks,
the end-of-archive blocks and the padding to a 10240-byte record).

gzip at level 0 is written here as stored deflate blocks, each chunk split into blocks of at
most 65535 bytes that go to the file as they are (``os.writev``): zlib's level 0 copies every
byte through its window, which costs about as much as writing the file itself. Other levels
use zlib. Either way the stream is a standard gzip member (RFC 1952) with its CRC-32 and size.

The file is written with ``O_DIRECT`` where the file system allows it (staged in 8 MiB aligned
buffers): the kernel's copy into its page cache costs more CPU than everything else here.
"""

from __future__ import annotations

import errno
import mmap
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
#: direct (``O_DIRECT``) writes: staged this many bytes at a time, in blocks of this size
_DIRECT_STAGE = 8 << 20
_DIRECT_ALIGN = 4096


class _RawSink:
    """Bytes to an unbuffered file; small writes gathered."""

    def __init__(self, out: _Output) -> None:
        self.out = out
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
        self.out.write([data])

    def close(self) -> None:
        self._flush()
        self.out.close()


class _StoredGzipSink(_RawSink):
    """A gzip member of stored (uncompressed) deflate blocks."""

    def __init__(self, out: _Output) -> None:
        super().__init__(out)
        self.crc = 0
        self.size = 0
        # magic, deflate, no flags, mtime 0, no extra flags, OS unknown: as gzip.GzipFile writes
        self.out.write([b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"])

    def _put(self, data: memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        buffers: list[memoryview | bytes] = []
        for start in range(0, len(data), _STORED_MAX):
            block = data[start : start + _STORED_MAX]
            n = len(block)
            buffers += [struct.pack("<BHH", 0, n, n ^ 0xFFFF), block]
        self.out.write(buffers)

    def close(self) -> None:
        self._flush()
        final = struct.pack("<BHH", 1, 0, 0xFFFF)  # an empty last block ends the stream
        trailer = struct.pack("<II", self.crc, self.size & 0xFFFFFFFF)
        self.out.write([final, trailer])
        self.out.close()


class _ZlibGzipSink(_RawSink):
    """A gzip member compressed by zlib at ``level`` (1-9)."""

    def __init__(self, out: _Output, level: int) -> None:
        super().__init__(out)
        self.crc = 0
        self.size = 0
        self.zlib = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
        xfl = 2 if level == 9 else 4 if level == 1 else 0
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([xfl]) + b"\xff"
        self.out.write([header])

    def _put(self, data: memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.out.write([self.zlib.compress(data)])

    def close(self) -> None:
        self._flush()
        self.out.write([self.zlib.flush() + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF)])
        self.out.close()


class _Output:
    """Buffers to a file descriptor, in order (through the page cache)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, buffers: list[memoryview | bytes]) -> None:
        _write_all(self.fd, buffers)

    def close(self) -> None:
        pass


class _DirectOutput(_Output):
    """Buffers to a file in ``O_DIRECT`` mode: gathered into an aligned staging buffer that is
    written whole, past the page cache (the kernel's copy into the cache cost 0.3-1 s of CPU
    per 465 MB here, more than all the rest of writing; this costs one memcpy). The last
    partial buffer is padded to the block size, then the file is cut to its length. A file
    system that refuses direct writes gets plain ones."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.stage = mmap.mmap(-1, _DIRECT_STAGE)  # page-aligned, as O_DIRECT needs
        self.view = memoryview(self.stage)
        self.filled = 0
        self.length = 0
        self.direct = True

    def write(self, buffers: list[memoryview | bytes]) -> None:
        for i, buffer in enumerate(buffers):
            data = memoryview(buffer).cast("B")
            while len(data) and self.direct:
                n = min(len(data), _DIRECT_STAGE - self.filled)
                self.view[self.filled : self.filled + n] = data[:n]
                self.filled += n
                data = data[n:]
                if self.filled == _DIRECT_STAGE:
                    self._drain()
            if not self.direct:  # refused (now or before): the rest goes plainly
                super().write([data, *buffers[i + 1 :]])
                return

    def _drain(self) -> None:
        """Write the staged bytes (padded to the block size, the last time)."""
        size = self.filled + (-self.filled % _DIRECT_ALIGN)
        self.view[self.filled : size] = bytes(size - self.filled)
        try:
            _write_all(self.fd, [self.view[:size]])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _set_direct(self.fd, False)  # refused: plain writes from here on
            self.direct = False
            _write_all(self.fd, [self.view[: self.filled]])
            self.length += self.filled
            self.filled = 0
            return
        self.length += self.filled
        self.filled = 0

    def close(self) -> None:
        if self.direct and self.filled:
            self._drain()
            os.ftruncate(self.fd, self.length)  # the padding of the last block goes
        self.view.release()
        self.stage.close()


def output_for(fd: int) -> _Output:
    """Direct writes where the OS and file system allow them, else plain ones."""
    return _DirectOutput(fd) if _set_direct(fd, True) else _Output(fd)


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; whether it is on now."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    import fcntl  # POSIX only, like O_DIRECT

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on


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
        out = output_for(raw.fileno())
        if gzip is None:
            self.sink: _RawSink = _RawSink(out)
        elif gzip == 0:
            self.sink = _StoredGzipSink(out)
        else:
            self.sink = _ZlibGzipSink(out, gzip)
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

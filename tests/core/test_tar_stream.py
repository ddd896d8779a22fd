"""Tar archives written member by member, content streamed: the bytes ``tarfile`` gives."""

import errno
import gzip
import io
import tarfile
import zlib
from array import array

import pytest

from t2n_core.errors import ArchiveFormatError
from t2n_core.nnef.archive import Stream, list_archive, write_archive

BIG = bytes(range(256)) * 1500  # 384000 bytes: several stored blocks, chunks over 64 KiB


def _files(src):
    return [
        ("graph.nnef", lambda: b"version 1.0;\n"),
        ("w.dat", lambda: [b"h" * 128, memoryview(BIG)]),
        ("s.dat", lambda: Stream(len(BIG) + 7, iter([b"1234567", BIG[:70000], BIG[70000:]]))),
        ("f.dat", lambda: Stream(24, iter([memoryview(array("f", [1.5] * 6))]))),  # typed buffer
        ("d/" + "n" * 150 + ".dat", lambda: b"z" * 1000),  # a pax header for the long name
        ("p.dat", lambda: src),
        ("empty.dat", lambda: b""),
    ]


def _expected(src) -> bytes:
    """The same members written by tarfile, as the writer did before streaming."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, produce in _files(src):
            content = produce()
            if isinstance(content, Stream):
                data = b"".join(memoryview(c).cast("B").tobytes() for c in content.chunks)
            elif isinstance(content, list):
                data = b"".join(bytes(c) for c in content)
            elif isinstance(content, bytes):
                data = content
            else:
                data = content.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("suffix,level", [(".tar", 0), (".tgz", 0), (".tgz", 1), (".tar.gz", 6)])
def test_streamed_tar_holds_the_bytes_tarfile_writes(tmp_path, suffix, level):
    src = tmp_path / "src.bin"
    src.write_bytes(BIG[:5000])
    path = write_archive(tmp_path / f"a{suffix}", _files(src), compresslevel=level)
    raw = path.read_bytes()
    if suffix == ".tar":
        assert raw == _expected(src)
        return
    assert gzip.decompress(raw) == _expected(src)  # CRC-32 and size checked by gzip
    header = raw[:10]
    assert header[:4] == b"\x1f\x8b\x08\x00" and header[4:8] == b"\0\0\0\0"  # no name, mtime 0
    if level == 0:  # stored blocks: the payload is in the file as it is
        assert BIG[:65535] in raw and len(raw) < len(_expected(src)) * 1.001 + 64
    else:
        assert len(raw) < len(_expected(src)) / 2
        assert zlib.decompressobj(-15).decompress(raw[10:-8]) == _expected(src)
    assert list_archive(path)["s.dat"] == len(BIG) + 7


def test_stream_shorter_or_longer_than_announced_fails_and_writes_nothing(tmp_path):
    target = tmp_path / "a.tgz"
    for chunks in ([b"abc"], [b"abcde", b"f"]):
        files = [("x.dat", lambda c=chunks: Stream(5, iter(c)))]
        with pytest.raises(ArchiveFormatError, match=r"x\.dat"):
            write_archive(target, files)
        assert not target.exists() and list(tmp_path.iterdir()) == []
    folder = tmp_path / "dir"
    with pytest.raises(ArchiveFormatError, match="announced"):
        write_archive(folder, [("x.dat", lambda: Stream(5, iter([b"abc"])))])
    assert not folder.exists()


def test_direct_writes_give_the_bytes_of_plain_ones(tmp_path, monkeypatch):
    from t2n_core.nnef import tar_stream

    src = tmp_path / "src.bin"
    src.write_bytes(BIG[:5000])
    monkeypatch.setattr(tar_stream, "_DIRECT_STAGE", 1 << 16)  # several staged buffers
    direct = write_archive(tmp_path / "d.tgz", _files(src)).read_bytes()
    assert len(direct) % 4096  # the padding of the last direct block was cut off
    with monkeypatch.context() as m:
        m.setattr(tar_stream, "output_for", tar_stream._Output)
        plain = write_archive(tmp_path / "p.tgz", _files(src)).read_bytes()
    assert direct == plain and gzip.decompress(plain) == _expected(src)
    real, refused = tar_stream._write_all, []

    def refuse_once(fd, buffers):  # a file system that refuses direct writes midway
        if not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, buffers)

    monkeypatch.setattr(tar_stream, "_write_all", refuse_once)
    assert write_archive(tmp_path / "f.tgz", _files(src)).read_bytes() == plain and refused

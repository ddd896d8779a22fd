"""Write and read NNEF archives: a directory or a ``.tgz``/``.tar.gz`` file.

Writing is atomic (a temporary sibling path, then a rename) and byte-reproducible
(sorted-free fixed order given by the caller, zero mtimes, no owner names).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from t2n_core.errors import ArchiveExistsError, ArchiveFormatError
from t2n_core.nnef.dat import HEADER_SIZE

logger = logging.getLogger(__name__)

Chunk = bytes | memoryview
#: (relative path, producer of the content as bytes or as a list of chunks written in order)
FileProducer = tuple[str, Callable[[], Chunk | list[Chunk]]]


def _chunks(content: Chunk | list[Chunk]) -> list[memoryview]:
    items = content if isinstance(content, list) else [content]
    return [memoryview(c).cast("B") for c in items]


class _ChunkReader(io.RawIOBase):
    """A file object reading a list of buffers in order, copying only what is read."""

    def __init__(self, chunks: list[memoryview]):
        self._chunks = chunks
        self._index = 0
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        written = 0
        while written < len(out) and self._index < len(self._chunks):
            chunk = self._chunks[self._index]
            n = min(len(out) - written, len(chunk) - self._offset)
            out[written : written + n] = chunk[self._offset : self._offset + n]
            written += n
            self._offset += n
            if self._offset == len(chunk):
                self._index += 1
                self._offset = 0
        return written


def is_tar_path(path: Path) -> bool:
    return path.name.endswith((".tgz", ".tar.gz", ".tar"))


def write_archive(
    path: str | os.PathLike,
    files: Iterable[FileProducer],
    *,
    overwrite: bool = False,
    compresslevel: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``files`` to ``path`` (directory, ``.tar``, ``.tgz`` or ``.tar.gz``) atomically."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ArchiveExistsError(f"{target} already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        if is_tar_path(target):
            staged = tmp / target.name
            _write_tar(staged, files, compresslevel, progress)
        else:
            staged = tmp / "archive"
            staged.mkdir()
            for name, produce in files:
                with open(staged / name, "wb") as f:
                    for chunk in _chunks(produce()):
                        f.write(chunk)
                if progress:
                    progress(name)
        _replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace(staged: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        target.rename(old)
        staged.rename(target)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        staged.rename(target)


def _write_tar(
    path: Path,
    files: Iterable[FileProducer],
    compresslevel: int,
    progress: Callable[[str], None] | None,
) -> None:
    with open(path, "wb") as raw:
        gz = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel)
            if path.name.endswith(("gz",))
            else None
        )
        with tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, produce in files:
                chunks = _chunks(produce())
                info = tarfile.TarInfo(name)
                info.size = sum(len(c) for c in chunks)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BufferedReader(_ChunkReader(chunks), 1 << 20))
                del chunks
                if progress:
                    progress(name)
        if gz is not None:
            gz.close()


def read_archive_files(
    path: str | os.PathLike, *, dat_headers_only: bool = False
) -> dict[str, bytes]:
    """All files of an archive (directory or tar), by relative path.

    With ``dat_headers_only``, ``.dat`` files are read up to the end of their 128-byte header
    only, so describing a large archive does not load its weights.
    """

    def size(name: str) -> int:
        return HEADER_SIZE if dat_headers_only and name.endswith(".dat") else -1

    src = Path(path)
    if src.is_dir():
        out = {}
        for p in sorted(src.rglob("*")):
            if p.is_file():
                name = str(p.relative_to(src))
                with open(p, "rb") as f:
                    out[name] = f.read(size(name))
        return out
    if not src.exists():
        raise ArchiveFormatError(f"{src} does not exist")
    try:
        with tarfile.open(src, "r:*") as tar:
            out = {}
            for member in tar.getmembers():
                if member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    name = member.name.removeprefix("./")
                    out[name] = f.read(size(name))
            return out
    except tarfile.TarError as exc:
        raise ArchiveFormatError(f"{src} is neither a directory nor a tar archive: {exc}") from exc

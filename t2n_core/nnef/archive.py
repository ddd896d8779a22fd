"""Write and read NNEF archives: a directory or a ``.tgz``/``.tar.gz`` file.

Writing is atomic and byte-reproducible (fixed order given by the caller, zero mtimes, no
owner names, POSIX pax tar so that names of any length fit). Everything is staged in a
temporary sibling folder named ``.<target name>.t2n-tmp-<pid>-<random>``, checked (the
caller's ``verify``), then moved in place with one rename: a ``.tgz`` path is never missing,
a directory is swapped in with ``renameat2(RENAME_EXCHANGE)`` where the OS has it. A folder
that does not look like an NNEF archive is never replaced, and temporary folders left by a
killed export are removed by the next export to the same target.

Readers trust nothing in an archive: members outside it, links that leave it and special
files (FIFOs, devices) are refused, and only ``graph.nnef`` (bounded) and the 128-byte
headers of ``.dat`` files are read to describe it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from t2n_core.errors import ArchiveExistsError, ArchiveFormatError, ArchiveTargetError
from t2n_core.nnef.dat import HEADER_SIZE
from t2n_core.nnef.tar_stream import TarStream

logger = logging.getLogger(__name__)

Chunk = bytes | memoryview


@dataclass(frozen=True)
class Stream:
    """Content of a known ``size`` given as ``chunks`` produced one after the other: each is
    written before the next is asked for, so the content is never whole in memory. The
    chunks must add up to ``size`` (the tar header is written first), else the export fails.
    """

    size: int
    chunks: Iterable[Chunk]


#: (relative path, producer of the content as bytes, as a list of chunks written in order, as
#: a :class:`Stream`, or as the Path of an existing file: hard-linked into a folder archive
#: where the file system allows it, else copied; t2n never writes a file in place, so linked
#: archives stay apart)
FileProducer = tuple[str, Callable[[], Chunk | list[Chunk] | Stream | Path]]

#: a file copied into a tar is read this many bytes at a time
_COPY_CHUNK = 1 << 22


def _chunks(content: Chunk | list[Chunk]) -> list[memoryview]:
    items = content if isinstance(content, list) else [content]
    return [memoryview(c).cast("B") for c in items]


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            yield chunk


def is_tar_path(path: Path) -> bool:
    return path.name.endswith((".tgz", ".tar.gz", ".tar"))


#: marks the temporary folders of an export: ``.<target name>.t2n-tmp-<pid>-<random>``
TMP_MARK = ".t2n-tmp-"
#: files an NNEF archive folder may hold (anything else there belongs to someone else)
_ARCHIVE_FILE = re.compile(r"graph\.nnef|graph\.quant|.*\.dat")
#: graph.nnef larger than this is refused (a 1B-parameter LLM's is a few MB)
MAX_GRAPH_BYTES = 256 << 20
#: a member that graph.nnef does not reference and that is larger than this is refused:
#: tract would read it whole
MAX_UNREFERENCED_BYTES = 16 << 20


def resolve_target(path: str | os.PathLike) -> Path:
    """The path an export writes: a symlink is followed, so the link keeps pointing at it."""
    target = Path(path)
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def check_target(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    foreign: Callable[[Path], str | None] | None = None,
) -> Path:
    """Refuse, before any work, a target that cannot or must not be written; return it.

    Raises :class:`ArchiveExistsError` when it exists and ``overwrite`` is False, and
    :class:`ArchiveTargetError` when its folder is not writable or when it exists but is not
    what this writer may replace: by default an NNEF archive of the same kind (not a folder
    holding other files, nor a file that is not a tar); a writer of another kind of output
    passes ``foreign``, which says why an existing target is not its own (None: it is).
    """
    target = resolve_target(path)
    if target.exists():
        if not overwrite:
            raise ArchiveExistsError(f"{path} already exists; pass overwrite=True to replace it")
        if foreign is None:
            _check_replaceable(target, shown=str(path))
        elif (reason := foreign(target)) is not None:
            raise ArchiveTargetError(reason)
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArchiveTargetError(
            f"cannot write {path}: folder {parent} is not writable; choose another path"
        )
    return target


def _check_replaceable(target: Path, shown: str) -> None:
    if is_tar_path(target):
        if not target.is_file():
            raise ArchiveTargetError(
                f"{shown} exists and is not a file; a {target.suffix} archive cannot replace "
                "it. Remove it or choose another path"
            )
        if target.stat().st_size and not tarfile.is_tarfile(target):
            raise ArchiveTargetError(
                f"{shown} exists and is not a tar archive: refusing to overwrite it"
            )
        return
    if not target.is_dir():
        raise ArchiveTargetError(
            f"{shown} exists and is not a folder; an NNEF folder archive cannot replace it. "
            "Remove it, or give a path ending in .tgz for a tar archive"
        )
    foreign = [
        str(p.relative_to(target))
        for p in sorted(target.rglob("*"))
        if p.is_symlink()
        or (p.is_file() and not _ARCHIVE_FILE.fullmatch(p.name))
        or not (p.is_file() or p.is_dir())
    ]
    entries = [p for p in target.iterdir()]
    if foreign or (entries and not (target / "graph.nnef").is_file()):
        what = f"it holds {foreign[:5]}" if foreign else "it has no graph.nnef"
        raise ArchiveTargetError(
            f"{shown} is a folder that is not an NNEF archive ({what}): refusing to overwrite "
            "it and lose those files. Remove them or choose another path"
        )


def member_path(name: str) -> str:
    """``name`` as a path relative to the archive root; refused when it would leave it."""
    norm = posixpath.normpath(name.replace("\\", "/")) if name else ""
    if (
        not norm or norm == "." or norm.startswith(("/", "../")) or norm == ".."
        or "\0" in norm or re.match(r"[A-Za-z]:", norm)
    ):  # fmt: skip
        raise ArchiveFormatError(f"archive member {name!r} lies outside the archive")
    return norm.removeprefix("./")


def write_archive(
    path: str | os.PathLike,
    files: Iterable[FileProducer],
    *,
    overwrite: bool = False,
    compresslevel: int = 0,
    progress: Callable[[str], None] | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``files`` to ``path`` (directory, ``.tar``, ``.tgz`` or ``.tar.gz``) atomically.

    ``verify`` is called on the complete staged archive before it replaces anything; if it
    raises, the target is left as it was.
    """
    target = check_target(path, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{target.name}{TMP_MARK}{os.getpid()}-", suffix="", dir=target.parent
        )
    )
    try:
        if is_tar_path(target):
            staged = tmp / target.name
            _write_tar(staged, files, compresslevel, progress)
        else:
            staged = tmp / "archive"
            staged.mkdir()
            root = staged.resolve()
            for name, produce in files:
                dest = staged / member_path(name)
                if root not in dest.resolve().parents:
                    raise ArchiveFormatError(f"file {name!r} would be written outside {target}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                content = produce()
                if isinstance(content, Path):
                    _link_or_copy(content, dest)
                else:
                    with open(dest, "xb") as f:
                        _write_content(f, name, content)
                if progress:
                    progress(name)
        if verify is not None:
            verify(staged)
        if target.exists():
            _check_replaceable(target, shown=str(path))  # it may have changed meanwhile
        replace_target(staged, target, tmp)
    except PermissionError as exc:
        raise ArchiveTargetError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, dest)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary folders of exports to ``target`` whose process is gone."""
    removed = []
    prefix = f".{target.name}{TMP_MARK}"
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("removed %s, left by an interrupted export", entry)
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another export of this process, in another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_target(staged: Path, target: Path, tmp: Path) -> None:
    """Move ``staged`` to ``target``; any old ``target`` ends up inside ``tmp``. A file is
    replaced by one atomic rename; a folder is swapped with the old one atomically where the
    OS can (Linux ``renameat2``), else renamed away just before the new one moves in."""
    if not staged.is_dir() or not target.exists():
        os.replace(staged, target)  # one atomic rename: the file path is never missing
        return
    if _exchange(staged, target):
        return  # the old archive is now at ``staged``, removed with ``tmp``
    os.rename(target, tmp / "old")
    os.rename(staged, target)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the OS cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _write_content(f: BinaryIO, name: str, content: Chunk | list[Chunk] | Stream) -> None:
    if not isinstance(content, Stream):
        for chunk in _chunks(content):
            f.write(chunk)
        return
    written = 0
    for chunk in content.chunks:
        written += f.write(chunk) or 0
    if written != content.size:
        raise ArchiveFormatError(f"{name}: {written} bytes produced, {content.size} announced")


def _write_tar(
    path: Path,
    files: Iterable[FileProducer],
    compresslevel: int,
    progress: Callable[[str], None] | None,
) -> None:
    gzip = compresslevel if path.name.endswith("gz") else None
    with open(path, "wb", buffering=0) as raw:
        tar = TarStream(raw, gzip)
        for name, produce in files:
            content = produce()
            info = tarfile.TarInfo(member_path(name))
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            chunks: Iterable[Chunk]
            if isinstance(content, Path):
                info.size, chunks = content.stat().st_size, _file_chunks(content)
            elif isinstance(content, Stream):
                info.size, chunks = content.size, content.chunks
            else:
                chunks = _chunks(content)
                info.size = sum(len(c) for c in chunks)
            tar.begin(info)
            for chunk in chunks:
                tar.write(chunk)
            tar.end()
            del content, chunks
            if progress:
                progress(name)
        tar.close()


def list_archive(path: str | os.PathLike) -> dict[str, int]:
    """The regular files of an archive (directory or tar) with their sizes, by relative path.

    Refuses (:class:`ArchiveFormatError`) members outside the archive, links that leave it
    and anything that is not a regular file or a folder (FIFO, device, socket).
    """
    src = Path(path)
    if src.is_dir():
        return _list_dir(src)
    if not src.exists():
        raise ArchiveFormatError(f"{src} does not exist")
    if not src.is_file():
        raise ArchiveFormatError(f"{src} is neither a folder nor a tar file")
    out: dict[str, int] = {}
    with _open_tar(src) as tar:
        for member in tar:
            _check_member(src, member)
            if member.isfile():
                out[member_path(member.name)] = member.size
    return out


def _list_dir(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                real = p.resolve()
                if real_root not in real.parents:
                    raise ArchiveFormatError(f"{root}: {rel} is a link that leaves the archive")
                mode = os.stat(p).st_mode
            if stat.S_ISREG(mode):
                out[rel] = os.stat(p).st_size
            elif not stat.S_ISDIR(mode):
                raise ArchiveFormatError(
                    f"{root}: {rel} is not a regular file ({_kind(mode)}); remove it"
                )
    return dict(sorted(out.items()))


_SPECIAL_KINDS = [
    (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
]  # fmt: skip


def _kind(mode: int) -> str:
    for test, name in _SPECIAL_KINDS:
        if test(mode):
            return name
    return "special file"


def _open_tar(src: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(src, "r|*")  # one streaming pass: nothing is kept in memory
    except tarfile.TarError as exc:
        raise ArchiveFormatError(f"{src} is neither a directory nor a tar archive: {exc}") from exc


def _check_member(src: Path, member: tarfile.TarInfo) -> None:
    member_path(member.name)
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ArchiveFormatError(
            f"{src}: member {member.name!r} is a {kind}; NNEF archives hold regular files only"
        )


def referenced_labels(graph_text: str) -> set[str]:
    """The ``.dat`` files (relative paths) that graph.nnef's variables name."""
    from t2n_core.nnef.text import unescape_string

    labels = re.findall(r"""label\s*=\s*(?:'((?:\\.|[^'\\])*)'|"((?:\\.|[^"\\])*)")""", graph_text)
    return {member_path(unescape_string(a or b)) + ".dat" for a, b in labels}


def read_archive_files(
    path: str | os.PathLike, *, dat_headers_only: bool = False
) -> dict[str, bytes]:
    """Files of an archive (directory or tar), by relative path, checked as by
    :func:`list_archive`.

    With ``dat_headers_only``, only graph.nnef and the 128-byte header of each ``.dat`` file
    are read (other files are left out), so describing a large archive reads little.
    graph.nnef over :data:`MAX_GRAPH_BYTES` is refused.
    """
    return scan_archive(path, dat_headers_only=dat_headers_only)[1]


def scan_archive(
    path: str | os.PathLike, *, dat_headers_only: bool = False
) -> tuple[dict[str, int], dict[str, bytes]]:
    """:func:`list_archive` and :func:`read_archive_files` in one pass (a tar is read once)."""
    src = Path(path)

    def limit(name: str, size: int) -> int | None:
        """How much of ``name`` to read: -1 all, None nothing."""
        if name == "graph.nnef" and size > MAX_GRAPH_BYTES:
            raise ArchiveFormatError(
                f"{src}: graph.nnef has {size} bytes, more than the {MAX_GRAPH_BYTES} bytes a "
                "graph may have"
            )
        if name == "graph.nnef" or not dat_headers_only:
            return -1
        return HEADER_SIZE if name.endswith(".dat") else None

    out: dict[str, bytes] = {}
    if src.is_dir():
        sizes = _list_dir(src)
        for name, size in sizes.items():
            n = limit(name, size)
            if n is not None:
                with open(src / name, "rb") as f:
                    out[name] = f.read(n)
        return sizes, out
    if not src.is_file():
        raise ArchiveFormatError(f"{src} does not exist or is neither a folder nor a tar file")
    sizes = {}
    with _open_tar(src) as tar:
        for member in tar:
            _check_member(src, member)
            if member.isfile():
                name = member_path(member.name)
                sizes[name] = member.size
                n = limit(name, member.size)
                f = tar.extractfile(member)
                if n is not None and f is not None:
                    out[name] = f.read(n)
    return sizes, out


def validate_for_tract(path: str | os.PathLike) -> None:
    """Refuse an archive tract must not be given: see :func:`list_archive`, plus unreferenced
    members over :data:`MAX_UNREFERENCED_BYTES` (tract would read them whole)."""
    sizes, files = scan_archive(path, dat_headers_only=True)
    if "graph.nnef" not in files:
        raise ArchiveFormatError(f"{os.fspath(path)} has no graph.nnef")
    wanted = referenced_labels(files["graph.nnef"].decode("utf-8", errors="replace"))
    wanted |= {"graph.nnef", "graph.quant"}
    big = [
        f"{name} ({size} bytes)"
        for name, size in sizes.items()
        if name not in wanted and size > MAX_UNREFERENCED_BYTES
    ]
    if big:
        raise ArchiveFormatError(
            f"{os.fspath(path)} holds {big[:5]}, which graph.nnef does not reference; tract "
            "would read them whole. Remove them from the archive"
        )

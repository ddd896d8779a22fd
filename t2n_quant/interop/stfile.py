"""The safetensors file format, read and written tensor by tensor, with every field checked.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``)
and the tensor bytes. :func:`read_header` checks all of it against the file before any
tensor is used; :func:`tensor_at` maps one tensor's bytes (``np.memmap``), so reading a
checkpoint costs the memory of one tensor at a time, and the mapping is dropped with it.
:func:`write_safetensors` streams tensors produced one at a time into a temporary file, then
renames it over the target, so a good existing file is never lost or half-written.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2n_core.errors import T2NError

#: safetensors dtype names -> torch dtypes
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFileError(T2NError, ValueError):
    """A safetensors file is unreadable, inconsistent, truncated, corrupted or not ours."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offsets of its bytes
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> Header:
    """The checked header of the safetensors file ``path``.

    Raises :class:`SafetensorsFileError` naming the file (and the tensor) when the header is
    unreadable or a tensor's dtype, shape or byte range does not fit the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsFileError(f"{path}: {size} bytes, too short for safetensors")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise SafetensorsFileError(
                    f"{path}: header length {n} does not fit the file ({size} bytes): not a "
                    "safetensors file, or truncated"
                )
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsFileError(f"{path}: cannot read ({e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsFileError(f"{path}: the header is not valid JSON ({e}): corrupted?") from e
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsFileError(f"{path}: __metadata__ must map strings to strings")
    data_start, data_size = 8 + n, size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"tensor {name!r} in {path}"
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsFileError(f"{where}: bad header entry {entry!r} ({e})") from e
        itemsize = torch.empty((), dtype=dtype).element_size()
        if any(d < 0 for d in shape) or end - begin != math.prod(shape) * itemsize:
            raise SafetensorsFileError(
                f"{where}: shape {list(shape)} of {entry['dtype']} needs "
                f"{math.prod(shape) * itemsize} bytes, the header gives {end - begin}"
            )
        if not 0 <= begin <= end <= data_size:
            raise SafetensorsFileError(
                f"{where}: bytes {begin}..{end} lie beyond the file's {data_size} data bytes: "
                "the file is truncated"
            )
        tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
    return Header(path, tensors, metadata)


def tensor_at(path: Path, info: TensorInfo) -> torch.Tensor:
    """``info``'s tensor as a read-only view of the mapped file (no copy)."""
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=info.begin, shape=(info.nbytes,))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only numpy memory: we never write
        raw = torch.from_numpy(mm)
    return raw.view(info.dtype).reshape(info.shape)


def crc32(data: Any) -> str:
    """The CRC-32 of ``data`` (bytes-like) as 8 hex digits."""
    return f"{zlib.crc32(memoryview(data).cast('B')) & 0xFFFFFFFF:08x}"


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's little-endian bytes, without a copy where it is contiguous."""
    t = t.detach().contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


@dataclass(frozen=True)
class Planned:
    """A tensor to write: its name, dtype, shape and a function producing its bytes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], Any]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


CRC_KEY = "t2n.crc32"


def write_safetensors(
    path: str | os.PathLike,
    planned: Iterable[Planned],
    metadata: Mapping[str, str],
    *,
    on_written: Callable[[Planned], None] | None = None,
    keep_temporary: bool = False,
) -> Path:
    """Write ``planned`` tensors, produced one at a time, to ``path``; returns the path.

    The file is written under a temporary name beside ``path`` and renamed over it once
    complete; with ``keep_temporary`` the temporary file is returned instead, for a caller
    that renames several files together (on error it is removed either way).

    The CRC-32 of every tensor goes into the metadata under ``"t2n.crc32"``: the header is
    written first with zeros in its place and rewritten, at the same length, at the end.
    """
    path = Path(path)
    planned = list(planned)
    offsets: dict[str, Any] = {}
    pos = 0
    for p in planned:
        offsets[p.name] = {
            "dtype": NAMES[p.dtype], "shape": list(p.shape), "data_offsets": [pos, pos + p.nbytes]
        }  # fmt: skip
        pos += p.nbytes

    def header(crcs: Mapping[str, str]) -> bytes:
        meta = {**metadata, CRC_KEY: json.dumps(crcs, sort_keys=True, separators=(",", ":"))}
        text = json.dumps({"__metadata__": meta, **offsets}, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)

    crcs = {p.name: "0" * 8 for p in planned}
    first = header(crcs)
    tmp = path.with_name(f".{path.name}.t2n-tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(first)) + first)
            for p in planned:
                data = memoryview(p.produce()).cast("B")
                if len(data) != p.nbytes:
                    raise SafetensorsFileError(
                        f"tensor {p.name!r}: produced {len(data)} bytes, planned {p.nbytes}"
                    )
                f.write(data)
                crcs[p.name] = crc32(data)
                del data
                if on_written is not None:
                    on_written(p)
            final = header(crcs)
            assert len(final) == len(first)
            f.seek(8)
            f.write(final)
            f.flush()
            os.fsync(f.fileno())
        if keep_temporary:
            return tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_crc(header: Header, info: TensorInfo, data: torch.Tensor) -> None:
    """Raise :class:`SafetensorsFileError` if ``data`` differs from the recorded CRC-32."""
    crcs = header.metadata.get(CRC_KEY)
    if crcs is None:
        return
    want = json.loads(crcs).get(info.name)
    if want is None:
        raise SafetensorsFileError(f"tensor {info.name!r} in {header.path}: no recorded CRC-32")
    got = crc32(tensor_bytes(data))
    if got != want:
        raise SafetensorsFileError(
            f"tensor {info.name!r} in {header.path}: CRC-32 {got} differs from the recorded "
            f"{want}: the file is corrupted (bytes changed since it was written)"
        )

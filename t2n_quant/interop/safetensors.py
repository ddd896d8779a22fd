"""Quantized models in safetensors files: quantize once, export many times.

- :func:`save_quantized` writes a model whose weights are QTensors (and its float tensors)
  to one safetensors file, or to shards past ``max_shard_size`` bytes plus an index;
- :func:`load_quantized` puts them back into a model (one built on the meta device too),
  bit-exactly: the same codes and scales, so an export writes byte-equal ``.dat`` files;
- :func:`iter_quantized` yields ``(name, tensor or QTensor)`` one tensor at a time, for
  loaders that stream (the LLM export);
- :func:`quantize_safetensors` quantizes a float checkpoint tensor by tensor from the mapped
  files, without building the model, so memory does not grow with the checkpoint.

Layout: a QTensor ``W`` is stored as ``W::packed`` (u8), ``W::scale`` and, with a zero point,
``W::zero``; every other tensor under its own name. The header metadata says
``"format": "t2n-quantized"`` and, under ``"t2n.tensors"`` (JSON), for every logical tensor:
its codec spec (``null`` for float), shape, dtype, the calibration that produced it and the
names it is tied to; ``"t2n.crc32"`` holds a CRC-32 per stored tensor. Every field is
checked before use, and a file not written by us, an unknown codec, shapes that disagree
with the codec's layout, a truncated or corrupted file raise
:class:`~t2n_quant.interop.stfile.SafetensorsFileError` naming the tensor and the file.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2n_core.errors import T2NError
from t2n_core.progress import progress_bar
from t2n_quant.calibration import Calibration, get_calibration
from t2n_quant.codecs.base import Codec
from t2n_quant.config import QuantConfig, resolve
from t2n_quant.interop.stfile import (
    Header,
    Planned,
    SafetensorsFileError,
    TensorInfo,
    check_crc,
    crc32,
    read_header,
    tensor_at,
    tensor_bytes,
    write_safetensors,
)
from t2n_quant.qtensor import QTensor
from t2n_quant.quantize import quantize_tensor
from t2n_quant.summary import QuantizationSummary, QuantizedWeight, SkippedWeight

logger = logging.getLogger(__name__)

FORMAT = "t2n-quantized"
VERSION = "1"
PARTS = ("packed", "scale", "zero")
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
)}  # fmt: skip


class QuantizedFileError(SafetensorsFileError):
    """A quantized safetensors file that does not match the model, or is not ours."""


# ---- planning what to write -----------------------------------------------------------------


@dataclass
class _Logical:
    """One logical tensor of the file: a QTensor or a plain tensor, and its stored parts."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    codec: Codec | None
    calibration: str | None
    aliases: list[str]
    parts: dict[str, tuple[torch.dtype, tuple[int, ...]]]

    def record(self) -> dict[str, Any]:
        return {
            "codec": None if self.codec is None else self.codec.spec,
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "calibration": self.calibration,
            "aliases": self.aliases,
            "parts": {part: key for part, key in self.keys().items()},
        }

    def keys(self) -> dict[str, str]:
        if self.codec is None:
            return {"data": self.name}
        return {part: f"{self.name}::{part}" for part in self.parts}


def _qtensor_parts(codec: Codec, shape: tuple[int, ...]) -> dict[str, tuple[torch.dtype, tuple]]:
    """The stored parts of a QTensor of ``shape`` under ``codec`` (what its layout needs)."""
    rows, k = shape[0], math.prod(shape[1:])
    bs = codec.block_size(k)
    n_blocks = rows * (k // bs)
    parts = {
        "packed": (torch.uint8, (n_blocks, codec.bytes_per_block(bs))),
        "scale": (codec.storage_dtype, (n_blocks, 1)),
    }
    if codec.has_zero:
        parts["zero"] = (codec.storage_dtype, (n_blocks, 1))
    return parts


def _shards(items: list[tuple[_Logical, list[Planned]]], max_bytes: int | None) -> list[list]:
    shards: list[list] = [[]]
    size = 0
    for item in items:
        nbytes = sum(p.nbytes for p in item[1])
        if max_bytes is not None and shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def _shard_paths(path: Path, n: int) -> list[Path]:
    if n == 1:
        return [path]
    stem = path.name.removesuffix(".safetensors")
    return [path.with_name(f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors") for i in range(n)]


def index_path(path: str | os.PathLike) -> Path:
    """Where the shard index of ``path`` lives (``model.safetensors.index.json``)."""
    return Path(f"{path}.index.json")


def _write(
    path: Path,
    items: list[tuple[_Logical, list[Planned]]],
    properties: Mapping[str, str],
    max_shard_size: int | None,
    progress: bool,
    desc: str,
) -> list[Path]:
    """Write ``items`` to ``path`` (or shards + index); returns the files written."""
    shards = _shards(items, max_shard_size)
    paths = _shard_paths(path, len(shards))
    total = sum(p.nbytes for _, planned in items for p in planned)
    bar = progress_bar(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress)
    written: list[Path] = []
    temporaries: list[tuple[Path, Path]] = []  # renamed together once every file is complete
    weight_map: dict[str, str] = {}
    idx = index_path(path)
    try:
        for shard, shard_path in zip(shards, paths):
            meta = {
                "format": FORMAT, "t2n.version": VERSION,
                "t2n.tensors": json.dumps({lg.name: lg.record() for lg, _ in shard}),
                "t2n.properties": json.dumps(dict(properties)),
            }  # fmt: skip
            meta["t2n.meta_crc32"] = _meta_crc(meta)
            planned = [p for _, ps in shard for p in ps]
            tmp = write_safetensors(
                shard_path, planned, meta, on_written=lambda p: bar.update(p.nbytes),
                keep_temporary=True,
            )  # fmt: skip
            temporaries.append((tmp, shard_path))
            weight_map.update({lg.name: shard_path.name for lg, _ in shard})
        if len(paths) > 1:
            text = json.dumps({"metadata": {"format": FORMAT, "total_size": total},
                               "weight_map": weight_map}, indent=1)  # fmt: skip
            tmp = idx.with_name(f".{idx.name}.t2n-tmp-{os.getpid()}")
            tmp.write_text(text)
            temporaries.append((tmp, idx))
    except BaseException:
        for tmp, _ in temporaries:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    for tmp, final in temporaries:  # shards first, the index that names them last
        os.replace(tmp, final)
        written.append(final)
    if len(paths) == 1 and idx.exists():
        idx.unlink()  # a stale index of an earlier sharded save would shadow the new file
    return written


# ---- save ---------------------------------------------------------------------------------


def _calibration_of(model: nn.Module) -> str | None:
    props = getattr(model, "t2n_properties", None) or {}
    cal = props.get("quantization.calibration")
    if cal is None:
        return None
    extra = [f"{k}={props[f'quantization.{k}']}" for k in ("calibration_options",
             "calibration_data_sha256") if f"quantization.{k}" in props]  # fmt: skip
    return cal + (f" ({'; '.join(extra)})" if extra else "")


def save_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    max_shard_size: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``model``'s state (QTensors packed as they are) to the safetensors file ``path``.

    ``max_shard_size`` (bytes): past it, shards ``<stem>-00001-of-0000N.safetensors`` and an
    index ``<path>.index.json`` are written instead (a QTensor's parts stay in one shard).
    Tied tensors are stored once. Returns the files written; each replaces its target only
    once complete.

    >>> from t2n_quant import quantize_model
    >>> m = nn.Sequential(nn.Linear(64, 32)); _ = quantize_model(m, "q4_0", progress=False)
    >>> import tempfile; d = tempfile.mkdtemp()
    >>> [p.name for p in save_quantized(m, f"{d}/m.safetensors", progress=False)]
    ['m.safetensors']
    """
    path = Path(path)
    calibration = _calibration_of(model)
    seen: dict[int, _Logical] = {}
    items: list[tuple[_Logical, list[Planned]]] = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            seen[id(t)].aliases.append(name)
            continue
        if t.device.type == "meta":
            raise QuantizedFileError(f"tensor {name!r} is on the meta device: nothing to save")
        if isinstance(t, QTensor):
            parts = {"packed": t.packed, "scale": t.scale}
            if t.zero is not None:
                parts["zero"] = t.zero
            lg = _Logical(name, tuple(t.shape), t.dtype, t.codec, calibration, [],
                          {k: (v.dtype, tuple(v.shape)) for k, v in parts.items()})  # fmt: skip
            keys = lg.keys()
            planned = [Planned(keys[k], v.dtype, tuple(v.shape), _producer(v))
                       for k, v in parts.items()]  # fmt: skip
        else:
            data = t.detach()
            lg = _Logical(name, tuple(data.shape), data.dtype, None, None, [], {})
            planned = [Planned(name, data.dtype, tuple(data.shape), _producer(data))]
        seen[id(t)] = lg
        items.append((lg, planned))
    props = getattr(model, "t2n_properties", None) or {}
    return _write(path, items, props, max_shard_size, progress, "saving")


def _producer(t: torch.Tensor) -> Any:
    return lambda: tensor_bytes(t.cpu())


# ---- read ---------------------------------------------------------------------------------


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of ``path``: the file itself, the shards its index names (given
    the index or the unsharded name), or every ``*.safetensors`` of a directory."""
    path = Path(path)
    idx = path if path.name.endswith(".index.json") else index_path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            idx = indexes[0]
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise SafetensorsFileError(f"{path}: no .safetensors file in this directory")
            return files
    if idx.exists() and (path == idx or path.is_dir() or not path.exists()):
        try:
            weight_map = json.loads(idx.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SafetensorsFileError(f"{idx}: not a safetensors index ({e})") from e
        files = [idx.parent / n for n in names]
        for f in files:
            if not f.exists():
                raise SafetensorsFileError(f"{idx}: shard {f.name} is missing")
        return files
    if not path.exists():
        raise SafetensorsFileError(f"{path}: no such file")
    return [path]


def _meta_crc(meta: Mapping[str, str]) -> str:
    return crc32(json.dumps([meta.get(k) for k in ("t2n.tensors", "t2n.properties")]).encode())


def _records(header: Header) -> dict[str, dict[str, Any]]:
    meta = header.metadata
    if meta.get("format") != FORMAT or "t2n.tensors" not in meta:
        raise QuantizedFileError(
            f"{header.path} was not written by t2n's save_quantized / quantize_safetensors "
            f"(metadata format {meta.get('format')!r}); quantize the float checkpoint with "
            "quantize_safetensors, or load it with safetensors"
        )
    if meta.get("t2n.version") != VERSION:
        raise QuantizedFileError(
            f"{header.path}: format version {meta.get('t2n.version')!r}, this t2n reads {VERSION}"
        )
    if meta.get("t2n.meta_crc32") != _meta_crc(meta):
        raise QuantizedFileError(
            f"{header.path}: the CRC-32 of its t2n metadata (codecs, shapes, calibrations) "
            "differs from the recorded one: the header is corrupted"
        )
    try:
        records = json.loads(meta["t2n.tensors"])
        if not isinstance(records, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise QuantizedFileError(f"{header.path}: bad t2n.tensors metadata ({e})") from e
    return records


def _read_part(header: Header, key: str, where: str) -> torch.Tensor:
    info: TensorInfo | None = header.tensors.get(key)
    if info is None:
        raise QuantizedFileError(f"{where}: stored tensor {key!r} is missing from the file")
    data = tensor_at(header.path, info).clone()  # our own memory; the mapping is dropped
    check_crc(header, info, data)
    return data


def _logical(header: Header, name: str, rec: Any) -> torch.Tensor:
    """The tensor (or QTensor) ``name`` described by ``rec``, fully checked."""
    where = f"tensor {name!r} in {header.path}"
    try:
        spec, shape = rec["codec"], tuple(int(d) for d in rec["shape"])
        dtype, parts = _DTYPE_NAMES[rec["dtype"]], dict(rec["parts"])
    except (KeyError, TypeError, ValueError) as e:
        raise QuantizedFileError(
            f"{where}: bad record {rec!r} (missing or unknown field {e})"
        ) from e
    if spec is None:
        data = _read_part(header, parts.get("data", name), where)
        if tuple(data.shape) != shape or data.dtype != dtype:
            raise QuantizedFileError(
                f"{where}: stored as {data.dtype} {list(data.shape)}, recorded as {dtype} "
                f"{list(shape)}"
            )
        return data
    try:
        codec = Codec.from_spec(str(spec))
    except T2NError as e:
        raise QuantizedFileError(f"{where}: codec {spec!r}: {e}") from e
    reason = codec.incompatibility(shape)
    if reason is not None:
        raise QuantizedFileError(f"{where}: {codec.spec} cannot hold shape {list(shape)}: {reason}")
    want = _qtensor_parts(codec, shape)
    if set(parts) != set(want):
        raise QuantizedFileError(
            f"{where}: {codec.spec} stores parts {sorted(want)}, the file records {sorted(parts)}"
        )
    got: dict[str, torch.Tensor] = {}
    for part, (pdtype, pshape) in want.items():
        t = _read_part(header, parts[part], where)
        if t.dtype != pdtype or tuple(t.shape) != pshape:
            raise QuantizedFileError(
                f"{where}: {part} is {t.dtype} {list(t.shape)}; {codec.spec} of shape "
                f"{list(shape)} needs {pdtype} {list(pshape)}"
            )
        got[part] = t
    try:
        return QTensor(codec, got["packed"], got["scale"], got.get("zero"), shape, dtype, name)
    except (T2NError, ValueError) as e:
        raise QuantizedFileError(f"{where}: {e}") from e


def iter_quantized(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor, list[str]]]:
    """``(name, tensor or QTensor, tied names)`` for every logical tensor of a file written
    by :func:`save_quantized` or :func:`quantize_safetensors` (sharded or not), one at a time,
    each checked (codec, layout, CRC) before it is yielded."""
    for file in shard_files(path):
        header = read_header(file)
        for name, rec in _records(header).items():
            aliases = rec.get("aliases", []) if isinstance(rec, dict) else []
            yield name, _logical(header, name, rec), list(aliases)


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """The model properties (``model.t2n_properties``) recorded in the file."""
    header = read_header(shard_files(path)[0])
    _records(header)
    try:
        return dict(json.loads(header.metadata.get("t2n.properties", "{}")))
    except ValueError as e:
        raise QuantizedFileError(f"{header.path}: bad t2n.properties metadata ({e})") from e


def load_quantized(path: str | os.PathLike, model: nn.Module, *, strict: bool = True) -> list[str]:
    """Put the tensors of ``path`` into ``model`` (QTensors as they were saved); returns the
    names loaded.

    Every tensor is read and checked, and its name and shape matched against ``model``,
    before anything in ``model`` changes; ``model`` may live on the meta device (parameters
    are replaced, not copied into). ``strict``: the file and the model must hold the same
    names. Tied names in the file, and names the model ties to a loaded one (an LM head tied to
    the embedding, absent from the checkpoint), get one shared tensor.
    """
    state = model.state_dict(keep_vars=True)
    tied: dict[int, list[str]] = {}  # names the model itself ties (one tensor, several names)
    for key, t in state.items():
        tied.setdefault(id(t), []).append(key)
    loaded: dict[str, torch.Tensor] = {}
    files = shard_files(path)
    for name, t, aliases in iter_quantized(path):
        keys = [name, *aliases]
        keys += [k for key in keys if key in state for k in tied[id(state[key])] if k not in keys]
        for key in keys:
            if key not in state:
                if strict:
                    raise QuantizedFileError(
                        f"tensor {key!r} of {files[0] if len(files) == 1 else path} has no "
                        f"place in {type(model).__name__} (strict=True)"
                    )
                continue
            if tuple(state[key].shape) != tuple(t.shape):
                raise QuantizedFileError(
                    f"tensor {key!r} in {path}: shape {list(t.shape)}, the model's is "
                    f"{list(state[key].shape)}"
                )
            loaded[key] = t
    missing = [k for k in state if k not in loaded]
    if strict and missing:
        raise QuantizedFileError(
            f"{path} lacks {len(missing)} tensor(s) of the model: {missing[:8]}"
        )
    params: dict[int, nn.Parameter] = {}
    for key, t in loaded.items():
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name)
        if attr in module._parameters:
            if id(t) not in params:
                old = module._parameters[attr]
                grad = old is not None and old.requires_grad and not isinstance(t, QTensor)
                params[id(t)] = nn.Parameter(t, requires_grad=grad and t.is_floating_point())
            module._parameters[attr] = params[id(t)]
        else:
            module._buffers[attr] = t
    props = read_properties(path)
    if props:
        model.t2n_properties = {**(getattr(model, "t2n_properties", None) or {}), **props}
    logger.info("loaded %d tensor(s) from %s", len(loaded), path)
    return list(loaded)


def apply_quantized(path: str | os.PathLike, model: nn.Module) -> QuantizationSummary:
    """Replace ``model``'s weights by the QTensors of ``path``, leaving every other tensor as
    it is (a streamed model keeps reading those from its own checkpoint).

    Each QTensor takes the dtype of the weight it replaces (its codes and scales unchanged).
    Every QTensor of the file must name a weight of ``model`` of the same shape; all are
    read and checked before the first is put in. Returns a summary like ``quantize_model``'s.
    """
    params: dict[str, tuple[nn.Module, str]] = {}
    users: dict[int, list[tuple[nn.Module, str]]] = {}  # every slot holding one tensor (ties)
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is not None:
                params[f"{mod_name}.{attr}" if mod_name else attr] = (module, attr)
                users.setdefault(id(p), []).append((module, attr))
    props = read_properties(path)
    summary = QuantizationSummary(
        props.get("quantization.codec", "?"), props.get("quantization.calibration", "?")
    )
    todo: list[tuple[QTensor, list[str]]] = []
    for name, t, aliases in iter_quantized(path):
        if not isinstance(t, QTensor):
            continue
        names = [n for n in (name, *aliases) if n in params]
        if not names:
            raise QuantizedFileError(
                f"quantized tensor {name!r} of {path} is not a weight of {type(model).__name__}"
            )
        module, attr = params[names[0]]
        old = module._parameters[attr]
        if tuple(old.shape) != tuple(t.shape):
            raise QuantizedFileError(
                f"tensor {name!r} in {path}: shape {list(t.shape)}, the model's is "
                f"{list(old.shape)}"
            )
        if t.dtype != old.dtype:
            t = t.with_inner(lambda x: x, dtype=old.dtype)
        todo.append((t, names))
    for t, names in todo:
        new = nn.Parameter(t, requires_grad=False)
        slots = {(id(m), a): (m, a) for n in names for m, a in
                 users[id(params[n][0]._parameters[params[n][1]])]}  # fmt: skip
        for mod, a in slots.values():
            mod._parameters[a] = new
        summary.quantized.append(QuantizedWeight(
            names[0], tuple(names), "weight", tuple(t.shape), t.codec.spec, t.bits_per_weight,
            t.numel() * t.element_size(), t.nbytes,
        ))  # fmt: skip
    logger.info("%s (from %s)", summary.headline(), path)
    return summary


# ---- quantize a float checkpoint ------------------------------------------------------------


def _source_tensors(src: str | os.PathLike) -> Iterator[tuple[Header, TensorInfo]]:
    for file in shard_files(src):
        header = read_header(file)
        for info in header.tensors.values():
            yield header, info


def _pick(name: str, info: TensorInfo, codec: Codec, include: list[str] | None,
          exclude: list[str], min_numel: int) -> str | None:  # fmt: skip
    """Why ``name`` stays as it is, or ``None`` to quantize it."""
    if include is not None and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return f"not matched by include={include}"
    for g in exclude:
        if fnmatch.fnmatchcase(name, g):
            return f"matched exclude pattern {g!r}"
    if not info.dtype.is_floating_point:
        return f"dtype {info.dtype} is not floating point"
    if len(info.shape) < 2:
        return f"rank {len(info.shape)} (norms, biases and scalars stay as they are)"
    if math.prod(info.shape) < min_numel:
        return f"{math.prod(info.shape)} values < min_numel={min_numel}"
    return codec.incompatibility(info.shape)


def quantize_safetensors(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    codec: str | QuantConfig | Codec,
    *,
    calibration: str | Calibration = "minmax",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    min_numel: int = 0,
    max_shard_size: int | None = None,
    progress: bool = True,
) -> QuantizationSummary:
    """Quantize the float checkpoint ``src`` (a safetensors file, its index, or a directory
    of shards) into ``dst`` in our quantized format, tensor by tensor, without the model.

    Every floating tensor of rank >= 2 the codec can take is quantized (weights of linear,
    embedding and conv layers; ``include`` / ``exclude`` are ``fnmatch`` globs on tensor
    names, e.g. ``exclude="lm_head.*"``); the others are copied as they are, and listed with
    their reason in the returned summary. Each tensor is read from its mapped file, quantized
    and written before the next is read, so memory stays at about one tensor.
    ``load_quantized(dst, model)`` then fills a model without quantizing again.
    """
    target = resolve(codec)
    get_calibration(calibration)  # an unknown name fails before anything is read or written
    src_files = shard_files(src)
    inc = None if include is None else [include] if isinstance(include, str) else list(include)
    exc = [] if exclude is None else [exclude] if isinstance(exclude, str) else list(exclude)
    cal_name = (
        calibration if isinstance(calibration, str) else getattr(calibration, "__name__", "custom")
    )
    summary = QuantizationSummary(target.spec, cal_name)
    items: list[tuple[_Logical, list[Planned]]] = []
    for header, info in _source_tensors(src):
        name = info.name
        reason = _pick(name, info, target, inc, exc, min_numel)
        if reason is not None:
            lg = _Logical(name, info.shape, info.dtype, None, None, [], {})
            planned = [Planned(name, info.dtype, info.shape, _copier(header, info))]
            summary.skipped.append(SkippedWeight(name, "tensor", info.shape, reason, info.nbytes))
        else:
            parts = _qtensor_parts(target, info.shape)
            lg = _Logical(name, info.shape, info.dtype, target, cal_name, [], parts)
            planned = _quantizer(header, info, target, calibration, lg, summary)
        items.append((lg, planned))
    if not summary.quantized and not any(lg.codec for lg, _ in items):
        logger.warning("no tensor of %s can be quantized with %s", src, target.spec)
    props = {"quantization.codec": target.spec, "quantization.calibration": cal_name}
    _write(Path(dst), items, props, max_shard_size, progress, f"quantizing ({target.spec})")
    logger.info("%s (from %d file(s))", summary.headline(), len(src_files))
    return summary


def _copier(header: Header, info: TensorInfo) -> Any:
    return lambda: tensor_bytes(tensor_at(header.path, info))


def _quantizer(
    header: Header,
    info: TensorInfo,
    codec: Codec,
    calibration: str | Calibration,
    lg: _Logical,
    summary: QuantizationSummary,
) -> list[Planned]:
    """Planned parts of ``info`` quantized; the first part's producer quantizes the tensor,
    the others hand out its remaining parts."""
    held: dict[str, torch.Tensor] = {}

    def part(key: str) -> Any:
        def produce() -> Any:
            if not held:
                qt = quantize_tensor(tensor_at(header.path, info), codec,
                                     calibration=calibration, name=info.name)  # fmt: skip
                held.update(packed=qt.packed, scale=qt.scale)
                if qt.zero is not None:
                    held["zero"] = qt.zero
                summary.quantized.append(QuantizedWeight(
                    info.name, (info.name,), "tensor", info.shape, codec.spec,
                    qt.bits_per_weight, info.nbytes, qt.nbytes,
                ))  # fmt: skip
            return tensor_bytes(held.pop(key))

        return produce

    keys = lg.keys()
    return [Planned(keys[k], dt, shape, part(k)) for k, (dt, shape) in lg.parts.items()]

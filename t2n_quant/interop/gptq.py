"""GPTQ and AWQ checkpoints in: int32-packed codes, f16 group scales, packed zero points.

Both formats store, per linear layer ``P`` (``W`` of shape ``[out, in]``, groups of ``g``
input values, ``bits`` per code, ``pack = 32 // bits`` codes per int32):

- GPTQ (AutoGPTQ / GPTQModel, ``checkpoint_format`` ``"gptq"``): ``P.qweight`` int32
  ``[in / pack, out]``, code of input ``i`` in word ``i // pack`` at bits
  ``(i % pack) * bits``; ``P.qzeros`` int32 ``[in / g, out / pack]`` packed the same way
  along ``out``; ``P.scales`` f16 ``[in / g, out]``; ``P.g_idx`` int32 ``[in]`` (the group of
  each input, ``i // g`` unless activations were reordered, ``desc_act``).
  ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - (z[g_idx[i], o] + 1))``: the "v1" format
  stores zero points minus one; ``"gptq_v2"`` stores them as they are.
- AWQ (AutoAWQ GEMM, ``version="gemm"``): ``P.qweight`` int32 ``[in, out / 8]`` and
  ``P.qzeros`` int32 ``[in / g, out / 8]``, each word holding the codes of outputs
  ``8j + [0, 2, 4, 6, 1, 3, 5, 7]`` at bits ``0, 4, ..., 28``; ``P.scales`` f16
  ``[in / g, out]``; ``W[o, i] = (q[i, o] - z[i // g, o]) * scales[i // g, o]``.

Where groups are contiguous runs of inputs (no activation reordering) and ``g`` is a group
size of ours, the codes, f16 scales and zero points move unchanged into a ``minmax`` QTensor
(``value = (code - zero) * scale``, exact in f32; the same as the formats' f16 arithmetic
after rounding to f16). Otherwise the layer is dequantized exactly and quantized again with
``minmax`` (or the codec asked for), and the added error is reported per layer.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from t2n_core.errors import T2NError
from t2n_quant.codecs.base import Codec
from t2n_quant.codecs.grouped import GROUP_SIZES
from t2n_quant.codecs.minmax import MinMaxCodec
from t2n_quant.compare import sqnr
from t2n_quant.config import resolve
from t2n_quant.interop.safetensors import (
    _Logical,
    _qtensor_parts,
    _write,
    shard_files,
)
from t2n_quant.interop.stfile import (
    Header,
    Planned,
    TensorInfo,
    read_header,
    tensor_at,
    tensor_bytes,
)
from t2n_quant.qtensor import QTensor
from t2n_quant.quantize import quantize_tensor

logger = logging.getLogger(__name__)

#: AutoAWQ's order of the 8 output columns inside one int32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
METHODS = ("gptq", "awq")


class GPTQFormatError(T2NError, ValueError):
    """A GPTQ / AWQ layer whose tensors do not fit the format, or an option we do not read."""


@dataclass(frozen=True)
class PackedLayout:
    """How a checkpoint packs its layers (from its ``quantization_config``)."""

    method: str  # "gptq" or "awq"
    bits: int = 4
    group_size: int = 128  # -1: one group per output row
    zero_offset: int = 1  # GPTQ "v1" stores zero - 1; gptq_v2 and AWQ store the zero itself

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "config") -> PackedLayout:
        """The layout a Hugging Face ``quantization_config`` (or ``quantize_config.json``)
        describes."""
        method = str(config.get("quant_method", "gptq")).lower()
        if method not in METHODS:
            raise GPTQFormatError(f"{where}: quant_method {method!r} is not one of {METHODS}")
        bits = int(config.get("bits", config.get("w_bit", 4)))
        group = int(config.get("group_size", config.get("q_group_size", 128)))
        if method == "awq":
            version = str(config.get("version", "gemm")).lower()
            if version != "gemm" or not config.get("zero_point", True):
                raise GPTQFormatError(
                    f"{where}: AWQ version {version!r} / zero_point="
                    f"{config.get('zero_point', True)} is not supported (only GEMM with zeros)"
                )
            return cls("awq", bits, group, 0)
        fmt = str(config.get("checkpoint_format", "gptq")).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise GPTQFormatError(f"{where}: checkpoint_format {fmt!r} is not gptq or gptq_v2")
        return cls("gptq", bits, group, 1 if fmt == "gptq" else 0)

    def __post_init__(self) -> None:
        if self.bits not in (2, 4, 8) or (self.method == "awq" and self.bits != 4):
            raise GPTQFormatError(
                f"{self.method} with {self.bits} bits is not supported (GPTQ: 2, 4, 8; AWQ: 4)"
            )


def _unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 ``[n, m]`` -> codes ``[n * pack, m]``: word ``r`` holds rows ``r*pack ..``."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32).view(1, -1, 1)
    codes = (words.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1, words.shape[1])


def _unpack_cols(words: torch.Tensor, bits: int, order: tuple[int, ...] | None) -> torch.Tensor:
    """int32 ``[n, m]`` -> codes ``[n, m * pack]``: word ``c`` holds columns ``c*pack ..``
    (in ``order`` for AWQ)."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int32).view(1, 1, -1)
    codes = (words.to(torch.int32).unsqueeze(2) >> shifts) & ((1 << bits) - 1)
    if order is not None:
        codes = codes[..., [order.index(c) for c in range(len(order))]]
    return codes.reshape(words.shape[0], -1)


def unpack_layer(
    layout: PackedLayout,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes [in, out], zeros [groups, out], scales [groups, out])`` of one layer, with
    the zero offset of GPTQ "v1" applied; shapes checked."""
    pack = 32 // layout.bits
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise GPTQFormatError(f"{name}: qweight / qzeros must be int32, got {qweight.dtype}")
    groups, out = scales.shape
    if layout.method == "gptq":
        codes = _unpack_rows(qweight, layout.bits)
        zeros = _unpack_cols(qzeros, layout.bits, None)
    else:
        codes = _unpack_cols(qweight, layout.bits, AWQ_ORDER)
        zeros = _unpack_cols(qzeros, layout.bits, AWQ_ORDER)
    if codes.shape[1] != out or zeros.shape != (groups, out):
        raise GPTQFormatError(
            f"{name}: qweight {list(qweight.shape)}, qzeros {list(qzeros.shape)} and scales "
            f"{list(scales.shape)} do not describe one {layout.method} layer of {pack} codes "
            "per int32"
        )
    return codes, zeros + layout.zero_offset, scales


@dataclass(frozen=True)
class ImportedLayer:
    """One GPTQ / AWQ layer and the QTensor it became (``exact``: codes kept as they were;
    else the error re-quantizing added, against the checkpoint's exact values)."""

    name: str
    shape: tuple[int, ...]
    codec: str
    exact: bool
    reason: str = ""
    added_sqnr_db: float = math.inf


def plan_layer(
    layout: PackedLayout,
    n_in: int,
    g_idx: torch.Tensor | None,
    requantize: str | Codec | None = None,
) -> tuple[Codec, list[str]]:
    """The codec a layer of ``n_in`` inputs becomes, and why it must be re-quantized (an
    empty list: its codes, scales and zero points move unchanged)."""
    g = n_in if layout.group_size == -1 else layout.group_size
    reasons = []
    if g_idx is not None:
        contiguous = torch.arange(n_in, dtype=torch.int32) // g
        if g_idx.shape != contiguous.shape or not torch.equal(g_idx.to(torch.int32), contiguous):
            reasons.append("activation reordering (g_idx is not i // group_size)")
    group_size = None if g == n_in else g
    if group_size is not None and group_size not in GROUP_SIZES:
        reasons.append(f"group size {g} is not one of ours {list(GROUP_SIZES)}")
    if requantize is not None:
        return resolve(requantize), reasons or [f"re-quantization to {requantize} requested"]
    if not reasons:
        return MinMaxCodec(layout.bits, group_size), []
    fallback = group_size if group_size in GROUP_SIZES else 128 if n_in % 128 == 0 else None
    return MinMaxCodec(layout.bits, fallback), reasons


def layer_qtensor(
    layout: PackedLayout,
    tensors: Mapping[str, torch.Tensor],
    name: str,
    *,
    dtype: torch.dtype = torch.float16,
    requantize: str | Codec | None = None,
) -> tuple[QTensor, ImportedLayer]:
    """The QTensor of layer ``name`` (``tensors`` holds its ``qweight``, ``qzeros``,
    ``scales`` and optional ``g_idx``, keyed without the prefix)."""
    try:
        qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    except KeyError as e:
        raise GPTQFormatError(f"{name}: {layout.method} layer lacks {e.args[0]}") from None
    codes, zeros, scales = unpack_layer(layout, qweight, qzeros, scales, name)
    n_in, out = codes.shape
    groups = scales.shape[0]
    g = n_in if layout.group_size == -1 else layout.group_size
    if groups != -(-n_in // g):
        raise GPTQFormatError(f"{name}: {groups} scale groups for {n_in} inputs in groups of {g}")
    g_idx = tensors.get("g_idx")
    codec, reasons = plan_layer(layout, n_in, g_idx, requantize)
    weight_name = f"{name}.weight"
    if not reasons:
        packed = codec.pack(codes.T.contiguous().reshape(-1, g).to(torch.uint8))
        scale = scales.T.contiguous().reshape(-1, 1).to(torch.float16)
        zero = zeros.T.contiguous().reshape(-1, 1).to(torch.float16)
        qt = QTensor(codec, packed, scale, zero, (out, n_in), dtype, weight_name)
        return qt, ImportedLayer(weight_name, (out, n_in), codec.spec, True)
    idx = g_idx.long() if g_idx is not None else torch.arange(n_in) // g
    exact = (codes.float() - zeros.float()[idx]) * scales.float()[idx]  # [in, out]
    qt = quantize_tensor(exact.T.contiguous(), codec, name=weight_name)
    qt = qt.with_inner(lambda t: t, dtype=dtype)
    added = sqnr(exact.T, qt.dequantize(torch.float32))
    reason = "; ".join(reasons)
    return qt, ImportedLayer(weight_name, (out, n_in), codec.spec, False, reason, added)


def dequantize_layer(
    layout: PackedLayout, tensors: Mapping[str, torch.Tensor], name: str = "layer"
) -> torch.Tensor:
    """The exact f32 weight ``[out, in]`` a GPTQ / AWQ layer stands for."""
    codes, zeros, scales = unpack_layer(
        layout, tensors["qweight"], tensors["qzeros"], tensors["scales"], name
    )
    g = codes.shape[0] if layout.group_size == -1 else layout.group_size
    g_idx = tensors.get("g_idx")
    idx = g_idx.long() if g_idx is not None else torch.arange(codes.shape[0]) // g
    return ((codes.float() - zeros.float()[idx]) * scales.float()[idx]).T.contiguous()


# ---- checkpoints ----------------------------------------------------------------------------


@dataclass
class GPTQImport:
    """The result of :func:`import_gptq_checkpoint`; ``print()`` it."""

    layout: PackedLayout
    layers: list[ImportedLayer] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        exact = sum(x.exact for x in self.layers)
        lines = [
            f"{len(self.layers)} {self.layout.method} layer(s) imported, {exact} exactly "
            f"(codes, scales and zero points kept), {len(self.layers) - exact} re-quantized; "
            f"{len(self.copied)} other tensor(s) copied"
        ]
        for x in self.layers:
            if not x.exact:
                lines.append(
                    f"  {x.name}: re-quantized to {x.codec} ({x.reason}): added error "
                    f"{x.added_sqnr_db:.1f} dB SQNR"
                )
        return "\n".join(lines)


def read_layout(src: str | os.PathLike) -> PackedLayout:
    """The packing layout from ``config.json`` (``quantization_config``) or
    ``quantize_config.json`` next to / in ``src``."""
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    for fname, key in (("config.json", "quantization_config"), ("quantize_config.json", None)):
        path = folder / fname
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError as e:
                raise GPTQFormatError(f"{path}: not JSON ({e})") from e
            config = data.get(key) if key else data
            if config:
                return PackedLayout.from_config(config, str(path))
    raise GPTQFormatError(
        f"{folder}: no quantization_config in config.json nor quantize_config.json; pass "
        "layout=PackedLayout(...)"
    )


def import_gptq_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    layout: PackedLayout | None = None,
    dtype: torch.dtype = torch.float16,
    requantize: str | Codec | None = None,
    max_shard_size: int | None = None,
    progress: bool = True,
) -> GPTQImport:
    """Convert a GPTQ / AWQ checkpoint (safetensors file, index or directory) into our
    quantized safetensors format at ``dst``, layer by layer (see the module docstring).

    ``layout`` defaults to the checkpoint's ``quantization_config``; ``dtype`` is the
    weights' logical dtype (the model's). ``load_quantized(dst, model)`` then fills a plain
    float model of the same architecture.
    """
    layout = layout or read_layout(src)
    entries: dict[str, tuple[Header, TensorInfo]] = {}
    for file in shard_files(src):
        header = read_header(file)
        for name, info in header.tensors.items():
            entries[name] = (header, info)
    prefixes = sorted(n.removesuffix(".qweight") for n in entries if n.endswith(".qweight"))
    if not prefixes:
        raise GPTQFormatError(f"{src}: no '<layer>.qweight' tensor: not a GPTQ / AWQ checkpoint")
    own = {f"{p}.{s}" for p in prefixes for s in ("qweight", "qzeros", "scales", "g_idx")}
    result = GPTQImport(layout)
    items: list[tuple[_Logical, list[Planned]]] = []
    for prefix in prefixes:
        items.append(_planned_layer(layout, entries, prefix, dtype, requantize, result))
    for name, (header, info) in entries.items():
        if name in own:
            continue
        result.copied.append(name)
        lg = _Logical(name, info.shape, info.dtype, None, None, [], {})
        items.append((lg, [Planned(name, info.dtype, info.shape, _mapped(header, info))]))
    props = {"quantization.codec": f"minmax:{layout.bits}", "quantization.calibration":
             f"{layout.method} import"}  # fmt: skip
    _write(Path(dst), items, props, max_shard_size, progress, f"importing {layout.method}")
    logger.info("%s", str(result).splitlines()[0])
    for x in result.layers:
        if not x.exact:
            logger.warning("%s: re-quantized to %s (%s), added error %.1f dB SQNR",
                           x.name, x.codec, x.reason, x.added_sqnr_db)  # fmt: skip
    return result


def _planned_layer(
    layout: PackedLayout,
    entries: Mapping[str, tuple[Header, TensorInfo]],
    prefix: str,
    dtype: torch.dtype,
    requantize: str | Codec | None,
    result: GPTQImport,
) -> tuple[_Logical, list[Planned]]:
    """Layer ``prefix``'s stored parts, planned from the header (and its small ``g_idx``);
    the layer is unpacked only when its first part is written, so one layer is in memory at a
    time."""

    def read(suffix: str) -> torch.Tensor | None:
        entry = entries.get(f"{prefix}.{suffix}")
        return None if entry is None else tensor_at(entry[0].path, entry[1]).clone()

    for suffix in ("qweight", "qzeros", "scales"):
        if f"{prefix}.{suffix}" not in entries:
            raise GPTQFormatError(f"{prefix}: {layout.method} layer lacks {suffix}")
    qweight = entries[f"{prefix}.qweight"][1]
    scales = entries[f"{prefix}.scales"][1]
    if len(qweight.shape) != 2 or len(scales.shape) != 2:
        raise GPTQFormatError(f"{prefix}: qweight and scales must be matrices")
    pack = 32 // layout.bits
    n_in = qweight.shape[0] * (pack if layout.method == "gptq" else 1)
    shape = (scales.shape[1], n_in)
    codec, reasons = plan_layer(layout, n_in, read("g_idx"), requantize)
    parts = _qtensor_parts(codec, shape)
    held: dict[str, torch.Tensor] = {}

    def part(key: str) -> Any:
        def produce() -> Any:
            if not held:
                tensors = {s: t for s in ("qweight", "qzeros", "scales", "g_idx")
                           if (t := read(s)) is not None}  # fmt: skip
                qt, record = layer_qtensor(
                    layout, tensors, prefix, dtype=dtype, requantize=requantize
                )
                if qt.codec != codec or tuple(qt.shape) != shape:
                    raise GPTQFormatError(f"{prefix}: planned {codec} {shape}, got {qt!r}")
                result.layers.append(record)
                held.update(packed=qt.packed, scale=qt.scale)
                if qt.zero is not None:
                    held["zero"] = qt.zero
            return tensor_bytes(held.pop(key))

        return produce

    requant = f", re-quantized to {codec.spec}" if reasons else ""
    calibration = f"{layout.method} import{requant}"
    lg = _Logical(f"{prefix}.weight", shape, dtype, codec, calibration, [], parts)
    keys = lg.keys()
    return lg, [Planned(keys[k], dt, sh, part(k)) for k, (dt, sh) in parts.items()]


def _mapped(header: Header, info: TensorInfo) -> Any:
    return lambda: tensor_bytes(tensor_at(header.path, info))

"""bitsandbytes models in: ``Linear4bit`` and ``Linear8bitLt`` -> ``nn.Linear`` with a QTensor.

``convert_bitsandbytes(model)`` replaces, in place, every bitsandbytes linear layer by an
``nn.Linear`` (every ``Embedding4bit`` / ``Embedding8bit`` by an ``nn.Embedding``) whose
weight is a :class:`~t2n_quant.qtensor.QTensor` holding the same codes:

- ``Linear4bit`` (``quant_type`` ``"nf4"`` or ``"fp4"``, any ``blocksize``, with or without
  double quantization of the absmax) -> codec ``nf4`` / ``fp4``. The 4-bit codes are moved
  as integers (bitsandbytes keeps the first code of a byte in its high nibble, we in the low
  one); the block scales are bitsandbytes' f32 absmax, the nested ones resolved once as
  bitsandbytes resolves them (``code2[q] * absmax2 + offset``, in f32). A block that runs
  across rows (``in_features`` not a multiple of ``blocksize``) is cut at row ends, each
  piece keeping its block's scale, so the values stay the same.
- ``Linear8bitLt`` -> codec ``int8``: codes ``CB``, row scales ``SCB * (1 / 127)`` as
  bitsandbytes' dequantizing forward computes them.

The dequantized weight equals bitsandbytes' own (``dequantize_4bit``; ``CB * (SCB / 127)``)
bit for bit. ``reencode="q4_0"`` re-quantizes each converted weight to another codec (q4_0
keeps tract's weights compressed in memory) and reports the error that adds, per layer.
Any other bitsandbytes layer, or an option we cannot reproduce, raises
:class:`BitsAndBytesConversionError` naming the layer and its type before anything changes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2n_core.errors import T2NError
from t2n_core.summary import human_bytes
from t2n_quant.calibration import Calibration
from t2n_quant.codecs.base import Codec
from t2n_quant.codecs.codebook import CodebookCodec, FP4Codec, NF4Codec
from t2n_quant.codecs.int8 import Int8Codec
from t2n_quant.compare import sqnr
from t2n_quant.config import resolve
from t2n_quant.qtensor import QTensor
from t2n_quant.quantize import quantize_tensor

logger = logging.getLogger(__name__)

_CODECS: dict[str, type[CodebookCodec]] = {"nf4": NF4Codec, "fp4": FP4Codec}


class BitsAndBytesConversionError(T2NError, NotImplementedError):
    """A bitsandbytes layer or option that cannot be converted exactly."""


@dataclass(frozen=True)
class ConvertedLayer:
    """One bitsandbytes layer and the QTensor it became.

    ``added_sqnr_db`` / ``added_max_abs``: the error re-encoding added against the
    bitsandbytes weight (``inf`` / 0 when the codes were kept as they were).
    """

    name: str
    bnb_type: str
    shape: tuple[int, ...]
    source: str
    codec: str
    bits_per_weight: float
    added_sqnr_db: float = math.inf
    added_max_abs: float = 0.0


@dataclass
class BitsAndBytesConversion:
    """The result of :func:`convert_bitsandbytes`; ``print()`` it."""

    layers: list[ConvertedLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def headline(self) -> str:
        reenc = [x for x in self.layers if x.codec != x.source]
        text = f"{len(self.layers)} bitsandbytes layer(s) converted"
        if reenc:
            worst = min(reenc, key=lambda x: x.added_sqnr_db)
            text += (
                f", {len(reenc)} re-encoded (worst added error: {worst.name} "
                f"{worst.added_sqnr_db:.1f} dB SQNR, max |diff| {worst.added_max_abs:.3g})"
            )
        return text

    def __str__(self) -> str:
        lines = [self.headline()]
        for x in self.layers:
            added = "exact" if x.codec == x.source else f"+err {x.added_sqnr_db:.1f} dB"
            lines.append(
                f"  {x.name}: {x.bnb_type} {x.shape} {x.source} -> {x.codec} "
                f"({x.bits_per_weight:.3g} bits/w, {added})"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _bnb() -> object:
    try:
        import bitsandbytes
    except ImportError as e:  # pragma: no cover - bitsandbytes is a dev dependency
        from t2n_quant.errors import MissingDependencyError

        raise MissingDependencyError(
            "converting bitsandbytes layers needs bitsandbytes: pip install 't2n[interop]'"
        ) from e
    return bitsandbytes


def is_bitsandbytes_module(module: nn.Module) -> bool:
    """Whether ``module``'s class comes from the bitsandbytes package."""
    return type(module).__module__.split(".")[0] == "bitsandbytes"


# ---- 4-bit ---------------------------------------------------------------------------------


def _absmax(qs: object) -> torch.Tensor:
    """bitsandbytes' f32 block absmax, nested (double-quantized) statistics resolved."""
    absmax = qs.absmax  # type: ignore[attr-defined]
    if getattr(qs, "nested", False):
        s2 = qs.state2  # type: ignore[attr-defined]
        per = s2.absmax.repeat_interleave(s2.blocksize)[: absmax.numel()]
        absmax = s2.code[absmax.reshape(-1).long()] * per
        absmax = absmax + qs.offset  # type: ignore[attr-defined]
    return absmax.reshape(-1).float()


def _check_codebook(qs: object, codec_cls: type[CodebookCodec], where: str) -> None:
    code = qs.code.float().cpu()  # type: ignore[attr-defined]
    if not torch.equal(code, codec_cls().table()):
        raise BitsAndBytesConversionError(
            f"{where}: its {codec_cls.name} code book differs from bitsandbytes' standard one "
            f"({code.tolist()})"
        )


def _codec_class(qs: object, where: str) -> type[CodebookCodec]:
    quant_type = getattr(qs, "quant_type", None)
    if quant_type not in _CODECS:
        raise BitsAndBytesConversionError(
            f"{where}: quant_type {quant_type!r} is not supported (supported: {sorted(_CODECS)})"
        )
    codec_cls = _CODECS[quant_type]
    _check_codebook(qs, codec_cls, where)
    return codec_cls


def _qtensor(
    codec_cls: type[CodebookCodec],
    codes: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    name: str | None,
) -> QTensor:
    """Flat codes and one absmax per ``blocksize`` flat values -> a QTensor (blocks cut at
    row ends keep their block's scale)."""
    k, n = math.prod(shape[1:]), math.prod(shape)
    g = math.gcd(k, blocksize)
    per_block = absmax.repeat_interleave(blocksize // g)[: n // g].reshape(-1, 1)
    codec = codec_cls(group_size=g)
    packed = codec.pack(codes.reshape(-1, g))
    return QTensor(codec, packed, per_block.contiguous(), None, shape, dtype, name)


def qtensor_from_4bit(
    packed: torch.Tensor, qs: object, name: str | None = None, bnb_type: str = "Linear4bit"
) -> QTensor:
    """The QTensor of bitsandbytes' packed 4-bit ``packed`` (any storage dtype) and state."""
    where = f"{bnb_type} {name!r}"
    codec_cls = _codec_class(qs, where)
    shape = tuple(qs.shape)  # type: ignore[attr-defined]
    if len(shape) < 2:
        raise BitsAndBytesConversionError(f"{where}: weight of rank {len(shape)}")
    n = math.prod(shape)
    raw = packed.detach().cpu().contiguous().view(torch.uint8).reshape(-1)
    if raw.numel() * 2 < n:
        raise BitsAndBytesConversionError(
            f"{where}: {raw.numel()} packed bytes cannot hold {n} 4-bit codes"
        )
    codes = torch.stack([raw >> 4, raw & 0x0F], dim=1).reshape(-1)[:n]
    dtype = getattr(qs, "dtype", torch.float32)
    blocksize = int(qs.blocksize)  # type: ignore[attr-defined]
    return _qtensor(codec_cls, codes, _absmax(qs).cpu(), blocksize, shape, dtype, name)


def qtensor_from_cpu_packed(packed: torch.Tensor, qs: object, name: str | None = None) -> QTensor:
    """The QTensor of a ``Linear4bit`` that bitsandbytes repacked for its AVX512-BF16 CPU
    kernel (``quant_state.packing_format_for_cpu``, done by its first eval forward there).

    That repacking interleaves the codes of 32 rows and rounds the absmax to bf16 in place;
    the bf16 absmax is what bitsandbytes computes with from then on, so it is what we keep.
    """
    where = f"Linear4bit {name!r}"
    codec_cls = _codec_class(qs, where)
    rows, half = packed.shape
    k, lanes = 2 * half, 32
    p = packed.detach().cpu().view(torch.uint8).reshape(-1, lanes)
    codes = torch.cat([p & 0x0F, p >> 4], dim=-1)
    codes = codes.reshape(rows // lanes, half, lanes, 2).transpose(1, 2).reshape(rows, k)
    absmax = qs.absmax.detach().cpu().T.reshape(-1).float()  # type: ignore[attr-defined]
    dtype = getattr(qs, "original_dtype", torch.float32)
    blocksize = int(qs.blocksize)  # type: ignore[attr-defined]
    return _qtensor(codec_cls, codes.reshape(-1), absmax, blocksize, (rows, k), dtype, name)


def _linear4bit(module: nn.Module, name: str, notes: list[str]) -> QTensor:
    weight = module.weight
    qs = getattr(weight, "quant_state", None)
    if qs is None:
        raise BitsAndBytesConversionError(
            f"Linear4bit {name!r} is not quantized yet (no quant_state): move the model to a "
            "device (model.to('cpu')) so bitsandbytes quantizes it, then convert"
        )
    if getattr(qs, "packing_format_for_cpu", False):
        notes.append(
            f"{name}: bitsandbytes had repacked this layer for its AVX512-BF16 CPU kernel, "
            "which rounded its block absmax to bf16; converted with those bf16 scales "
            "(convert before an eval forward on such a CPU to keep bitsandbytes' f32 ones)"
        )
        return qtensor_from_cpu_packed(weight.data, qs, name)
    return qtensor_from_4bit(weight.data, qs, name)


# ---- 8-bit ---------------------------------------------------------------------------------


def qtensor_from_int8(
    cb: torch.Tensor,
    scb: torch.Tensor,
    dtype: torch.dtype,
    name: str | None = None,
    *,
    divide: bool = False,
) -> QTensor:
    """The ``int8`` QTensor of bitsandbytes' row-wise ``CB`` (int8) and ``SCB`` (f32 absmax).

    The row scale is ``SCB * (1 / 127)`` as ``Linear8bitLt`` computes it, or with ``divide``
    ``SCB / 127`` as ``Embedding8bit`` does (the two differ in the last bit).
    """
    if cb.dtype != torch.int8 or cb.dim() != 2 or scb.numel() != cb.shape[0]:
        raise BitsAndBytesConversionError(
            f"Linear8bitLt {name!r}: expected int8 CB [rows, k] and one SCB per row, got "
            f"{cb.dtype} {tuple(cb.shape)} and {tuple(scb.shape)}"
        )
    codes = (cb.detach().cpu().to(torch.int16) + 128).to(torch.uint8)
    stats = scb.detach().cpu().float().reshape(-1, 1)
    scale = stats / 127.0 if divide else stats.mul(1.0 / 127.0)
    codec = Int8Codec()
    return QTensor(codec, codes.contiguous(), scale, None, tuple(cb.shape), dtype, name)


def _linear8bit(module: nn.Module, name: str) -> QTensor:
    state = module.state  # type: ignore[attr-defined]
    if state.has_fp16_weights:
        raise BitsAndBytesConversionError(
            f"Linear8bitLt {name!r} has has_fp16_weights=True: its weights are float, not "
            "int8; load it with has_fp16_weights=False (or quantize the float model with t2n)"
        )
    cb = state.CB if state.CB is not None else module.weight.data
    scb = state.SCB if state.SCB is not None else getattr(module.weight, "SCB", None)
    if scb is None or cb.dtype != torch.int8:
        raise BitsAndBytesConversionError(
            f"Linear8bitLt {name!r} is not quantized yet (no SCB): move the model to a device "
            "(model.to('cpu')) so bitsandbytes quantizes it, then convert"
        )
    dtype = module.bias.dtype if module.bias is not None else torch.float32
    return qtensor_from_int8(cb, scb, dtype, name)


# ---- the model -----------------------------------------------------------------------------


def _bnb_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if is_bitsandbytes_module(module):
            yield name, module


def _convert_one(name: str, module: nn.Module, notes: list[str]) -> tuple[QTensor, str]:
    bnb = _bnb()
    nn_mod = bnb.nn  # type: ignore[attr-defined]
    if isinstance(module, nn_mod.Linear4bit):
        return _linear4bit(module, name, notes), "Linear4bit"
    if isinstance(module, nn_mod.Linear8bitLt):
        return _linear8bit(module, name), "Linear8bitLt"
    if isinstance(module, (nn_mod.Embedding4bit, nn_mod.Embedding8bit)):
        if module.max_norm is not None:
            raise BitsAndBytesConversionError(
                f"{type(module).__name__} {name!r} has max_norm: it renormalises its weight "
                "in place, which a frozen quantized weight cannot do"
            )
        if isinstance(module, nn_mod.Embedding4bit):
            return _linear4bit(module, name, notes), "Embedding4bit"
        scb = getattr(module.weight, "SCB", None)
        if scb is None:
            raise BitsAndBytesConversionError(
                f"Embedding8bit {name!r} is not quantized yet (no SCB): move the model to a "
                "device (model.to('cpu')) so bitsandbytes quantizes it, then convert"
            )
        return qtensor_from_int8(module.weight.data, scb, module.dtype, name, divide=True), (
            "Embedding8bit"
        )
    raise BitsAndBytesConversionError(
        f"bitsandbytes layer {name!r} of type {type(module).__name__} is not supported; "
        "supported: Linear4bit (nf4, fp4), Linear8bitLt, Embedding4bit, Embedding8bit"
    )


def convert_bitsandbytes(
    model: nn.Module,
    *,
    reencode: str | Codec | None = None,
    calibration: str | Calibration = "minmax",
) -> BitsAndBytesConversion:
    """Replace, in place, every bitsandbytes linear layer of ``model`` (see the module doc).

    ``reencode``: a spec (``"q4_0"``) to re-quantize each converted weight with; the added
    error against the bitsandbytes weight is reported per layer. Every layer is converted
    before any is replaced, so an error leaves ``model`` unchanged.

    >>> import bitsandbytes as bnb
    >>> m = nn.Sequential(bnb.nn.Linear4bit(64, 32, quant_type="nf4")).to("cpu")
    >>> print(convert_bitsandbytes(m).headline())
    1 bitsandbytes layer(s) converted
    >>> type(m[0]).__name__, m[0].weight.codec.spec
    ('Linear', 'nf4:g64')
    """
    target = None if reencode is None else resolve(reencode)
    result = BitsAndBytesConversion()
    replacements: list[tuple[str, nn.Module, nn.Linear]] = []
    for name, module in _bnb_layers(model):
        qt, bnb_type = _convert_one(name, module, result.notes)
        record = ConvertedLayer(
            name, bnb_type, tuple(qt.shape), qt.codec.spec, qt.codec.spec, qt.bits_per_weight
        )
        if target is not None:
            exact = qt.dequantize(torch.float32)
            new = quantize_tensor(exact, target, calibration=calibration, name=name)
            got = new.dequantize(torch.float32)
            qt = new if new.dtype == qt.dtype else new.with_inner(lambda t: t, dtype=qt.dtype)
            record = ConvertedLayer(
                name, bnb_type, record.shape, record.source, new.codec.spec, new.bits_per_weight,
                sqnr(exact, got), float((exact - got).abs().max()),
            )  # fmt: skip
        threshold = getattr(getattr(module, "state", None), "threshold", 0.0) or 0.0
        if bnb_type == "Linear8bitLt" and threshold > 0:
            result.notes.append(
                f"{name}: threshold={threshold} only steers bitsandbytes' outlier handling of "
                "activations in its int8 matmul; the converted layer multiplies by the "
                "dequantized weight in float, so there is nothing to keep"
            )
        if bnb_type == "Linear4bit":  # Embedding4bit has no compute dtype of its own
            cdt = getattr(module, "compute_dtype", None)
            if cdt is not None and cdt != qt.dtype:
                result.notes.append(
                    f"{name}: bitsandbytes computed in {cdt}; the converted layer computes in "
                    f"{qt.dtype}, its weight's dtype"
                )
        if bnb_type.startswith("Embedding"):
            new: nn.Module = nn.Embedding(
                module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse,
                device="meta",
            )  # fmt: skip
            new.weight = nn.Parameter(qt, requires_grad=False)
        else:
            new = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            new.weight = nn.Parameter(qt, requires_grad=False)
            bias = module.bias
            new.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        replacements.append((name, module, new))
        result.layers.append(record)
    converted = {id(m) for _, m, _ in replacements}
    for mod_name, module in model.named_modules():
        if id(module) in converted:
            continue
        for pname, p in module.named_parameters(recurse=False):
            if type(p).__module__.split(".")[0] == "bitsandbytes":
                raise BitsAndBytesConversionError(
                    f"parameter {pname!r} of {type(module).__name__} {mod_name!r} is a "
                    f"bitsandbytes {type(p).__name__} outside a bitsandbytes layer: not supported"
                )
    for name, _, linear in replacements:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, linear)
    for note in result.notes:
        logger.warning("%s", note)
    logger.info("%s", result.headline())
    total = sum(r[2].weight.nbytes for r in replacements)
    logger.debug("converted weights hold %s", human_bytes(total))
    return result


# ---- checkpoints saved by transformers / bitsandbytes ---------------------------------------

_QS_MARK = ".quant_state.bitsandbytes__"


@dataclass
class BitsAndBytesImport:
    """The result of :func:`import_bnb_checkpoint`; ``print()`` it."""

    layers: list[ConvertedLayer] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = BitsAndBytesConversion(self.layers).headline().replace("converted", "imported")
        lines = [f"{head}; {len(self.copied)} other tensor(s) copied"]
        if self.dropped:
            lines.append(f"  dropped (bitsandbytes bookkeeping): {', '.join(self.dropped)}")
        lines += (
            [str(BitsAndBytesConversion(self.layers)).split("\n", 1)[-1]] if self.layers else []
        )
        return "\n".join(lines)


def import_bnb_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    reencode: str | Codec | None = None,
    calibration: str | Calibration = "minmax",
    max_shard_size: int | None = None,
    progress: bool = True,
) -> BitsAndBytesImport:
    """Convert a checkpoint saved from a bitsandbytes model (``save_pretrained`` of a model
    loaded in 4-bit or 8-bit) into our quantized safetensors file, layer by layer.

    4-bit layers (``<P>.weight`` plus ``<P>.weight.absmax``, ``.quant_map``, nested
    statistics and ``.quant_state.bitsandbytes__nf4|fp4``) become ``nf4`` / ``fp4``
    QTensors; 8-bit layers (``<P>.weight`` int8 and ``<P>.SCB``) ``int8`` ones, with logical
    dtype ``dtype`` (the 4-bit state records its own). ``reencode`` as in
    :func:`convert_bitsandbytes`. ``load_quantized(dst, model)`` then fills the float model.
    """
    from bitsandbytes.functional import QuantState

    from t2n_quant.interop.safetensors import _Logical, _qtensor_parts, _write, shard_files
    from t2n_quant.interop.stfile import Planned, read_header, tensor_at, tensor_bytes

    entries = {}
    for file in shard_files(src):
        header = read_header(file)
        entries.update({name: (header, info) for name, info in header.tensors.items()})

    def load(name: str) -> torch.Tensor:
        header, info = entries[name]
        return tensor_at(header.path, info).clone()

    target = None if reencode is None else resolve(reencode)
    result = BitsAndBytesImport()
    layers: dict[str, Any] = {}  # weight name -> () -> QTensor
    used: set[str] = set()
    for key in entries:
        if _QS_MARK in key:
            weight = key.split(_QS_MARK)[0]
            own = [k for k in entries if k.startswith(weight + ".") and k != weight]
            used.update([*own, weight])

            def make4(weight: str = weight, own: list[str] = own) -> QTensor:
                qs_dict = {k[len(weight) + 1 :]: load(k) for k in own}
                try:
                    qs = QuantState.from_dict(qs_dict, device=torch.device("cpu"))
                except (ValueError, AssertionError, KeyError) as e:
                    raise BitsAndBytesConversionError(
                        f"4-bit weight {weight!r} in {src}: unreadable quant state ({e})"
                    ) from e
                return qtensor_from_4bit(load(weight), qs, weight)

            layers[weight] = make4
        elif key.endswith(".SCB"):
            prefix = key[: -len(".SCB")]
            weight = f"{prefix}.weight"
            if weight not in entries:
                raise BitsAndBytesConversionError(f"{key} in {src} has no int8 {weight}")
            used.update([key, weight])
            if f"{prefix}.weight_format" in entries:
                used.add(f"{prefix}.weight_format")
                result.dropped.append(f"{prefix}.weight_format")

            def make8(weight: str = weight, key: str = key) -> QTensor:
                return qtensor_from_int8(load(weight), load(key), dtype, weight)

            layers[weight] = make8
    if not layers:
        raise BitsAndBytesConversionError(
            f"{src}: no bitsandbytes 4-bit quant state nor int8 SCB: not a bitsandbytes checkpoint"
        )
    items = []
    for weight, make in layers.items():
        held: dict[str, torch.Tensor] = {}
        qt = make()  # held until written: memory grows with the packed checkpoint, not f32
        record = ConvertedLayer(weight, "Linear4bit" if isinstance(qt.codec, CodebookCodec)
                                else "Linear8bitLt", tuple(qt.shape), qt.codec.spec,
                                qt.codec.spec, qt.bits_per_weight)  # fmt: skip
        if target is not None:
            exact = qt.dequantize(torch.float32)
            new = quantize_tensor(exact, target, calibration=calibration, name=weight)
            got = new.dequantize(torch.float32)
            record = ConvertedLayer(
                weight, record.bnb_type, record.shape, record.source, new.codec.spec,
                new.bits_per_weight, sqnr(exact, got), float((exact - got).abs().max()),
            )  # fmt: skip
            qt = new.with_inner(lambda t: t, dtype=qt.dtype)
        result.layers.append(record)
        parts = _qtensor_parts(qt.codec, tuple(qt.shape))
        held.update(packed=qt.packed, scale=qt.scale)
        if qt.zero is not None:
            held["zero"] = qt.zero
        lg = _Logical(weight, tuple(qt.shape), qt.dtype, qt.codec,
                      f"bitsandbytes {record.source}", [], parts)  # fmt: skip
        keys = lg.keys()
        planned = [Planned(keys[k], dt, sh, (lambda t: lambda: tensor_bytes(t))(held[k]))
                   for k, (dt, sh) in parts.items()]  # fmt: skip
        items.append((lg, planned))
    for name, (header, info) in entries.items():
        if name in used:
            continue
        result.copied.append(name)
        lg = _Logical(name, info.shape, info.dtype, None, None, [], {})
        planned = [
            Planned(
                name,
                info.dtype,
                info.shape,
                (lambda h, i: lambda: tensor_bytes(tensor_at(h.path, i)))(header, info),
            )
        ]
        items.append((lg, planned))  # fmt: skip
    props = {"quantization.codec": ",".join(sorted({x.codec for x in result.layers})),
             "quantization.calibration": "bitsandbytes"}  # fmt: skip
    _write(Path(dst), items, props, max_shard_size, progress, "importing bitsandbytes")
    logger.info("%s", str(result).splitlines()[0])
    return result

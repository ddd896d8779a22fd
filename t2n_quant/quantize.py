"""``quantize_tensor``: one float weight -> one :class:`~t2n_quant.qtensor.QTensor`.

The weight is read as ``rows x k`` and processed a slab of rows at a time (about a
million values), calibrating, quantizing and packing each slab while it is in cache.
"""

from __future__ import annotations

import logging
import math

import torch

from t2n_core.deferred import DeferredTensor
from t2n_quant.calibration import Calibration, get_calibration
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.errors import AlreadyQuantizedError, NonFiniteWeightError, WeightRangeError
from t2n_quant.qtensor import QTensor

logger = logging.getLogger(__name__)

SLAB_VALUES = 1 << 20


def _codec_of(codec: Codec | str) -> Codec:
    if isinstance(codec, Codec):
        return codec
    from t2n_quant.config import parse_spec

    return parse_spec(codec).codec()


def _check_finite(weight: torch.Tensor, name: str | None) -> None:
    lo, hi = torch.aminmax(weight)  # NaN propagates; ~100x faster than isfinite().all()
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    finite = torch.isfinite(weight)
    bad = (~finite).nonzero()[0].tolist()
    count = int((~finite).sum())
    where = f"tensor {name!r}" if name else "the tensor"
    raise NonFiniteWeightError(
        f"{where} holds {count} NaN/Inf value(s), the first at index {tuple(bad)} "
        f"({weight[tuple(bad)].item()}); fix or exclude this weight before quantizing."
    )


def quantize_tensor(
    weight: torch.Tensor,
    codec: Codec | str,
    *,
    calibration: str | Calibration = "minmax",
    name: str | None = None,
    params: QParams | None = None,
) -> QTensor:
    """Quantize ``weight`` with ``codec`` (a :class:`Codec` or a spec such as ``"q4_0"``).

    ``weight`` is read as rows = dim 0 by k = the product of the other dims.
    ``calibration`` chooses the scales (``"minmax"``, ``"mse"``, ``"hqq"`` or a function);
    ``params`` gives them instead, one row per block in row-major order (what a data-aware
    calibration such as GPTQ chose while it updated the weight).

    >>> q = quantize_tensor(torch.randn(16, 64), "minmax:4:g32", calibration="mse")
    >>> q.codec.spec, q.shape
    ('minmax:4:g32', torch.Size([16, 64]))
    """
    if isinstance(weight, QTensor):
        raise AlreadyQuantizedError(
            f"{weight.label()} is already quantized ({weight.codec.spec}); quantize the "
            "float weight instead (qtensor.dequantize() gives it back, with its error)."
        )
    codec = _codec_of(codec)
    calibrate = get_calibration(calibration)
    if not weight.dtype.is_floating_point:
        raise TypeError(f"cannot quantize {name or 'a tensor'} of dtype {weight.dtype}")
    codec.check_shape(tuple(weight.shape), name)
    w = weight.detach()
    _check_finite(w, name)
    rows = w.shape[0]
    w2 = w.reshape(rows, -1)
    k = w2.shape[1]
    bs = codec.block_size(k)
    per_row = k // bs
    n_blocks = rows * per_row
    if params is not None:
        if params.scale.shape[0] != n_blocks or (params.zero is None) == codec.has_zero:
            raise ValueError(
                f"params for {name or 'the tensor'} must hold {n_blocks} block(s) "
                f"{'with' if codec.has_zero else 'without'} zero points for {codec.spec}; got "
                f"{params.scale.shape[0]} {'without' if params.zero is None else 'with'}"
            )
        calibrate = _given(params)
    packed = torch.empty(n_blocks, codec.bytes_per_block(bs), dtype=torch.uint8, device=w.device)
    scale = torch.empty(n_blocks, 1, dtype=codec.storage_dtype, device=w.device)
    zero = torch.empty_like(scale) if codec.has_zero else None
    slab = max(1, SLAB_VALUES // k)
    for r0 in range(0, rows, slab):
        blocks = w2[r0 : r0 + slab].reshape(-1, bs).float()
        params = calibrate(codec, blocks)
        codes = codec.quantize_blocks(blocks, params)
        stored = codec.store(params)
        b0, b1 = r0 * per_row, r0 * per_row + blocks.shape[0]
        packed[b0:b1] = codec.pack(codes)
        scale[b0:b1] = stored.scale
        if zero is not None:
            zero[b0:b1] = stored.zero
    _check_range(QParams(scale, zero), name, codec)
    logger.debug("quantized %s %s with %s", name or "tensor", tuple(w.shape), codec.spec)
    return QTensor(codec, packed, scale, zero, tuple(w.shape), w.dtype, name)


def _given(params: QParams) -> Calibration:
    """A calibration handing out ``params`` slab after slab, in the order they are asked."""
    cursor = [0]

    def given(codec: Codec, blocks: torch.Tensor) -> QParams:
        b0, b1 = cursor[0], cursor[0] + blocks.shape[0]
        cursor[0] = b1
        zero = None if params.zero is None else params.zero[b0:b1].float()
        return QParams(params.scale[b0:b1].float(), zero)

    return given


def quantize_deferred(
    weight: DeferredTensor,
    codec: Codec | str,
    *,
    calibration: str | Calibration = "minmax",
    name: str | None = None,
) -> DeferredTensor:
    """``weight`` to be quantized when it is read (by the writer, or by a PyTorch op).

    Nothing is read now: the result knows its encoding from an empty QTensor of the same
    shape (on the meta device). The rows are quantized as read, in their stored dtype (bf16
    rows give the same codes as their f32 conversion); the QTensor reports ``weight.dtype``.

    >>> from t2n_core.deferred import DeferredTensor
    >>> w = torch.randn(4, 64)
    >>> d = quantize_deferred(DeferredTensor(lambda b, e: w[b:e], (4, 64), torch.float32), "q4_0")
    >>> torch.equal(d.materialize().dequantize(), quantize_tensor(w, "q4_0").dequantize())
    True
    """
    codec = _codec_of(codec)
    calibrate = get_calibration(calibration)
    codec.check_shape(tuple(weight.shape), name)
    dtype = weight.dtype

    def quantize(rows: torch.Tensor) -> QTensor:
        qt = quantize_tensor(rows, codec, calibration=calibrate, name=name)
        return qt if qt.dtype == dtype else qt.with_inner(lambda t: t, dtype=dtype)

    def fake_quantize(rows: torch.Tensor) -> torch.Tensor:
        return fake_quantize_tensor(rows, codec, calibration=calibrate, name=name).to(dtype)

    layout = empty_qtensor(tuple(weight.shape), dtype, codec, name)
    return weight.with_transform(
        quantize, layout, dtype, to_float=QTensor.dequantize, float_rows=fake_quantize
    )


def fake_quantize_tensor(
    weight: torch.Tensor,
    codec: Codec | str,
    *,
    calibration: str | Calibration = "minmax",
    name: str | None = None,
) -> torch.Tensor:
    """``quantize_tensor(weight, ...).dequantize()`` in float32, bit for bit, without packing
    the codes (about twice as fast): the values a weight stands for once quantized.

    >>> w = torch.randn(8, 64)
    >>> torch.equal(fake_quantize_tensor(w, "q4_0"), quantize_tensor(w, "q4_0").dequantize())
    True
    """
    codec = _codec_of(codec)
    calibrate = get_calibration(calibration)
    codec.check_shape(tuple(weight.shape), name)
    w = weight.detach()
    _check_finite(w, name)
    w2 = w.reshape(w.shape[0], -1)
    k = w2.shape[1]
    bs = codec.block_size(k)
    out = torch.empty(w2.shape, dtype=torch.float32, device=w.device)
    slab = max(1, SLAB_VALUES // k)
    for r0 in range(0, w2.shape[0], slab):
        blocks = w2[r0 : r0 + slab].reshape(-1, bs).float()
        params = calibrate(codec, blocks)
        _check_range(codec.store(params), name, codec)
        out[r0 : r0 + slab] = codec.fake_quantize(blocks, params).reshape(-1, k)
    return out.reshape(w.shape)


def empty_qtensor(
    shape: tuple[int, ...], dtype: torch.dtype, codec: Codec, name: str | None = None
) -> QTensor:
    """A QTensor of ``shape`` on the meta device: its layout, sizes and encoding, no values."""
    k = math.prod(shape[1:])
    bs = codec.block_size(k)
    n_blocks = shape[0] * (k // bs)
    packed = torch.empty(n_blocks, codec.bytes_per_block(bs), dtype=torch.uint8, device="meta")
    scale = torch.empty(n_blocks, 1, dtype=codec.storage_dtype, device="meta")
    zero = torch.empty_like(scale) if codec.has_zero else None
    return QTensor(codec, packed, scale, zero, shape, dtype, name)


def _check_range(stored: QParams, name: str | None, codec: Codec) -> None:
    bad = ~torch.isfinite(stored.scale)
    if stored.zero is not None:
        bad |= ~torch.isfinite(stored.zero)
    if bool(bad.any()):
        where = f"tensor {name!r}" if name else "the tensor"
        raise WeightRangeError(
            f"{where} has values too large for {codec.spec}'s f16 scales "
            f"({int(bad.sum())} block(s) overflow f16); rescale the weight or keep it in float."
        )

"""``QTensor``: a frozen quantized weight that behaves like its dequantized float tensor.

It holds a codec, the packed codes (uint8), the f16 scales and, for asymmetric codecs, the
f16 zero points, plus the logical shape and dtype. Any torch op sees the dequantized
float tensor (see :mod:`t2n_quant.qtensor_ops` for the ops it implements itself);
detach / clone / ``.to(device)`` keep it compressed. It answers the storage protocol of
:mod:`t2n_core.storage` by delegating to the encoder registered for its codec.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.utils._pytree import tree_map_only

from t2n_core.storage import Encoding
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.errors import ImmutableTensorError

logger = logging.getLogger(__name__)

#: values dequantized at once by :meth:`QTensor.dequantize`
_DEQUANT_SLAB_VALUES = 1 << 20

OpHandler = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]


class QTensor(torch.Tensor):
    """A quantized weight (build one with :func:`t2n_quant.quantize_tensor`).

    >>> from t2n_quant import quantize_tensor
    >>> q = quantize_tensor(torch.randn(8, 64), "q4_0")
    >>> q.bits_per_weight, (q + 0).dtype
    (4.5, torch.float32)
    """

    #: inner tensors (``zero`` may be None) and attributes, for flatten/unflatten
    tensor_data_names: ClassVar[tuple[str, ...]] = ("packed", "scale", "zero")
    tensor_attribute_names: ClassVar[tuple[str, ...]] = ("codec", "tensor_name")
    #: ops implemented without dequantizing everything, filled by :mod:`t2n_quant.qtensor_ops`
    ops: ClassVar[dict[Any, OpHandler]] = {}

    codec: Codec
    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    tensor_name: str | None

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(
        cls,
        codec: Codec,
        packed: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        shape: tuple[int, ...] | torch.Size,
        dtype: torch.dtype,
        name: str | None = None,
    ) -> QTensor:
        return torch.Tensor._make_wrapper_subclass(
            cls, tuple(shape), dtype=dtype, device=packed.device, requires_grad=False
        )

    def __init__(
        self,
        codec: Codec,
        packed: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        shape: tuple[int, ...] | torch.Size,
        dtype: torch.dtype,
        name: str | None = None,
    ) -> None:
        self.codec = codec
        self.packed = packed
        self.scale = scale
        self.zero = zero
        self.tensor_name = name
        self._check_layout()

    def _check_layout(self) -> None:
        if self.packed.device.type == "meta" or self.numel() == 0:
            return
        bs = self.block_size
        n_blocks = self.rows * (self.k // bs)
        want = {"packed": (n_blocks, self.codec.bytes_per_block(bs)), "scale": (n_blocks, 1)}
        if self.codec.has_zero:
            want["zero"] = (n_blocks, 1)
        for key, shape in want.items():
            got = getattr(self, key)
            if got is None or tuple(got.shape) != shape:
                raise ValueError(
                    f"{self.label()} {self.codec.spec} of shape {tuple(self.shape)} needs "
                    f"{key} of shape {shape}, got {None if got is None else tuple(got.shape)}"
                )

    @classmethod
    def implements(cls, *ops: Any) -> Callable[[OpHandler], OpHandler]:
        """Register a handler ``(func, args, kwargs) -> result`` for ATen ``ops``."""

        def deco(fn: OpHandler) -> OpHandler:
            for op in ops:
                cls.ops[op] = fn
            return fn

        return deco

    # ---- layout ------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def k(self) -> int:
        """Values per row: the product of all dims but the first."""
        return math.prod(self.shape[1:])

    @property
    def block_size(self) -> int:
        return self.codec.block_size(self.k)

    @property
    def params(self) -> QParams:
        """The stored (f16) scales and zero points."""
        return QParams(self.scale, self.zero)

    @property
    def nbytes(self) -> int:  # type: ignore[override]
        """Bytes of packed codes, scales and zero points together."""
        inner = [self.packed, self.scale] + ([] if self.zero is None else [self.zero])
        return sum(t.numel() * t.element_size() for t in inner)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(1, self.numel())

    def label(self) -> str:
        """How error messages name this tensor."""
        return f"QTensor {self.tensor_name!r}" if self.tensor_name else "QTensor"

    # ---- values ------------------------------------------------------------------------

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:  # type: ignore[override]
        """The float tensor the codes stand for, computed as tract computes it.

        >>> from t2n_quant import quantize_tensor
        >>> quantize_tensor(torch.ones(2, 32), "q4_0").dequantize()[0, :3]
        tensor([1., 1., 1.])
        """
        dtype = dtype or self.dtype
        if self.numel() == 0:
            return torch.empty(self.shape, dtype=dtype, device=self.packed.device)
        # a slab of rows at a time: a large weight (an LM head) costs its float size, not
        # several float-sized temporaries
        bs, per_row = self.block_size, self.k // self.block_size
        out = torch.empty(self.rows, self.k, dtype=dtype, device=self.packed.device)
        step = max(1, _DEQUANT_SLAB_VALUES // self.k)
        for r0 in range(0, self.rows, step):
            r1 = min(self.rows, r0 + step)
            b0, b1 = r0 * per_row, r1 * per_row
            zero = None if self.zero is None else self.zero[b0:b1]
            stored = QParams(self.scale[b0:b1], zero)
            if dtype == torch.float32:
                rows = out[r0:r1].view(b1 - b0, bs)
                self.codec.dequantize_packed(self.packed[b0:b1], stored, bs, rows)
                continue
            codes = self.codec.unpack(self.packed[b0:b1], bs)
            values = self.codec.dequantize_blocks(codes, stored)
            out[r0:r1] = values.reshape(r1 - r0, self.k)
        return out.reshape(self.shape)

    def numpy(self, *, force: bool = False) -> Any:  # type: ignore[override]
        """``self.dequantize().numpy()``."""
        return self.dequantize().numpy(force=force)

    def tolist(self) -> Any:  # type: ignore[override]
        """``self.dequantize().tolist()``."""
        return self.dequantize().tolist()

    def dequantize_rows(self, index: torch.Tensor) -> torch.Tensor:
        """``dequantize()[index]`` for a rank-2 tensor, dequantizing only those rows."""
        per_row = self.k // self.block_size
        flat = index.reshape(-1)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(self.rows, per_row, -1)[flat].reshape(flat.numel() * per_row, -1)

        zero = None if self.zero is None else pick(self.zero)
        codes = self.codec.unpack(pick(self.packed), self.block_size)
        values = self.codec.dequantize_blocks(codes, QParams(pick(self.scale), zero))
        return values.reshape(*index.shape, self.k).to(self.dtype)

    def with_inner(self, fn: Callable[[torch.Tensor], torch.Tensor], **changes: Any) -> QTensor:
        """A new QTensor whose inner tensors are ``fn(inner)`` (logical dtype may change)."""
        zero = None if self.zero is None else fn(self.zero)
        return QTensor(
            self.codec, fn(self.packed), fn(self.scale), zero, self.shape,
            changes.get("dtype", self.dtype), self.tensor_name,
        )  # fmt: skip

    # ---- immutability ------------------------------------------------------------------

    @property  # type: ignore[override]
    def data(self) -> QTensor:
        return self.detach()

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        raise ImmutableTensorError(
            f"{self.label()} is immutable: '.data =' is not allowed. Quantize the new "
            "float weight with quantize_tensor() and assign it to the module instead."
        )

    def requires_grad_(self, requires_grad: bool = True) -> QTensor:
        """A no-op: a QTensor holds frozen weights and never requires grad.

        ``nn.Parameter(qtensor)`` and ``load_state_dict(..., assign=True)`` call this with
        ``True``; the tensor stays ``requires_grad=False`` (train float weights instead).
        """
        if requires_grad:
            logger.debug("%s stays requires_grad=False (frozen quantized weights)", self.label())
        return self

    # ---- torch integration -------------------------------------------------------------

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        handler = cls.ops.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        return fallback(func, args, kwargs)

    def __tensor_flatten__(self) -> tuple[list[str], tuple[Any, ...]]:
        names = ["packed", "scale"] + ([] if self.zero is None else ["zero"])
        return names, (self.codec, self.dtype, self.tensor_name)

    @staticmethod
    def __tensor_unflatten__(
        inner: dict[str, torch.Tensor], ctx: tuple[Any, ...], outer_size: Any, outer_stride: Any
    ) -> QTensor:
        codec, dtype, name = ctx
        return QTensor(
            codec, inner["packed"], inner["scale"], inner.get("zero"), outer_size, dtype, name
        )

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        name = f", name={self.tensor_name!r}" if self.tensor_name else ""
        return (
            f"QTensor({self.codec.spec}, {self.bits_per_weight:.4g} bits/weight, "
            f"shape={tuple(self.shape)}, dtype={self.dtype}{name})"
        )

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        is_param = bool(getattr(self, "_is_param", False))
        return (
            _rebuild,
            (self.codec, self.packed, self.scale, self.zero, tuple(self.shape), self.dtype,
             self.tensor_name, is_param),
        )  # fmt: skip

    def __deepcopy__(self, memo: dict[int, Any]) -> QTensor:
        if id(self) in memo:
            return memo[id(self)]
        new = self.with_inner(torch.clone)
        if getattr(self, "_is_param", False):
            new._is_param = True  # type: ignore[attr-defined]
        memo[id(self)] = new
        return new

    # ---- storage protocol (t2n_core.storage) -------------------------------------------

    def nnef_encoding(self, label: str) -> Encoding:
        """The ``.dat`` payloads, fragments and call that write this tensor to NNEF."""
        from t2n_quant.encoders import encoder_for

        return encoder_for(self.codec)(self, label)

    def nnef_slice_rows(self, begin: int, end: int) -> QTensor:
        """Rows ``begin:end`` (dim 0), still encoded, for the writer's row-slice folding.

        Blocks never cross rows, so this cuts the codes, scales and zero points of those rows
        without re-quantizing (for Q4_0: a byte range of the payload).

        >>> from t2n_quant import quantize_tensor
        >>> q = quantize_tensor(torch.randn(6, 64), "q4_0")
        >>> torch.equal(q.nnef_slice_rows(2, 5).dequantize(), q.dequantize()[2:5])
        True
        """
        if not 0 <= begin < end <= self.rows:
            raise ValueError(f"rows {begin}:{end} out of range for {self.rows} rows")
        per_row = self.k // self.block_size

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[begin * per_row : end * per_row]

        zero = None if self.zero is None else cut(self.zero)
        name = f"{self.tensor_name}.rows_{begin}_{end}" if self.tensor_name else None
        shape = (end - begin, *self.shape[1:])
        return QTensor(self.codec, cut(self.packed), cut(self.scale), zero, shape, self.dtype, name)

    def nnef_slice_cols(self, begin: int, end: int) -> QTensor | None:
        """Indices ``begin:end`` of dim 1, still encoded, when they cut whole blocks.

        Dims 1.. of a row are laid out in order, so ``[:, begin:end]`` is a contiguous run
        of each row; ``None`` when that run does not start and end on block boundaries.

        >>> from t2n_quant import quantize_tensor
        >>> q = quantize_tensor(torch.randn(3, 4, 16), "q4_0")
        >>> torch.equal(q.nnef_slice_cols(2, 4).dequantize(), q.dequantize()[:, 2:4])
        True
        """
        if self.dim() < 2 or not 0 <= begin < end <= self.shape[1]:
            raise ValueError(f"columns {begin}:{end} out of range for shape {tuple(self.shape)}")
        inner = math.prod(self.shape[2:])
        bs = self.block_size
        shape = (self.shape[0], end - begin, *self.shape[2:])
        if (begin * inner) % bs or (end * inner) % bs:
            return None
        if self.codec.block_size(math.prod(shape[1:])) != bs:
            return None
        per_row = self.k // bs
        b0, b1 = begin * inner // bs, end * inner // bs

        def cut(t: torch.Tensor) -> torch.Tensor:
            picked = t.reshape(self.rows, per_row, -1)[:, b0:b1]
            return picked.reshape(self.rows * (b1 - b0), -1).contiguous()

        zero = None if self.zero is None else cut(self.zero)
        return QTensor(self.codec, cut(self.packed), cut(self.scale), zero, shape, self.dtype,
                       self.tensor_name)  # fmt: skip

    def nnef_fragment_view(self) -> QTensor | None:
        """The same values in a fragment codec that tract decodes to float at load (for uses
        tract cannot run on the native type), or ``None`` when the codec has no such twin.

        >>> from t2n_quant import quantize_tensor
        >>> q = quantize_tensor(torch.randn(4, 64), "q4_0")
        >>> v = q.nnef_fragment_view()
        >>> v.codec.spec, torch.equal(v.dequantize(), q.dequantize())
        ('symmetric:4:g32', True)
        """
        twin = getattr(self.codec, "fragment_twin", None)
        if twin is None:
            return None
        codec = twin()
        codes = self.codec.unpack(self.packed, self.block_size)
        return QTensor(codec, codec.pack(codes), self.scale, self.zero, self.shape, self.dtype,
                       self.tensor_name)  # fmt: skip

    def nnef_scale_rows(self, factors: torch.Tensor) -> QTensor | None:
        """Row ``r`` multiplied by ``factors[r]``, still encoded and exact (for folding a
        batch norm).

        ``value = (code - zero) * scale`` is linear in the block scale, so this scales the
        block scales of each row and keeps the codes. ``None`` unless every scaled block
        scale is exact in the stored scale dtype (a power-of-two factor, say): a rounded
        scale would make the weight differ from the model's by up to half an ulp of f16,
        more than an export's check tolerates.

        >>> from t2n_quant import quantize_tensor
        >>> q = quantize_tensor(torch.randn(2, 64), "q4_0")
        >>> f = torch.tensor([2.0, -0.5])
        >>> torch.equal(q.nnef_scale_rows(f).dequantize(), q.dequantize() * f[:, None])
        True
        >>> q.nnef_scale_rows(torch.tensor([1.1, 1.0])) is None
        True
        """
        factors = factors.reshape(-1).to(torch.float32)
        if factors.numel() != self.rows:
            raise ValueError(f"{factors.numel()} factors for {self.rows} rows")
        per_row = self.k // self.block_size
        per_block = factors.repeat_interleave(per_row).reshape(self.scale.shape)
        wanted = self.scale.double() * per_block.double()
        scaled = wanted.to(self.scale.dtype)
        if not torch.isfinite(scaled).all() or not torch.equal(scaled.double(), wanted):
            return None
        return QTensor(
            self.codec, self.packed, scaled, self.zero, self.shape, self.dtype, self.tensor_name
        )

    def nnef_reshape(self, shape: tuple[int, ...]) -> QTensor | None:
        """The same codes seen with ``shape`` (same number of values), for the writer's
        reshape folding; ``None`` when the blocks would not line up with the new rows.

        >>> from t2n_quant import quantize_tensor
        >>> q = quantize_tensor(torch.randn(1, 4, 64), "q4_0")
        >>> torch.equal(q.nnef_reshape((4, 64)).dequantize(), q.dequantize()[0])
        True
        """
        shape = tuple(int(d) for d in shape)
        if math.prod(shape) != self.numel() or len(shape) < 2:
            return None
        k = math.prod(shape[1:])
        if self.codec.block_size(k) != self.block_size or k % self.block_size:
            return None
        name = self.tensor_name
        return QTensor(self.codec, self.packed, self.scale, self.zero, shape, self.dtype, name)

    def nnef_float_proxy(self) -> torch.Tensor:
        """A plain tensor of this shape and dtype, used in place of this one while capturing.

        ``torch.export`` only reads shapes and dtypes of parameters, so the proxy is left
        uninitialised: its pages are never touched and cost no resident memory, where a
        dequantized copy of every weight would cost the whole f32 model again.
        """
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)


def _rebuild(
    codec: Codec,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    name: str | None,
    is_param: bool,
) -> QTensor:
    t = QTensor(codec, packed, scale, zero, shape, dtype, name)
    if is_param:
        t._is_param = True  # type: ignore[attr-defined]
    return t


def written_qtensors(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[QTensor]:
    """The QTensor arguments that ``func`` would write into, from its schema."""
    written = []
    for i, arg in enumerate(func._schema.arguments):
        info = arg.alias_info
        if info is None or not info.is_write:
            continue
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        written += [v for v in values if isinstance(v, QTensor)]
    return written


def fallback(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``func`` on dequantized copies of the QTensor arguments."""
    written = written_qtensors(func, args, kwargs)
    if written:
        raise ImmutableTensorError(
            f"{written[0].label()} is immutable: {func} would modify it in place. "
            "Work on qtensor.dequantize() or quantize a new weight instead (to load a "
            "state dict into a quantized model, use load_state_dict(..., assign=True))."
        )
    logger.debug("QTensor fallback: %s runs on dequantized weights", func)
    args, kwargs = tree_map_only(QTensor, lambda t: t.dequantize(), (args, kwargs))
    return func(*args, **kwargs)

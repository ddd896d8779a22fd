"""The :class:`Codec` base class, its registry, and :class:`QParams`.

A codec is pure math on torch tensors, on an ``(n_blocks, block_size)`` view of a weight:
the weight is read as ``rows = dim 0`` by ``k = product of the other dims`` (row-major),
and each row is cut into blocks of ``block_size`` consecutive values. A codec turns a
block of floats plus its :class:`QParams` into unsigned integer codes, packs codes into
bytes, and computes ``value = (code - zero) * scale`` back. It never chooses the
parameters (that is a calibration's job), never writes files and knows no engine.

Codecs register by subclassing with a name::

    @dataclass(frozen=True)
    class MyCodec(Codec, name="mine"):
        ...
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from t2n_quant.errors import IncompatibleShapeError, UnknownCodecError


@dataclass(frozen=True)
class QParams:
    """Per-block parameters of ``value = (code - zero) * scale``.

    ``scale`` and ``zero`` are columns of shape ``(n_blocks, 1)``. A calibration returns
    them as float32; :meth:`Codec.store` converts them to the stored dtype (f16).
    ``zero`` is ``None`` when the codec's zero point is a constant (:attr:`Codec.offset`).

    >>> QParams(torch.ones(4, 1)).scale.shape
    torch.Size([4, 1])
    """

    scale: torch.Tensor
    zero: torch.Tensor | None = None


class Codec(ABC):
    """Base of every codec; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Codec]]] = {}
    has_zero: ClassVar[bool] = False
    #: how min-max calibration picks a symmetric scale: "absmax" (largest magnitude to the
    #: top code) or "signed_max" (ggml: the signed value of largest magnitude to code 0)
    scale_rule: ClassVar[str] = "absmax"
    storage_dtype: ClassVar[torch.dtype] = torch.float16

    bits: int
    group_size: int | None

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if name in Codec.registry:
            raise TypeError(f"codec name {name!r} is already taken by {Codec.registry[name]}")
        cls.name = name
        Codec.registry[name] = cls

    @classmethod
    def create(cls, name: str, **options: Any) -> Codec:
        """The registered codec ``name`` built with ``options``.

        >>> Codec.create("minmax", bits=3, group_size=64).spec
        'minmax:3:g64'
        """
        try:
            codec_cls = Codec.registry[name]
        except KeyError:
            raise UnknownCodecError(
                f"unknown codec {name!r}; registered codecs: {sorted(Codec.registry)}"
            ) from None
        return codec_cls(**options)

    # ---- description -------------------------------------------------------------------

    @property
    @abstractmethod
    def spec(self) -> str:
        """Short text that :func:`t2n_quant.config.parse_spec` reads back."""

    @property
    def qmax(self) -> int:
        """Largest stored code (codes are ``0 .. qmax``)."""
        return (1 << self.bits) - 1

    @property
    def offset(self) -> int | None:
        """The constant zero point of a symmetric codec; ``None`` when zero is stored."""
        return None if self.has_zero else 1 << (self.bits - 1)

    def __str__(self) -> str:
        return self.spec

    # ---- shapes ------------------------------------------------------------------------

    def block_size(self, k: int) -> int:
        """Values per block for rows of ``k`` values (the whole row when per-channel)."""
        return k if self.group_size is None else self.group_size

    def incompatibility(self, shape: tuple[int, ...]) -> str | None:
        """Why this codec cannot take a weight of ``shape``, or ``None`` if it can."""
        if len(shape) < 2:
            return f"rank {len(shape)} < 2 (codecs work on rows = dim 0 by k = the other dims)"
        k = math.prod(shape[1:])
        if k == 0 or shape[0] == 0:
            return "empty tensor"
        bs = self.block_size(k)
        if k % bs:
            return f"k = {k} (product of dims 1..) is not a multiple of the group size {bs}"
        return None

    def check_shape(self, shape: tuple[int, ...], name: str | None = None) -> None:
        """Raise :class:`IncompatibleShapeError` if :meth:`incompatibility` finds a reason."""
        reason = self.incompatibility(tuple(shape))
        if reason is not None:
            where = f"tensor {name!r}" if name else "tensor"
            raise IncompatibleShapeError(
                f"{self.spec} cannot quantize {where} of shape {tuple(shape)}: {reason}"
            )

    @abstractmethod
    def bytes_per_block(self, block_size: int) -> int:
        """Packed code bytes per block (scales and zero points not included)."""

    # ---- math --------------------------------------------------------------------------

    def store(self, params: QParams) -> QParams:
        """``params`` in the dtype they are stored with (f16)."""
        zero = None if params.zero is None else params.zero.to(self.storage_dtype)
        return QParams(params.scale.to(self.storage_dtype), zero)

    @abstractmethod
    def quantize_blocks(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        """``(n_blocks, block_size)`` float32 -> uint8 codes of the same shape."""

    @abstractmethod
    def dequantize_blocks(self, codes: torch.Tensor, stored: QParams) -> torch.Tensor:
        """uint8 codes and stored parameters -> float32 values, as tract computes them."""

    @abstractmethod
    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """``(n_blocks, block_size)`` codes -> ``(n_blocks, bytes_per_block)`` uint8."""

    @abstractmethod
    def unpack(self, packed: torch.Tensor, block_size: int) -> torch.Tensor:
        """Inverse of :meth:`pack`."""

    def fake_quantize(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        """Quantize then dequantize with stored parameters (what the weight becomes).

        >>> c = Codec.create("symmetric", bits=8, group_size=16)
        >>> x = torch.linspace(-1, 1, 16).reshape(1, 16)
        >>> bool((c.fake_quantize(x, QParams(torch.full((1, 1), 1 / 127))) - x).abs().max() < 0.01)
        True
        """
        return self.dequantize_blocks(self.quantize_blocks(blocks, params), self.store(params))

"""The :class:`Codec` base class, its registry, and :class:`QParams`.

A codec is pure math on torch tensors, on an ``(n_blocks, block_size)`` view of a weight:
the weight is read as ``rows = dim 0`` by ``k = product of the other dims`` (row-major),
and each row is cut into blocks of ``block_size`` consecutive values. A codec turns a
block of floats plus its :class:`QParams` into unsigned integer codes, packs codes into
bytes, and computes ``value = (code - zero) * scale`` back. It never chooses the
parameters (that is a calibration's job), never writes files and knows no engine.

Codecs register by subclassing with a name (and optional spec aliases)::

    @dataclass(frozen=True)
    class MyCodec(Codec, name="mine", aliases=("my",)):
        ...

The registry is the one source of truth: spec strings (:meth:`Codec.from_spec`), option
overrides (:meth:`Codec.with_options`), calibration scale rules (:meth:`Codec.levels`) and
encoder lookup (:func:`t2n_quant.encoders.encoder_for`) all derive from the codec class, so a
new codec is one module in ``t2n_quant/codecs/`` plus one in ``t2n_quant/encoders/``; both
packages import their modules on import.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from t2n_quant.errors import (
    ConfigSpecError,
    FixedCodecOptionError,
    IncompatibleShapeError,
    UnknownCodecError,
    UnsupportedCodecOptionError,
)

SPEC_GRAMMAR = (
    "codec[:bits][:group], e.g. 'q4_0', 'minmax:4:g32', 'symmetric:8:pc', 'nf4:g64'; "
    "group: g<N> (or <N> after bits), or pc / per-channel / -1 for one group per row"
)
_PER_ROW = ("pc", "per-channel", "per_channel", "-1", "none")


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
    #: other names a spec may use for a codec (``"sym"`` for ``"symmetric"``)
    alias_of: ClassVar[dict[str, str]] = {}
    has_zero: ClassVar[bool] = False
    #: how min-max calibration picks the scale of a codec without a stored zero point:
    #: "absmax" (largest magnitude onto the largest level of :meth:`levels`) or "signed_max"
    #: (ggml: the signed value of largest magnitude onto the smallest, most negative level)
    scale_rule: ClassVar[str] = "absmax"
    storage_dtype: ClassVar[torch.dtype] = torch.float16

    bits: int
    group_size: int | None

    def __init_subclass__(
        cls, *, name: str | None = None, aliases: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        for key in (name, *aliases):
            if key in Codec.registry or key in Codec.alias_of:
                taken = Codec.registry.get(key) or Codec.alias_of[key]
                raise TypeError(f"codec name {key!r} is already taken by {taken}")
        cls.name = name
        Codec.registry[name] = cls
        Codec.alias_of.update({a: name for a in aliases})

    @classmethod
    def lookup(cls, name: str) -> type[Codec]:
        """The codec class registered as ``name`` (or one of its aliases).

        >>> Codec.lookup("sym").name
        'symmetric'
        """
        key = Codec.alias_of.get(name, name)
        try:
            return Codec.registry[key]
        except KeyError:
            raise UnknownCodecError(
                f"unknown codec {name!r}; registered codecs: {sorted(Codec.registry)}"
                f" (aliases: {sorted(Codec.alias_of)})"
            ) from None

    @classmethod
    def create(cls, name: str, **options: Any) -> Codec:
        """The registered codec ``name`` built with ``options``.

        >>> Codec.create("minmax", bits=3, group_size=64).spec
        'minmax:3:g64'
        """
        return Codec.lookup(name)(**options)

    @classmethod
    def from_spec(cls, spec: str) -> Codec:
        """The codec a spec string names (grammar: :data:`SPEC_GRAMMAR`).

        >>> Codec.from_spec("minmax:3:g128").spec, Codec.from_spec("q4_0:4").spec
        ('minmax:3:g128', 'q4_0')
        """
        parts = spec.strip().lower().split(":")
        try:
            codec_cls = Codec.lookup(parts[0])
        except UnknownCodecError as e:
            raise ConfigSpecError(f"{e}, in spec {spec!r}; expected {SPEC_GRAMMAR}") from None
        if len(parts) > 3:
            raise ConfigSpecError(f"too many fields in spec {spec!r}; expected {SPEC_GRAMMAR}")
        options: dict[str, int] = {}
        for field in parts[1:]:
            is_group = field.startswith("g") or field in _PER_ROW
            if not is_group and "bits" not in options and "group_size" not in options:
                if not field.lstrip("b").isdigit():
                    raise ConfigSpecError(
                        f"bad bits {field!r} in spec {spec!r}; expected {SPEC_GRAMMAR}"
                    )
                options["bits"] = int(field.lstrip("b"))
            elif "group_size" not in options:
                options["group_size"] = _parse_group(field, spec)
            else:
                raise ConfigSpecError(
                    f"bad field {field!r} in spec {spec!r}; expected {SPEC_GRAMMAR}"
                )
        try:
            return codec_cls().with_options(**options)
        except UnsupportedCodecOptionError as e:
            raise type(e)(f"{e} (in spec {spec!r})") from None

    def with_options(self, **options: int | None) -> Codec:
        """This codec with the options given (``None`` keeps the current value).

        An option the codec fixes (q4_0's ``bits``) may only be given its fixed value;
        ``group_size=-1`` asks for one group per row.

        >>> Codec.create("minmax").with_options(bits=3, group_size=-1).spec
        'minmax:3:pc'
        """
        changes = {k: v for k, v in options.items() if v is not None}
        fields = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        for key, value in changes.items():
            if key in fields:
                continue
            if not hasattr(self, key):
                raise UnsupportedCodecOptionError(f"{self.name} has no option {key!r}")
            fixed = getattr(self, key)
            if value != fixed and not (key == "group_size" and value == -1 and fixed is None):
                fixed_opts = ", ".join(
                    f"{k}={getattr(self, k)}" for k in ("bits", "group_size") if k not in fields
                )
                raise FixedCodecOptionError(
                    f"{self.name} has fixed {fixed_opts}; got {key}={value}. Codecs with a "
                    f"choice of {key}: {_codes_with_field(key)}"
                )
        free = {k: v for k, v in changes.items() if k in fields}
        return dataclasses.replace(self, **free) if free else self  # type: ignore[type-var]

    def codec(self) -> Codec:
        """A codec is its own config (configs are anything with a ``codec()`` method)."""
        return self

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

    def levels(self) -> torch.Tensor:
        """The value of every code at scale 1, ``(2**bits,)`` float32 (codecs without zero).

        Calibrations derive their scale rules from it (absmax onto ``levels().max()``,
        ggml's signed max onto ``levels().min()``, HQQ's least-squares scale).

        >>> Codec.create("symmetric", bits=3).levels().tolist()
        [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
        """
        if self.has_zero:
            raise TypeError(f"{self.spec} stores a zero point per block; levels depend on it")
        codes = torch.arange(1 << self.bits, dtype=torch.uint8).reshape(1, -1)
        return self.dequantize_blocks(codes, QParams(torch.ones(1, 1))).reshape(-1)

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

    def dequantize_packed(
        self, packed: torch.Tensor, stored: QParams, block_size: int, out: torch.Tensor
    ) -> None:
        """:meth:`dequantize_blocks` of the :meth:`unpack`-ed ``packed`` written into ``out``
        (float32, ``(n_blocks, block_size)``), bit for bit; codecs may fuse the steps."""
        out.copy_(self.dequantize_blocks(self.unpack(packed, block_size), stored))

    def float_codes(
        self, blocks: torch.Tensor, params: QParams, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The codes of ``blocks`` as float32 ``q`` with ``value = (q - zero) * scale``: the
        stored codes for codecs with a zero point, their :meth:`levels` for the others
        (calibrations score and fit with them). ``out``, a float32 tensor of the blocks'
        shape, may hold the result (codecs that compute in place use it; others ignore it).

        >>> Codec.create("symmetric", bits=4, group_size=16).float_codes(
        ...     torch.full((1, 16), -1.0), QParams(torch.ones(1, 1)))[0, 0].item()
        -1.0
        """
        codes = self.quantize_blocks(blocks, params)
        return codes.float() if self.has_zero else self.levels()[codes.long()]

    def fake_quantize(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        """Quantize then dequantize with stored parameters (what the weight becomes).

        >>> c = Codec.create("symmetric", bits=8, group_size=16)
        >>> x = torch.linspace(-1, 1, 16).reshape(1, 16)
        >>> bool((c.fake_quantize(x, QParams(torch.full((1, 1), 1 / 127))) - x).abs().max() < 0.01)
        True
        """
        return self.dequantize_blocks(self.quantize_blocks(blocks, params), self.store(params))


def _parse_group(text: str, spec: str) -> int:
    t = text.lower()
    if t in _PER_ROW:
        return -1
    digits = t[1:] if t.startswith("g") else t
    if not digits.isdigit():
        raise ConfigSpecError(f"bad group {text!r} in spec {spec!r}; expected {SPEC_GRAMMAR}")
    return int(digits)


def _codes_with_field(key: str) -> list[str]:
    return sorted(
        name
        for name, cls in Codec.registry.items()
        if key in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    )

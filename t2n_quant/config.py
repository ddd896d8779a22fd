"""Quantization configs as small dataclasses, and the short spec strings that parse into them.

Spec grammar: ``codec[:bits[:group]]``, with ``group`` one of ``g32`` / ``32`` /
``pc`` / ``per-channel`` / ``-1``. Examples: ``"q4_0"``, ``"minmax:4:g32"``,
``"minmax:3:g128"``, ``"symmetric:8:pc"``, ``"sym:4"`` (group 32 by default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Union

from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, SymmetricCodec
from t2n_quant.errors import ConfigSpecError, UnsupportedCodecOptionError


@dataclass(frozen=True)
class Q4_0Config:
    """tract-native Q4_0: 4 bits, blocks of 32, f16 scale (4.5 bits per weight).

    >>> Q4_0Config().codec().spec
    'q4_0'
    """

    def codec(self) -> Codec:
        return Q4_0Codec()


@dataclass(frozen=True)
class MinMaxConfig:
    """Asymmetric codes, f16 scale + zero point per group (``group_size=None``: per row).

    >>> MinMaxConfig(bits=3, group_size=64).codec().spec
    'minmax:3:g64'
    """

    bits: int = 4
    group_size: int | None = 32

    def __post_init__(self) -> None:
        self.codec()  # validates bits and group size

    def codec(self) -> Codec:
        return MinMaxCodec(self.bits, self.group_size)


@dataclass(frozen=True)
class SymmetricConfig:
    """Symmetric codes, f16 scale per group (``group_size=None``: per row).

    >>> SymmetricConfig(bits=8, group_size=None).codec().spec
    'symmetric:8:pc'
    """

    bits: int = 4
    group_size: int | None = 32

    def __post_init__(self) -> None:
        self.codec()

    def codec(self) -> Codec:
        return SymmetricCodec(self.bits, self.group_size)


QuantConfig = Union[Q4_0Config, MinMaxConfig, SymmetricConfig]  # noqa: UP007

_NAMES: dict[str, type] = {
    "q4_0": Q4_0Config,
    "q4": Q4_0Config,
    "minmax": MinMaxConfig,
    "asym": MinMaxConfig,
    "symmetric": SymmetricConfig,
    "sym": SymmetricConfig,
}
_GRAMMAR = "codec[:bits[:group]], e.g. 'q4_0', 'minmax:4:g32', 'symmetric:8:pc'"


def _parse_group(text: str, spec: str) -> int | None:
    t = text.lower()
    if t in ("pc", "per-channel", "per_channel", "-1", "none"):
        return None
    digits = t[1:] if t.startswith("g") else t
    if not digits.isdigit():
        raise ConfigSpecError(f"bad group {text!r} in spec {spec!r}; expected {_GRAMMAR}")
    return int(digits)


def parse_spec(spec: str) -> QuantConfig:
    """The config a short spec string stands for.

    >>> parse_spec("minmax:3:g128")
    MinMaxConfig(bits=3, group_size=128)
    """
    parts = spec.strip().lower().split(":")
    cls = _NAMES.get(parts[0])
    if cls is None:
        raise ConfigSpecError(
            f"unknown codec {parts[0]!r} in spec {spec!r}; known: {sorted(set(_NAMES))}; "
            f"expected {_GRAMMAR}"
        )
    if cls is Q4_0Config:
        if len(parts) > 1 and parts[1:] not in (["4"], ["4", "g32"], ["4", "32"]):
            raise ConfigSpecError(f"q4_0 has fixed 4 bits and blocks of 32; got spec {spec!r}")
        return Q4_0Config()
    if len(parts) > 3:
        raise ConfigSpecError(f"too many fields in spec {spec!r}; expected {_GRAMMAR}")
    kwargs: dict[str, int | None] = {}
    if len(parts) > 1:
        if not parts[1].lstrip("b").isdigit():
            raise ConfigSpecError(f"bad bits {parts[1]!r} in spec {spec!r}; expected {_GRAMMAR}")
        kwargs["bits"] = int(parts[1].lstrip("b"))
    if len(parts) > 2:
        kwargs["group_size"] = _parse_group(parts[2], spec)
    return cls(**kwargs)


def resolve(
    codec_or_config: str | QuantConfig | Codec,
    *,
    bits: int | None = None,
    group_size: int | None = None,
) -> Codec:
    """The codec for a spec, config or codec, with ``bits`` / ``group_size`` overriding.

    ``None`` keeps the config's value; ``group_size=-1`` asks for one group per row.

    >>> resolve("minmax", bits=2, group_size=-1).spec
    'minmax:2:pc'
    """
    if isinstance(codec_or_config, Codec):
        config: object = codec_or_config
        if bits is None and group_size is None:
            return codec_or_config
    elif isinstance(codec_or_config, str):
        config = parse_spec(codec_or_config)
    else:
        config = codec_or_config
    if isinstance(config, Q4_0Config) or isinstance(config, Q4_0Codec):
        if bits not in (None, 4) or group_size not in (None, 32):
            raise UnsupportedCodecOptionError(
                f"q4_0 has fixed bits=4 and group_size=32; got bits={bits}, "
                f"group_size={group_size}. Use 'minmax' or 'symmetric' for other choices."
            )
        return Q4_0Codec()
    changes: dict[str, int | None] = {}
    if bits is not None:
        changes["bits"] = bits
    if group_size is not None:
        changes["group_size"] = group_size
    if isinstance(config, Codec):
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]
    if not hasattr(config, "codec"):
        raise ConfigSpecError(f"expected a spec string, a config or a codec; got {config!r}")
    return dataclasses.replace(config, **changes).codec()  # type: ignore[type-var]

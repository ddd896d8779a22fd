"""Quantization configs as small dataclasses, and the short spec strings that parse into them.

Spec grammar: ``codec[:bits[:group]]``, with ``group`` one of ``g32`` / ``32`` /
``pc`` / ``per-channel`` / ``-1``. Examples: ``"q4_0"``, ``"minmax:4:g32"``,
``"minmax:3:g128"``, ``"symmetric:8:pc"``, ``"sym:4"`` (group 32 by default), ``"nf4:4:g64"``.
Codec names, aliases and options come from the codec registry
(:meth:`t2n_quant.codecs.Codec.from_spec`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Union

from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, SymmetricCodec
from t2n_quant.errors import ConfigSpecError


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


QuantConfig = Union[Q4_0Config, MinMaxConfig, SymmetricConfig, Codec]  # noqa: UP007

#: the dataclass config of a codec class, where one exists (other codecs are their own config)
_CONFIG_OF: dict[type[Codec], type] = {
    Q4_0Codec: Q4_0Config, MinMaxCodec: MinMaxConfig, SymmetricCodec: SymmetricConfig,
}  # fmt: skip


def parse_spec(spec: str) -> QuantConfig:
    """The config a short spec string stands for (grammar: :data:`SPEC_GRAMMAR`).

    Codecs come from the codec registry; a codec without a config class of its own
    parses to the codec itself.

    >>> parse_spec("minmax:3:g128")
    MinMaxConfig(bits=3, group_size=128)
    """
    codec = Codec.from_spec(spec)
    config_cls = _CONFIG_OF.get(type(codec))
    if config_cls is None:
        return codec
    fields = {f.name: getattr(codec, f.name) for f in dataclasses.fields(config_cls)}
    return config_cls(**fields)  # type: ignore[no-any-return]


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
    if isinstance(codec_or_config, str):
        codec = Codec.from_spec(codec_or_config)
    elif hasattr(codec_or_config, "codec"):
        codec = codec_or_config.codec()
    else:
        raise ConfigSpecError(
            f"expected a spec string, a config or a codec; got {codec_or_config!r}"
        )
    return codec.with_options(bits=bits, group_size=group_size)

"""Configs as dataclasses, and spec strings that parse into them."""

from __future__ import annotations

import pytest

from t2n_quant import MinMaxConfig, Q4_0Config, SymmetricConfig, parse_spec
from t2n_quant.codecs import MinMaxCodec, Q4_0Codec
from t2n_quant.config import resolve
from t2n_quant.errors import ConfigSpecError, UnsupportedCodecOptionError


@pytest.mark.parametrize(
    ("spec", "config"),
    [
        ("q4_0", Q4_0Config()),
        ("Q4_0", Q4_0Config()),
        ("minmax", MinMaxConfig()),
        ("minmax:3", MinMaxConfig(3, 32)),
        ("minmax:2:g128", MinMaxConfig(2, 128)),
        ("minmax:4:64", MinMaxConfig(4, 64)),
        ("minmax:8:pc", MinMaxConfig(8, None)),
        ("symmetric:5:per-channel", SymmetricConfig(5, None)),
        ("sym:6:-1", SymmetricConfig(6, None)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_parse(spec: str, config: object) -> None:
    assert parse_spec(spec) == config


@pytest.mark.parametrize("spec", ["q3_k", "minmax:x", "minmax:4:gx", "minmax:4:32:1", "q4_0:8"])
def test_bad_spec(spec: str) -> None:
    with pytest.raises(ConfigSpecError, match="spec"):
        parse_spec(spec)


def test_invalid_options_in_spec_list_allowed() -> None:
    with pytest.raises(UnsupportedCodecOptionError, match="allowed values"):
        parse_spec("minmax:7")
    with pytest.raises(UnsupportedCodecOptionError, match="allowed values"):
        MinMaxConfig(bits=4, group_size=100)


def test_resolve_overrides() -> None:
    assert resolve("minmax", bits=3, group_size=-1) == MinMaxCodec(3, None)
    assert resolve("minmax:4:pc", group_size=None) == MinMaxCodec(4, None)
    assert resolve(MinMaxConfig(4, 32), group_size=128) == MinMaxCodec(4, 128)
    assert resolve(MinMaxCodec(2, 16), bits=4) == MinMaxCodec(4, 16)
    assert resolve(Q4_0Config()) == Q4_0Codec()
    assert resolve("q4_0", bits=4, group_size=32) == Q4_0Codec()
    with pytest.raises(UnsupportedCodecOptionError, match="fixed"):
        resolve("q4_0", bits=3)

"""Codec classes: registry, options, shapes and the dequantization formula."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from t2n_core.errors import T2NError
from t2n_quant import QParams, quantize_tensor
from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, SymmetricCodec
from t2n_quant.errors import (
    IncompatibleShapeError,
    UnknownCodecError,
    UnsupportedCodecOptionError,
)


def test_registry_by_subclassing() -> None:
    assert {"q4_0", "minmax", "symmetric"} <= set(Codec.registry)
    assert Codec.create("symmetric", bits=2, group_size=None) == SymmetricCodec(2, None)
    with pytest.raises(UnknownCodecError, match="registered codecs"):
        Codec.create("q3_k")
    with pytest.raises(TypeError, match="already taken"):

        @dataclass(frozen=True)
        class Again(Q4_0Codec, name="q4_0"):
            pass


@pytest.mark.parametrize("bits", [1, 7, 16])
def test_unsupported_bits(bits: int) -> None:
    with pytest.raises(UnsupportedCodecOptionError, match=r"allowed values: \[2, 3, 4, 5, 6, 8\]"):
        MinMaxCodec(bits=bits)
    with pytest.raises(ValueError):  # catchable as the builtin too
        SymmetricCodec(bits=bits)


@pytest.mark.parametrize("group", [0, 8, 48, 512, True])
def test_unsupported_group_size(group: int) -> None:
    with pytest.raises(UnsupportedCodecOptionError, match=r"\[16, 32, 64, 128, 256\]"):
        MinMaxCodec(bits=4, group_size=group)


def test_per_channel_spellings() -> None:
    assert MinMaxCodec(4, -1).group_size is None
    assert MinMaxCodec(4, None).spec == "minmax:4:pc"
    assert MinMaxCodec(4, None).block_size(100) == 100


def test_shape_reasons() -> None:
    q4 = Q4_0Codec()
    assert q4.incompatibility((64, 64)) is None
    assert "multiple of the group size 32" in q4.incompatibility((64, 48))
    assert "rank 1" in q4.incompatibility((64,))
    assert q4.incompatibility((8, 2, 4, 4)) is None  # k = 32 across dims
    with pytest.raises(IncompatibleShapeError, match=r"'fc.weight'") as info:
        q4.check_shape((10, 33), "fc.weight")
    assert isinstance(info.value, T2NError)
    assert MinMaxCodec(3, None).incompatibility((5, 7)) is None


@pytest.mark.parametrize(
    ("spec", "bpw"),
    [("q4_0", 4.5), ("minmax:4:g32", 5.0), ("symmetric:4:g32", 4.5), ("minmax:2:g128", 2.25),
     ("symmetric:3:g64", 3.25), ("minmax:8:pc", 8.0 + 32 / 256)],
)  # fmt: skip
def test_bits_per_weight(spec: str, bpw: float) -> None:
    qt = quantize_tensor(torch.randn(64, 256), spec)
    assert qt.bits_per_weight == pytest.approx(bpw)
    assert qt.nbytes == pytest.approx(64 * 256 * bpw / 8)


def test_dequantize_uses_stored_f16_params_in_order() -> None:
    codec = MinMaxCodec(bits=4, group_size=16)
    codes = torch.arange(16, dtype=torch.uint8).reshape(1, 16)
    stored = codec.store(QParams(torch.tensor([[0.1]]), torch.tensor([[7.3]])))
    assert stored.scale.dtype == stored.zero.dtype == torch.float16
    expected = (codes.float() - stored.zero.float()) * stored.scale.float()
    assert torch.equal(codec.dequantize_blocks(codes, stored), expected)
    sym = SymmetricCodec(bits=3, group_size=16)
    s = sym.store(QParams(torch.tensor([[0.1]])))
    assert torch.equal(
        sym.dequantize_blocks(codes % 8, s), ((codes % 8).float() - 4.0) * s.scale.float()
    )


def test_q4_0_quantize_rule() -> None:
    codec = Q4_0Codec()
    x = torch.tensor([[-8.0, 7.0, 0.0, 0.49, -0.51, 100.0] + [0.0] * 26])
    codes = codec.quantize_blocks(x, QParams(torch.tensor([[-1.0]])))
    # q = clamp(trunc(x / d + 8.5), 0, 15) with d = -1
    assert codes[0, :6].tolist() == [15, 1, 8, 8, 9, 0]
    zero_scale = codec.quantize_blocks(x, QParams(torch.zeros(1, 1)))
    assert bool((zero_scale == 8).all())


@pytest.mark.parametrize(
    "codec",
    [Q4_0Codec(), MinMaxCodec(3, 16), MinMaxCodec(8, None), SymmetricCodec(5, 32)],
    ids=lambda c: c.spec,
)
def test_fast_fake_quantize_equals_round_trip(codec: Codec) -> None:
    from t2n_quant.calibration import calibrate

    blocks = torch.randn(64, codec.block_size(48), generator=torch.Generator().manual_seed(0))
    for method in ("minmax", "mse"):
        params = calibrate(codec, blocks / 3, method)  # most values get clipped
        slow = codec.dequantize_blocks(codec.quantize_blocks(blocks, params), codec.store(params))
        assert torch.equal(codec.fake_quantize(blocks, params), slow)


@pytest.mark.parametrize(
    "spec", ["q4_0", "minmax:3:g16", "minmax:8", "symmetric:5:g32", "minmax:4:g32"]
)
def test_dequantize_packed_equals_unpack_then_dequantize(spec: str) -> None:
    """QTensor.dequantize writes through ``dequantize_packed`` (fused for Q4_0): the same
    bits as unpacking the codes, then ``dequantize_blocks``."""
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(1)) * 3
    w[0, :32] = 0.0  # a block of zeros: scale 0
    q = quantize_tensor(w, spec)
    codes = q.codec.unpack(q.packed, q.block_size)
    slow = q.codec.dequantize_blocks(codes, QParams(q.scale, q.zero)).reshape(q.shape)
    assert torch.equal(q.dequantize(), slow)
    assert torch.equal(q.dequantize(torch.float16), slow.half())


def test_a_new_codec_is_one_class() -> None:
    """Spec parsing, option overrides, calibration and encoder lookup come from the class."""
    from t2n_quant import parse_spec, quantize_model
    from t2n_quant.config import resolve
    from t2n_quant.encoders import encoder_for

    @dataclass(frozen=True)
    class WideScale(SymmetricCodec, name="wide-test", aliases=("wt",)):
        storage_dtype = torch.float32

    try:
        codec = parse_spec("wt:3:g16")
        assert codec == WideScale(3, 16) and resolve(codec, group_size=-1) == WideScale(3, None)
        assert encoder_for(codec).__name__ == "encode_packed"
        model = torch.nn.Sequential(torch.nn.Linear(32, 8))
        w = model[0].weight.detach().clone()
        quantize_model(model, "wide-test:4:g16", progress=False)
        q = model[0].weight
        assert q.codec == WideScale(4, 16) and q.scale.dtype == torch.float32
        # absmax onto the top level 7, from the codec's levels: at most half a step of error
        assert bool(
            (
                (q.dequantize() - w).abs()
                <= q.scale.repeat_interleave(16, 0).reshape(8, 32) / 2 + 1e-7
            ).all()
        )
    finally:
        del Codec.registry["wide-test"], Codec.alias_of["wt"]

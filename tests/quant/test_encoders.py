"""What QTensor answers to the storage protocol: variables, fragments, call."""

from __future__ import annotations

import pytest
import torch

from t2n_core.nnef.dat import TractItemType
from t2n_core.storage import Encoding, NNEFStorage
from t2n_quant import quantize_tensor
from t2n_quant.codecs import SUPPORTED_BITS, Codec, MinMaxCodec, SymmetricCodec
from t2n_quant.encoders import ENCODERS, encoder_for
from t2n_quant.encoders.packed import dequant_fragment, unpack_fragment


def test_q4_0_single_native_variable() -> None:
    qt = quantize_tensor(torch.randn(64, 4, 8), "q4_0")
    assert isinstance(qt, NNEFStorage)
    enc = qt.nnef_encoding("conv.weight")
    assert isinstance(enc, Encoding) and enc.call is None and enc.fragments == {}
    (var,) = enc.variables
    assert var.suffix == "" and var.shape == (64, 4, 8) and var.dtype is None
    assert var.custom_item_type == TractItemType.Q4_0 == 0x3040
    assert len(var.data()) == 64 * 32 // 32 * 18


def test_minmax_variables_and_call() -> None:
    qt = quantize_tensor(torch.randn(6, 3, 64), "minmax:3:g32")
    enc = qt.nnef_encoding("w")
    assert [(v.suffix, v.dtype, v.shape) for v in enc.variables] == [
        ("_codes", torch.uint8, (6, 6, 4, 3)),
        ("_scale", torch.float16, (6, 6, 1)),
        ("_zero", torch.float16, (6, 6, 1)),
    ]
    assert len(enc.variables[0].data()) == 6 * 192 * 3 // 8
    assert enc.call == (
        "t2n_minmax_b3",
        ["_codes", "_scale", "_zero"],
        {"group_size": 32, "shape": [6, 3, 64], "dtype": "f32"},
    )
    assert set(enc.fragments) == {"t2n_minmax_b3", "t2n_unpack_lsb_b3"}
    assert enc.extensions == ("tract_registry tract_core",)


def test_symmetric_per_channel_padding() -> None:
    qt = quantize_tensor(torch.randn(5, 7).half(), "symmetric:4:pc")
    enc = qt.nnef_encoding("w")
    assert [v.suffix for v in enc.variables] == ["_codes", "_scale"]
    assert enc.variables[0].shape == (5, 1, 4, 1)  # 7 codes padded to 8, two per byte
    assert enc.call[2] == {"group_size": 7, "shape": [5, 7], "dtype": "f16"}


def test_one_fragment_per_codec_and_bits() -> None:
    a = quantize_tensor(torch.randn(4, 64), "minmax:4:g32").nnef_encoding("a")
    b = quantize_tensor(torch.randn(8, 128), "minmax:4:g128").nnef_encoding("b")
    assert a.fragments == b.fragments
    names = {dequant_fragment(c(bits=b))[0] for c in (MinMaxCodec, SymmetricCodec)
             for b in SUPPORTED_BITS}  # fmt: skip
    assert len(names) == 12
    assert len({unpack_fragment(b)[1] for b in SUPPORTED_BITS}) == 6


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_fragment_text_is_complete(bits: int) -> None:
    for codec in (MinMaxCodec(bits), SymmetricCodec(bits)):
        name, text = dequant_fragment(codec)
        assert f"fragment {name}(" in text and "$" not in text
    name, text = unpack_fragment(bits)
    assert f"fragment {name}(" in text and "$" not in text


def test_every_codec_has_an_encoder() -> None:
    for name, cls in Codec.registry.items():
        assert callable(encoder_for(cls())), name
    assert {"q4_0", "minmax", "symmetric"} <= set(ENCODERS)
    assert encoder_for(MinMaxCodec()).__name__ == "encode_packed"

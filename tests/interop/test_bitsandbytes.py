"""bitsandbytes layers -> QTensors bit-exact with bitsandbytes, exported and run in tract."""

from __future__ import annotations

import copy
from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.functional as bf
import numpy as np
import pytest
import torch
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from torch import nn

from t2n_quant.interop.bitsandbytes import (
    BitsAndBytesConversionError,
    convert_bitsandbytes,
    qtensor_from_4bit,
)
from tests.helpers import export_and_check
from tests.quant.qhelpers import run_tract

VARIANTS = [
    ("nf4", False, 64), ("nf4", True, 64), ("fp4", False, 64), ("fp4", True, 128),
    ("nf4", True, 32), ("fp4", False, 256),
]  # fmt: skip
IDS = [f"{q}-{'dq' if d else 'plain'}-b{b}" for q, d, b in VARIANTS]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize(("quant_type", "double", "blocksize"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_4bit_dequantization_is_bitsandbytes_own(quant_type, double, blocksize, dtype) -> None:
    w = (torch.randn(48, 256, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype)
    packed, qs = bf.quantize_4bit(
        w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double
    )
    qt = qtensor_from_4bit(packed, qs, "w")
    assert qt.codec.spec == f"{quant_type}:g{blocksize}" and qt.dtype == dtype
    assert torch.equal(_bits(qt.dequantize()), _bits(bf.dequantize_4bit(packed, qs)))


@pytest.mark.parametrize("shape", [(16, 96), (8, 32), (7, 200)], ids=str)
def test_4bit_blocks_across_rows(shape) -> None:
    """Blocks run over the flattened weight; ours are cut at row ends and keep their scale.

    bitsandbytes' CPU C kernel mis-reads such blocks (it assumes rows of whole blocks), so
    the reference is its pure PyTorch dequantization, the CUDA kernels' semantics.
    """
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    packed, qs = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    qt = qtensor_from_4bit(packed, qs, "w")
    absmax = bf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    ref = _dequantize_4bit_compute(packed.view(-1), absmax, qs.code, 64, qs.shape, torch.float32)
    assert torch.equal(qt.dequantize(), ref)
    assert (qt.dequantize() - w).abs().max() < 0.6 * w.abs().max()


class Net(nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        self.a, self.b, self.c = make(64, 128, True), make(128, 128, False), make(128, 32, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.nn.functional.gelu(self.a(x)))))


def _bnb_net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    ref = Net(nn.Linear)
    if kind == "int8":
        net = Net(lambda i, o, b: bnb.nn.Linear8bitLt(i, o, bias=b, has_fp16_weights=False))
    else:
        quant_type, double, blocksize = kind.split("-")

        def make(i: int, o: int, b: bool) -> nn.Module:
            layer = bnb.nn.Linear4bit(
                i, o, bias=b, quant_type=quant_type, compress_statistics=double == "dq",
                compute_dtype=torch.float32,
            )  # fmt: skip
            layer.weight.blocksize = int(blocksize)
            return layer

        net = Net(make)
    net.load_state_dict(ref.state_dict())
    return net.to("cpu")


def bnb_reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' dequantizing forward (training mode: no bf16 / int8 activation kernels)."""
    net.train()
    with torch.no_grad():
        y = net(x)
    net.eval()
    return y


#: block sizes divide every in_features here: bitsandbytes CPU kernel mis-reads blocks that
#: cross rows (see test_4bit_blocks_across_rows)
KINDS = ["nf4-plain-64", "nf4-dq-64", "fp4-plain-64", "fp4-dq-32", "nf4-dq-32", "int8"]


@pytest.mark.parametrize("kind", KINDS)
def test_bnb_model_in_tract(kind: str, tmp_path: Path) -> None:
    net = _bnb_net(kind)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    expected = bnb_reference(net, x)
    summary = convert_bitsandbytes(net)
    assert [layer.name for layer in summary.layers] == ["a", "b", "c"]
    assert all(type(m) is nn.Linear for m in (net.a, net.b, net.c))
    with torch.no_grad():
        assert torch.equal(net(x), expected)
    export_and_check(net.eval(), (x,), tmp_path, name="m.nnef")
    (got,) = run_tract(tmp_path / "m.nnef", [x.numpy()])
    assert np.abs(got - expected.numpy()).max() <= 1e-5 * np.abs(expected.numpy()).max()


def test_reencode_to_q4_0_reports_added_error(tmp_path: Path) -> None:
    net = _bnb_net("nf4-dq-64")
    exact = copy.deepcopy(net)
    convert_bitsandbytes(exact)
    summary = convert_bitsandbytes(net, reencode="q4_0")
    assert {layer.codec for layer in summary.layers} == {"q4_0"}
    for layer in summary.layers:
        assert layer.source == "nf4:g64" and 10 < layer.added_sqnr_db < 60
        ref = exact.get_submodule(layer.name).weight.dequantize()
        got = net.get_submodule(layer.name).weight.dequantize()
        assert layer.added_max_abs == pytest.approx(float((ref - got).abs().max()))
    assert "re-encoded" in str(summary) and "q4_0" in str(summary)
    result = export_and_check(net.eval(), (torch.randn(2, 64),), tmp_path, name="m.nnef")
    assert result.tensor_bytes.get("q4_0", 0) > 0


def test_unsupported_layer_named_and_model_unchanged() -> None:
    net = _bnb_net("nf4-plain-64")
    net.emb = bnb.nn.StableEmbedding(10, 64)
    with pytest.raises(BitsAndBytesConversionError, match="'emb' of type StableEmbedding"):
        convert_bitsandbytes(net)
    assert isinstance(net.a, bnb.nn.Linear4bit)
    del net.emb
    net.holder = nn.Module()
    net.holder.extra = net.b.weight  # a bitsandbytes parameter outside a bitsandbytes layer
    net.b = nn.Identity()
    with pytest.raises(BitsAndBytesConversionError, match=r"'extra'.*'holder'.*outside"):
        convert_bitsandbytes(net)


@pytest.mark.parametrize("kind", ["Embedding4bit", "Embedding8bit"])
def test_embeddings(kind: str, tmp_path: Path) -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = getattr(bnb.nn, kind)(100, 64)
            self.head = nn.Linear(64, 8)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(ids))

    torch.manual_seed(0)
    net = Tagger()
    net.emb.load_state_dict(nn.Embedding(100, 64).state_dict())
    net = net.to("cpu").eval()
    ids = torch.tensor([[3, 99, 0, 42]])
    with torch.no_grad():
        expected = net(ids)
    summary = convert_bitsandbytes(net)
    assert [x.bnb_type for x in summary.layers] == [kind] and type(net.emb) is nn.Embedding
    with torch.no_grad():
        assert torch.equal(net(ids), expected)  # bitsandbytes' own embedding forward
    export_and_check(net, (ids,), tmp_path, name="m.nnef")


def test_fp16_weights_int8_layer_refused() -> None:
    net = nn.Sequential(bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=True))
    with pytest.raises(BitsAndBytesConversionError, match=r"'0'.*has_fp16_weights"):
        convert_bitsandbytes(net)


def test_layer_repacked_for_the_avx512_bf16_kernel() -> None:
    """bitsandbytes' first eval forward on an AVX512-BF16 CPU repacks the codes and rounds
    the absmax to bf16, in place; the conversion reads that layout (forced here on any CPU)."""
    net = _bnb_net("nf4-dq-64")
    qs = net.b.weight.quant_state
    absmax = (bf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset).to(torch.bfloat16)
    ref = _dequantize_4bit_compute(
        net.b.weight.data.view(-1), absmax.float(), qs.code, 64, qs.shape, torch.float32
    )
    net.b.weight.data, _ = bf._convert_weight_packed_for_cpu(net.b.weight.data, qs)
    summary = convert_bitsandbytes(net)
    assert torch.equal(net.b.weight.dequantize(), ref)
    (note,) = summary.notes
    assert note.startswith("b: ") and "bf16" in note


def test_int8_threshold_is_reported() -> None:
    net = nn.Sequential(bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False, threshold=6.0))
    net = net.to("cpu")
    (note,) = convert_bitsandbytes(net).notes
    assert note.startswith("0: threshold=6.0")

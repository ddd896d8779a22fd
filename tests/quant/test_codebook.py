"""``nf4`` / ``fp4`` / ``int8`` codecs: quantization, spec round trip, and tract bit-exactness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from t2n_quant import QParams, parse_spec, quantize_model, quantize_tensor
from t2n_quant.codecs.codebook import FP4Codec, NF4Codec
from t2n_quant.errors import UnsupportedCodecOptionError
from tests.helpers import export_and_check
from tests.quant.qhelpers import export_weight, run_tract, sqnr_db

SPECS = ["nf4", "nf4:g32", "nf4:g48", "nf4:pc", "fp4:g64", "fp4:g128", "int8", "int8:8:g32"]


def weight(seed: int, k: int = 384) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, k, generator=g) * torch.rand(5, 1, generator=g)


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trip_and_accuracy(spec: str) -> None:
    codec = parse_spec(spec).codec()
    assert parse_spec(codec.spec).codec() == codec
    w = weight(1)
    qt = quantize_tensor(w, codec)
    assert qt.scale.dtype == torch.float32
    assert sqnr_db(w, qt.dequantize()) > (35.0 if codec.bits == 8 else 15.0)


def test_codebook_levels_and_nearest_code() -> None:
    nf4 = NF4Codec(group_size=16)
    levels = nf4.levels()
    codes = nf4.quantize_blocks(levels.reshape(1, 16), QParams(torch.ones(1, 1)))
    assert codes.tolist() == [list(range(16))]
    # halfway between two levels goes to the lower one; beyond +-1 clamps
    mid = (levels[3] + levels[4]).reshape(1, 1) / 2
    assert nf4.quantize_blocks(mid, QParams(torch.ones(1, 1))).item() == 3
    assert nf4.quantize_blocks(torch.tensor([[7.0]]), QParams(torch.ones(1, 1))).item() == 15
    fp4 = FP4Codec()
    assert sorted(fp4.levels().tolist())[0] == -1.0 and fp4.levels().max() == 1.0


def test_bad_block_size() -> None:
    with pytest.raises(UnsupportedCodecOptionError, match="block size"):
        NF4Codec(group_size=0)


@pytest.mark.parametrize("spec", ["nf4:g64", "nf4:g48", "fp4:g32", "fp4:pc", "int8", "int8:8:g16"])
def test_tract_bit_exact(spec: str, tmp_path: Path) -> None:
    qt = quantize_tensor(weight(2), spec)
    (out,) = run_tract(export_weight(qt, tmp_path / "w"))
    expected = qt.dequantize().numpy()
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("spec", ["nf4", "fp4:g32", "int8"])
def test_model_export(spec: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()
    quantize_model(model, spec, progress=False)
    result = export_and_check(model, (torch.randn(3, 64),), tmp_path, name="m.nnef")
    graph = (tmp_path / "m.nnef" / "graph.nnef").read_text()
    frag = "t2n_symmetric_b8" if spec == "int8" else "t2n_codebook_b4"
    assert f"fragment {frag}(" in graph and result.check.passed


def test_compare_ranks_nf4_fp4_beside_q4_0() -> None:
    from t2n_quant.compare import compare

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()
    specs = ["q4_0", "minmax:4:g32", "nf4:g32", "fp4:g32", "int8"]
    c = compare(model, torch.randn(8, 64), specs, calibrations=["minmax", "mse"], progress=False)
    assert sorted({r.spec for r in c.results}) == sorted(parse_spec(s).codec().spec for s in specs)
    assert c.best().spec == "int8:8:pc"
    assert c.best(max_bits=5.0).spec in {"q4_0", "nf4:g32", "fp4:g32", "minmax:4:g32"}

"""Calibrations return scales / zero points only, and better ones lower the error."""

from __future__ import annotations

import pytest
import torch

from t2n_quant import calibrate, quantize_tensor
from t2n_quant.calibration import CALIBRATIONS, get_calibration, register
from t2n_quant.calibration.mse import block_error
from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, QParams, SymmetricCodec
from t2n_quant.errors import UnknownCodecError
from tests.quant.qhelpers import MIN_SQNR_DB, sqnr_db

CODECS = [Q4_0Codec(), MinMaxCodec(4, 32), MinMaxCodec(2, 64), MinMaxCodec(3, None),
          SymmetricCodec(4, 32), SymmetricCodec(3, 16), SymmetricCodec(8, None)]  # fmt: skip
IDS = [c.spec for c in CODECS]


def heavy_tailed(n: int, k: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.distributions.StudentT(3.0).sample((n, k)) * 0.02


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize("method", ["minmax", "mse", "hqq"])
def test_returns_params_only(codec: Codec, method: str) -> None:
    blocks = torch.randn(40, codec.block_size(64))
    params = calibrate(codec, blocks, method)
    assert isinstance(params, QParams)
    assert params.scale.shape == (40, 1) and params.scale.dtype == torch.float32
    assert (params.zero is not None) == codec.has_zero
    assert torch.isfinite(params.scale).all()


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_hqq_never_worse_than_minmax_per_block(codec: Codec) -> None:
    torch.manual_seed(0)
    blocks = heavy_tailed(64, codec.block_size(64))
    base = block_error(codec, blocks, calibrate(codec, blocks, "minmax"), 2.0)
    hqq = block_error(codec, blocks, calibrate(codec, blocks, "hqq"), 2.0)
    assert bool((hqq <= base).all())


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize("method", ["mse", "hqq"])
def test_better_calibration_keeps_sqnr(codec: Codec, method: str) -> None:
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    base = sqnr_db(w, quantize_tensor(w, codec, calibration="minmax").dequantize())
    best = sqnr_db(w, quantize_tensor(w, codec, calibration=method).dequantize())
    assert best >= base >= MIN_SQNR_DB[codec.bits]


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_mse_never_worse_than_minmax_per_block(codec: Codec) -> None:
    blocks = heavy_tailed(128, codec.block_size(64), seed=3)
    base = block_error(codec, blocks, calibrate(codec, blocks, "minmax"), 2.0)
    mse = block_error(codec, blocks, calibrate(codec, blocks, "mse"), 2.0)
    assert bool((mse <= base).all())  # the min-max parameters are a candidate


def test_q4_0_mse_same_format_better_error() -> None:
    w = torch.randn(128, 512, generator=torch.Generator().manual_seed(1))
    a = quantize_tensor(w, "q4_0")
    b = quantize_tensor(w, "q4_0", calibration="mse")
    assert b.packed.shape == a.packed.shape and b.scale.dtype == torch.float16
    assert sqnr_db(w, b.dequantize()) > sqnr_db(w, a.dequantize()) + 0.3


def test_registry() -> None:
    assert {"minmax", "mse", "hqq"} <= set(CALIBRATIONS)
    with pytest.raises(UnknownCodecError, match="needs calibration data"):
        get_calibration("gptq")
    with pytest.raises(TypeError, match="already registered"):
        register("mse")(lambda codec, blocks: QParams(blocks[:, :1]))


def test_custom_callable() -> None:
    def fixed(codec: Codec, blocks: torch.Tensor) -> QParams:
        return QParams(torch.full((blocks.shape[0], 1), 0.5))

    qt = quantize_tensor(torch.ones(2, 32), "symmetric:4:g32", calibration=fixed)
    assert torch.equal(qt.scale, torch.full((2, 1), 0.5, dtype=torch.float16))
    assert torch.equal(qt.dequantize(), torch.ones(2, 32))


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_weighted_mse_fits_the_weighted_error(codec: Codec) -> None:
    from t2n_quant.calibration.mse import mse_search

    blocks = heavy_tailed(128, codec.block_size(64), seed=5)
    weights = torch.rand(1, blocks.shape[1], generator=torch.Generator().manual_seed(6)) ** 4

    def weighted(params: QParams) -> float:
        return float(((codec.fake_quantize(blocks, params) - blocks).square() * weights).sum())

    plain = weighted(mse_search(codec, blocks))
    assert weighted(mse_search(codec, blocks, weights=weights)) <= plain
    assert weighted(mse_search(codec, blocks, weights=weights)) <= weighted(
        calibrate(codec, blocks, "minmax"))

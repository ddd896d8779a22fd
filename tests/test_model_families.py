"""Model families (tiny Hugging Face configs, weights that make every output meaningful):
each exports, quantized with q4_0 plus a fallback codec for what q4_0 cannot take, and
matches PyTorch in tract, and so does its f32 export. Vision / encoder / audio families;
the LLM families have their own tests."""

from __future__ import annotations

import pytest
import torch

import t2n_core
from t2n_quant import quantize_model
from tests.families.zoo import FAMILIES
from tests.helpers import export_and_check

pytestmark = pytest.mark.slow

#: the share of quantizable weight bytes that must end up quantized (issue goal)
MIN_QUANTIZED = 0.95


def _reference(model, args) -> torch.Tensor:
    with torch.no_grad():
        out = model(*args)
    spread = float(out.std())
    assert spread > 1e-2, f"degenerate output (std {spread:.3g}): the check would test nothing"
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_q4_0_with_fallback_checks_in_tract(family: str, tmp_path) -> None:
    model, args = FAMILIES[family]()
    _reference(model, args)
    summary = quantize_model(model, "q4_0", fallback="minmax:4:pc", progress=False)
    assert summary.quantized_fraction >= MIN_QUANTIZED, str(summary)
    assert any(q.codec == "q4_0" for q in summary.quantized)
    _reference(model, args)
    result = export_and_check(model, args, tmp_path, atol=1e-3, rtol=1e-3)
    assert "q4_0" in result.tensor_bytes


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_f32_checks_in_tract(family: str, tmp_path) -> None:
    model, args = FAMILIES[family]()
    _reference(model, args)
    result = t2n_core.export(model, args, tmp_path / "m.nnef.tgz", check=True, atol=1e-4,
                             rtol=1e-4, progress=False)  # fmt: skip
    assert result.check is not None and result.check.passed, str(result.check)

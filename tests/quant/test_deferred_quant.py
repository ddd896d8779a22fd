"""quantize_model on streamed (DeferredTensor) weights: quantized when written or used, with
the codes quantize_tensor gives, a row range still deferred."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import t2n_core.deferred
from t2n_core.deferred import DeferredTensor
from t2n_quant import quantize_model, quantize_tensor
from t2n_quant.quantize import quantize_deferred


def reference(source: torch.Tensor, spec: str) -> torch.Tensor:
    qt = quantize_tensor(source.bfloat16(), spec)
    return qt.with_inner(lambda t: t, dtype=torch.float32).dequantize()


@pytest.mark.parametrize("spec", ["q4_0", "minmax:4:g32", "symmetric:3:g32", "nf4:4:g32"])
def test_quantize_model_defers_and_matches(spec, monkeypatch):
    monkeypatch.setattr(t2n_core.deferred, "FLOAT_SLAB_VALUES", 128)  # several slabs
    source = torch.randn(10, 64)
    reads: list[tuple[int, int]] = []

    def read(b: int, e: int) -> torch.Tensor:
        reads.append((b, e))
        return source[b:e].bfloat16()

    lin = nn.Linear(64, 10, bias=False)
    lin._parameters["weight"] = DeferredTensor(read, (10, 64), torch.float32, name="weight")
    summary = quantize_model(lin, spec, progress=False)
    assert not reads and [q.name for q in summary.quantized] == ["weight"]
    bits = {"q4_0": 4.5, "minmax:4:g32": 5.0, "symmetric:3:g32": 3.5, "nf4:4:g32": 5.0}[spec]
    assert summary.quantized[0].bits_per_weight == pytest.approx(bits)
    weight = lin.weight
    assert isinstance(weight, DeferredTensor) and weight.dtype == torch.float32
    x = torch.randn(3, 64)
    torch.testing.assert_close(weight.float_value(), reference(source, spec), rtol=0, atol=0)
    assert len(reads) > 1  # slab by slab
    torch.testing.assert_close(lin(x), x @ reference(source, spec).T)  # summed slab by slab
    encoding = weight.nnef_encoding("w")
    materialized = weight.materialize().nnef_encoding("w")
    assert [v.shape for v in encoding.variables] == [v.shape for v in materialized.variables]
    for deferred, real in zip(encoding.variables, materialized.variables):
        assert bytes(deferred.data()) == bytes(real.data())
    rows = weight.nnef_slice_rows(2, 5)
    assert isinstance(rows, DeferredTensor) and rows.shape == (3, 64)
    torch.testing.assert_close(rows.float_value(), reference(source, spec)[2:5], rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["q4_0", "minmax:4:g32", "nf4:4:g32", None])
def test_writing_reads_a_slab_at_a_time(spec, monkeypatch):
    """Writing a deferred weight of N rows never reads (nor converts) all N rows at once, and
    gives the bytes of the whole weight's encoding: row-cut codes and scales concatenated, a
    code book (the same for every slab) once."""
    monkeypatch.setattr(t2n_core.deferred, "FLOAT_SLAB_VALUES", 3 * 64)  # 3 rows of 64
    source = torch.randn(10, 64)
    reads: list[tuple[int, int]] = []

    def read(b: int, e: int) -> torch.Tensor:
        reads.append((b, e))
        return source[b:e].bfloat16()

    weight = DeferredTensor(read, (10, 64), torch.float32, name="w")
    expected = [bytes(source.bfloat16().float().numpy())]
    if spec is not None:
        weight = quantize_deferred(weight, spec, name="w")
        whole = quantize_tensor(source.bfloat16(), spec, name="w")
        whole = whole.with_inner(lambda t: t, dtype=torch.float32)
        expected = [bytes(v.data()) for v in whole.nnef_encoding("w").variables]
    assert [bytes(v.data()) for v in weight.nnef_encoding("w").variables] == expected
    assert reads == [(0, 3), (3, 6), (6, 9), (9, 10)]
    reads.clear()
    x = torch.randn(2, 64)
    expected = x @ (source.bfloat16().float() if spec is None else reference(source, spec)).T
    torch.testing.assert_close(torch.nn.functional.linear(x, weight), expected)
    assert reads == [(0, 3), (3, 6), (6, 9), (9, 10)]  # the float weight is never whole either

"""t2n_core.decompose: one make_fx pass gives run_decompositions' ops; other programs fall back."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from t2n_core.decompose import decompose
from t2n_core.decompositions import decomposition_table


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.proj(x)).reshape(x.shape[0], -1, 2).to(torch.float64)
        return torch.nn.functional.gelu(y).sum(-1) + torch.arange(y.shape[1])


class _InPlace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y.add_(1)
        return y.transpose(0, 1)


def _export(model: nn.Module) -> ExportedProgram:
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    return torch.export.export(model.eval(), (x,), dynamic_shapes=({0: Dim("B")},), strict=False)


def _ops(program: ExportedProgram) -> Counter[str]:
    return Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("model", [_Functional(), _InPlace()], ids=["functional", "in-place"])
def test_same_ops_as_run_decompositions(model: nn.Module) -> None:
    """The same ops (node names may differ: the retrace numbers nodes it later drops)."""
    expected = _export(model).run_decompositions(decomposition_table())
    got = decompose(_export(model))
    assert _ops(got) == _ops(expected)
    assert [s.kind for s in got.graph_signature.input_specs] == [
        s.kind for s in expected.graph_signature.input_specs
    ]
    x = torch.randn(5, 8)
    torch.testing.assert_close(got.module()(x), model(x))


def test_functional_program_takes_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    program = _export(_Functional())

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("run_decompositions called")

    monkeypatch.setattr(ExportedProgram, "run_decompositions", refuse)
    decompose(program)  # no retrace through run_decompositions
    with pytest.raises(AssertionError, match="run_decompositions called"):
        decompose(_export(_InPlace()))  # a mutation: the public path

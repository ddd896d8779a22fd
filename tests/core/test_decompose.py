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


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.nn.functional.gelu(self.norm(self.proj(x)))


def _with_block_calls() -> ExportedProgram:
    from t2n_core.blocks import Blocks

    model = nn.Sequential(*[_Layer() for _ in range(3)]).eval()
    blocks = Blocks.find(model)
    assert blocks is not None
    x = torch.randn(3, 8)
    with blocks.intercept(), blocks.active(), torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("B")},), strict=False)
        return decompose(program)


def test_block_calls_are_copied_with_their_recorded_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each t2n::block call is copied, not run again; the graph is the one running it gives."""
    import t2n_core.decompose as module

    copy = module._copy_block
    copied = []

    def counting(*args: object) -> object:
        copied.append(copy(*args))  # type: ignore[arg-type]
        return copied[-1]

    monkeypatch.setattr(module, "_copy_block", counting)
    got = _with_block_calls()
    monkeypatch.setattr(module, "_copy_block", lambda *args: None)
    expected = _with_block_calls()
    blocks = [n for n in got.graph.nodes if n.target is torch.ops.t2n.block.default]
    assert len(blocks) == 3 and len(copied) == 3 and all(c is not None for c in copied)
    assert got.graph_module.code == expected.graph_module.code
    for ours, theirs in zip(got.graph.nodes, expected.graph.nodes):
        if isinstance(theirs.meta.get("val"), torch.Tensor):
            assert str(ours.meta["val"].shape) == str(theirs.meta["val"].shape)

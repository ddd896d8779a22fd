"""The archive of a model does not depend on the process that exported it: a model whose
forward computes independent branches in the iteration order of a ``set`` of strings (as
transformers' Gemma 3 does with ``set(config.layer_types)``) exports byte-identical archives
under different ``PYTHONHASHSEED`` values (``t2n_core/node_order.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from t2n_core.node_order import canonical_order
from tests.helpers import export_and_check

KINDS = ("sliding", "full", "chunked", "local", "global", "linear")


class SetOrderBranches(nn.Module):
    """One projection per kind, computed in ``set`` order, returned in sorted order."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({k: nn.Linear(8, 8) for k in KINDS})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = {k: torch.tanh(self.proj[k](x)) for k in set(KINDS)}
        return tuple(out[k] for k in sorted(out))


_CHILD = """
import sys, torch
from tests.core.test_deterministic_archive import SetOrderBranches
from t2n_core import export
torch.manual_seed(0)
export(SetOrderBranches().eval(), (torch.randn(2, 8),), sys.argv[1], check=False,
       progress=False)
"""


@pytest.mark.slow  # two processes importing torch: ~20 s
def test_archive_bytes_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    paths = []
    for seed in ("1", "2"):
        path = tmp_path / f"seed{seed}.nnef.tgz"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.getcwd()}
        subprocess.run([sys.executable, "-c", _CHILD, str(path)], env=env, check=True)
        paths.append(path)
    archives = [p.read_bytes() for p in paths]
    assert archives[0] == archives[1]


def test_set_order_model_still_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_and_check(SetOrderBranches().eval(), (torch.randn(2, 8),), tmp_path)


def test_canonical_order_is_topological_and_ignores_creation_order() -> None:
    def build(first: str) -> torch.fx.Graph:
        graph = torch.fx.Graph()
        x = graph.placeholder("x")
        branches = {}
        for name in (first, "b" if first == "a" else "a"):
            branches[name] = graph.call_function(torch.neg if name == "a" else torch.exp, (x,))
        total = graph.call_function(torch.add, (branches["a"], branches["b"]))
        graph.output(total)
        return graph

    one, two = build("a"), build("b")
    assert [str(n.target) for n in canonical_order(one)] == [
        str(n.target) for n in canonical_order(two)
    ]
    for graph in (one, two):
        order = canonical_order(graph)
        assert sorted(order, key=id) == sorted(graph.nodes, key=id)
        seen: set[torch.fx.Node] = set()
        for node in order:
            assert all(i in seen for i in node.all_input_nodes)
            seen.add(node)

"""The KV-cache shapes probe: parameters on the meta device, fake tensors where meta fails;
both give the shapes a real one-token forward fills."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from t2n_core.llm import wrapper
from tests.llm.families import tiny


def _real_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    fields, _ = wrapper._probe_fields(model)  # parameters on the CPU: a real forward
    return [(f.shape[1], f.shape[3]) for f in fields]


@pytest.mark.parametrize("name", ["llama", "falcon_multi_query", "gpt2"])
def test_probe_gives_the_shapes_of_a_real_forward(name):
    model = tiny(name)
    assert wrapper.past_shapes_of(model) == _real_shapes(model)


def test_meta_probe_needs_no_fake_tensors_and_restores_the_parameters(monkeypatch):
    model = tiny("falcon_multi_query")  # one kv head whatever the config's head counts
    before = {n: p for n, p in model.named_parameters()}

    def refuse(self):  # type: ignore[no-untyped-def]
        raise AssertionError("fake tensors used")

    monkeypatch.setattr(FakeTensorMode, "__enter__", refuse)
    assert wrapper.past_shapes_of(model) == [(1, 16), (1, 16), (1, 16), (1, 16)]
    assert {n: p for n, p in model.named_parameters()} == before
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_probe_falls_back_to_fake_tensors_where_meta_fails(monkeypatch):
    model = tiny("gpt2")  # reads a value (.item()), which meta tensors cannot give
    with pytest.raises(RuntimeError, match="meta"), wrapper.parameters_on_meta(model):
        wrapper._probe(model)
    assert wrapper.past_shapes_of(model) == _real_shapes(model)

"""The input plan: names, positions, dtypes, dynamic axes and their symbols, resolved once."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from t2n_core.errors import CaptureError, ExportInputError
from t2n_core.input_plan import (
    InputPlan,
    default_input_names,
    shared_dim_symbols,
    user_input_placeholders,
)
from tests.helpers import export_and_check


class Mix(nn.Module):
    """Tensor inputs around a non-tensor one, two of them on one shared symbol."""

    def forward(self, x: torch.Tensor, scale: float, y: torch.Tensor) -> torch.Tensor:
        return x * scale + y.flip(1)


def _args() -> tuple:
    return (torch.randn(3, 5), 2.0, torch.randn(3, 5))


def test_resolve_names_positions_dtypes_and_symbols():
    plan = InputPlan.resolve(_args(), ["x", "y"], {"x": {0: "B", -1: "T"}, "y": [0]})
    x, y = plan.inputs
    assert (x.name, x.position, x.dtype, x.example_shape) == ("x", 0, torch.float32, (3, 5))
    assert (y.name, y.position) == ("y", 2)
    assert x.axes == {0: "B", 1: "T"} and y.axes == {0: "y_0"}
    assert x.shape == ("B", "T") and y.shape == ("y_0", 5)
    assert plan.names == ["x", "y"] and plan.symbols == ["B", "T", "y_0"]
    assert plan.axis_symbol("x", 1) == "T" and plan.axis_symbol("y", 1) is None
    assert plan.axis_symbol("nope", 0) is None


def test_dynamic_shapes_one_entry_per_argument_one_dim_per_symbol():
    plan = InputPlan.resolve(_args(), ["x", "y"], {"x": {0: "B"}, "y": {0: "B", 1: "T"}})
    shapes = plan.dynamic_shapes()
    assert shapes is not None and len(shapes) == 3 and shapes[1] is None
    assert shapes[0][0] is shapes[2][0]  # one Dim for "B", shared
    assert InputPlan.resolve(_args(), ["x", "y"]).dynamic_shapes() is None


@pytest.mark.parametrize(
    ("names", "axes", "match"),
    [
        (["x"], None, "1 input_names given for 2 tensor input"),
        (["x", "y"], {"z": [0]}, "unknown input"),
        (["x", "y"], {"x": [2]}, "out of range"),
        (["x", "y"], {"x": {0: "not valid"}}, "must be an identifier"),
    ],
)
def test_resolve_refuses_what_does_not_fit(names, axes, match):
    with pytest.raises(ExportInputError, match=match):
        InputPlan.resolve(_args(), names, axes)


def test_resolve_refuses_an_example_of_size_one_on_a_dynamic_axis():
    with pytest.raises(ExportInputError, match="size 2 or more"):
        InputPlan.resolve((torch.randn(1, 4),), ["x"], {"x": [0]})


def test_placeholders_and_symbols_come_from_the_plan():
    args = _args()
    plan = InputPlan.resolve(args, ["x", "y"], {"x": {0: "B"}, "y": {0: "B"}})
    program = torch.export.export(Mix(), args, dynamic_shapes=plan.dynamic_shapes(), strict=False)
    nodes = user_input_placeholders(program)
    assert [plan.by_placeholder(program)[n.name].name for n in nodes] == ["x", "y"]
    symbols = plan.bind_symbols(program)
    assert symbols.shape(nodes[1].meta["val"].shape) == ("B", 5)


class Apart(nn.Module):
    """Two inputs that no op relates: only the named Dims say their axes are equal."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(0), y.sum(0)


def test_axes_of_one_dim_get_one_torch_symbol():
    args = (torch.randn(3, 3), torch.randn(3, 5))
    plan = InputPlan.resolve(args, ["x", "y"], {"x": {0: "B", 1: "T"}, "y": {0: "B"}})
    with shared_dim_symbols():
        program = torch.export.export(Apart(), args, dynamic_shapes=plan.dynamic_shapes())
    x, y = (n.meta["val"] for n in user_input_placeholders(program))
    created = x.shape[0].node.shape_env.backed_var_to_val
    assert len(created) == 2  # B and T (also of size 3); torch alone: one per axis, 3
    assert plan.bind_symbols(program).shape(y.shape) == ("B", 5)


def test_axes_of_one_dim_with_different_example_sizes_are_refused_as_before():
    args = (torch.randn(3, 5), torch.randn(4, 5))
    plan = InputPlan.resolve(args, ["x", "y"], {"x": {0: "B"}, "y": {0: "B"}})
    errors = []
    for shared in (False, True):
        with shared_dim_symbols() if shared else contextlib.nullcontext():
            with pytest.raises(Exception) as info:
                torch.export.export(Apart(), args, dynamic_shapes=plan.dynamic_shapes())
        errors.append(type(info.value))
    assert errors[0] is errors[1]


def test_an_axis_the_code_fixed_is_named():
    class Fixed(nn.Module):
        def forward(self, x):
            return x.reshape(3, 5)

    args = (torch.randn(3, 5),)
    plan = InputPlan.resolve(args, ["x"], {"x": {0: "B"}})
    program = torch.export.export(Fixed(), args, strict=False)  # axis 0 stays 3
    with pytest.raises(CaptureError, match=r"dynamic axis 0 \(B\) of input 'x' was specialised"):
        plan.bind_symbols(program)


def test_default_names_follow_the_signature():
    args = (torch.zeros(1), 3, torch.zeros(1), torch.zeros(1))
    assert default_input_names(Mix().forward, args[:3]) == ["x", "y"]
    assert default_input_names(lambda a, *xs: a, args) == ["a", "xs_1", "xs_2"]
    assert default_input_names(lambda a: a, args) == ["a", "input_2", "input_3"]


def test_export_names_inputs_around_a_non_tensor_argument(tmp_path):
    result = export_and_check(
        Mix(), _args(), tmp_path, name="mix", dynamic_axes={"x": {0: "B"}, "y": {0: "B"}},
        check_inputs=[(torch.randn(6, 5), 2.0, torch.randn(6, 5))],
    )  # fmt: skip
    assert [str(i) for i in result.inputs] == ["x: f32[B, 5]", "y: f32[B, 5]"]
    text = (result.path / "graph.nnef").read_text()
    assert text.count("extension tract_symbol B;") == 1


def test_streaming_axes_share_one_symbol():
    args = (torch.randn(2, 3, 8), torch.randn(2, 8))
    plan = InputPlan.resolve(args, ["a", "b"], {"a": {2: "T"}}, {"a": 2, "b": 1})
    assert plan.streaming_symbol == "T" and [i.axes for i in plan.inputs] == [{2: "T"}, {1: "T"}]
    assert InputPlan.resolve(args, ["a", "b"], None, {"b": 1}).inputs[1].shape == (2, "S")
    assert InputPlan.resolve(args, ["a", "b"]).streaming_symbol is None


@pytest.mark.parametrize(
    ("dynamic", "streaming", "match"),
    [
        (None, {"c": 1}, "must map input names"),
        (None, {}, "must map input names"),
        (None, {"a": -1}, "non-negative index"),
        ({"a": {2: "T"}, "b": {1: "U"}}, {"a": 2, "b": 1}, "share one symbol"),
        (None, {"a": 5}, "out of range"),
    ],
)  # fmt: skip
def test_streaming_axis_refused(dynamic, streaming, match):
    with pytest.raises(ExportInputError, match=match):
        InputPlan.resolve((torch.randn(2, 3, 8), torch.randn(2, 8)), ["a", "b"], dynamic, streaming)

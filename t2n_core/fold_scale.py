"""Keep tract from folding a per-channel multiply into a tract-native (Q4_0) filter.

tract folds a per-channel ``mul`` (or ``div``) after a convolution (an inference batch norm
is a ``mul`` then an ``add`` by constants) into the convolution's kernel while it optimises
the graph, and fails when that kernel is block-quantized (Q4_0: "Tensor storage is not
plain"). For each conv with a tract-native filter whose only user is a ``mul`` or ``div``,
this pass either

- folds the multiply itself, on the encoded tensor, when that is exact: the storage
  protocol's optional ``nnef_scale_rows(factors)`` scales the rows (output channels) of the
  filter without decoding it (Q4_0: its f16 block scales) and returns ``None`` unless every
  scaled block scale is exact (power-of-two factors); the shift joins the bias; or
- keeps the multiply and puts ``max(y, y)`` between the conv and it, an identity tract does
  not look through (as :mod:`t2n_core.concat_guard`), so the filter is written byte for byte
  as quantized and tract multiplies the conv's output.

Folding with rounded f16 block scales (the earlier behaviour) changed the weight by up to half
an f16 ulp per block, which failed the export's own check at its default tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from t2n_core.ir import Graph, Operation, Ref, Value, Variable, _refs
from t2n_core.storage import NNEFStorage

logger = logging.getLogger(__name__)

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg": torch.neg, "rsqrt": torch.rsqrt, "sqrt": torch.sqrt, "rcp": torch.reciprocal,
    "exp": torch.exp, "copy": torch.clone,
}  # fmt: skip
_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
}  # fmt: skip


def fold_channel_affine(graph: Graph, is_native: Callable[[Variable], bool]) -> list[str]:
    """Fold ``conv -> mul(per-channel const) [-> add(per-channel const)]`` into the conv
    when its filter is tract-native; returns one note per fold (also logged)."""
    notes: list[str] = []
    evaluator = _Constants(graph)
    guarded = 0
    for conv in [op for op in graph.operations if op.op == "conv"]:
        note = _fold_one(graph, conv, evaluator, is_native)
        if note is not None:
            notes.append(note)
            logger.info("%s", note)
        elif _guard_one(graph, conv, is_native):
            guarded += 1
    if notes:
        graph.remove_dead_code()
    if guarded:
        logger.debug("kept the per-channel multiply after %d tract-native conv(s), guarded "
                     "by max(y, y)", guarded)  # fmt: skip
    return notes


def guard_block_convs(graph: Graph, is_native: Callable[[Variable], bool]) -> int:
    """In each fragment body, put ``max(y, y)`` between a conv whose filter parameter
    receives a tract-native tensor (in some call) and a ``mul`` / ``div`` only user, so that
    the fragment can keep the conv (the filter stays a fragment argument, nothing is folded
    per instance); returns how many were inserted."""
    guarded = 0
    for name, body in graph.blocks.items():
        native: set[str] = set()
        for call in (op for op in graph.operations if op.op == name):
            for param, arg in zip(body.inputs, call.args, strict=False):
                var = graph.variables.get(arg.name) if isinstance(arg, Ref) else None
                if var is not None and is_native(var):
                    native.add(param.name)
        for conv in [op for op in body.operations if op.op == "conv"]:
            filt = conv.args[1] if len(conv.args) > 1 else None
            if isinstance(filt, Ref) and filt.name in native and multiply_follows(body, conv):
                _insert_guard(body, conv)
                guarded += 1
    if guarded:
        logger.debug("kept the per-channel multiply after %d tract-native conv(s) in "
                     "fragments, guarded by max(y, y)", guarded)  # fmt: skip
    return guarded


def multiply_follows(graph: Graph, conv: Operation) -> bool:
    """Whether the only user of ``conv``'s output is a ``mul`` or ``div``, which tract folds
    into the conv's filter while loading."""
    user = _only_user(graph, conv.outputs[0])
    return user is not None and user.op in ("mul", "div")


def _guard_one(graph: Graph, conv: Operation, is_native: Callable[[Variable], bool]) -> bool:
    """Put ``max(y, y)`` between a conv with a tract-native filter and its only user when
    that user is a ``mul`` or ``div`` (which tract would fold into the filter)."""
    filt = conv.args[1] if len(conv.args) > 1 else None
    if not isinstance(filt, Ref) or filt.name not in graph.variables:
        return False
    if not is_native(graph.variables[filt.name]) or not multiply_follows(graph, conv):
        return False
    _insert_guard(graph, conv)
    return True


def _insert_guard(graph: Graph, conv: Operation) -> None:
    user = _only_user(graph, conv.outputs[0])
    assert user is not None
    out = conv.outputs[0]
    value = graph.values[out]
    name = graph.fresh_name(f"{out}_unfolded")
    graph.add_value(Value(name, value.dtype, value.shape))
    guard = Operation("max", [name], [Ref(out), Ref(out)], source=conv.source)
    graph.operations.insert(graph.operations.index(user), guard)
    user.args = [Ref(name) if a == Ref(out) else a for a in user.args]


def _fold_one(
    graph: Graph, conv: Operation, constants: _Constants, is_native: Callable[[Variable], bool]
) -> str | None:
    filt = conv.args[1] if len(conv.args) > 1 else None
    if not isinstance(filt, Ref) or filt.name not in graph.variables:
        return None
    var = graph.variables[filt.name]
    if not is_native(var) or not callable(getattr(var.tensor, "nnef_scale_rows", None)):
        return None
    out = graph.values[conv.outputs[0]]
    channels = out.shape[1]
    mul = _only_user(graph, conv.outputs[0])
    if mul is None or mul.op != "mul" or not isinstance(channels, int):
        return None
    scale = _channel_operand(mul, conv.outputs[0], constants, out.rank, channels)
    if scale is None:
        return None
    shift = torch.zeros(channels)
    last = mul
    add = _only_user(graph, mul.outputs[0])
    if add is not None and add.op == "add":
        t = _channel_operand(add, mul.outputs[0], constants, out.rank, channels)
        if t is not None:
            shift, last = t, add
    bias = constants.value(conv.args[2]) if len(conv.args) > 2 else torch.zeros(())
    if bias is None:
        return None
    scaled = var.tensor.nnef_scale_rows(scale)
    if scaled is None:  # not exact: the multiply stays, guarded (_guard_one)
        return None
    new_bias = (bias.reshape(-1).float() * scale + shift).reshape(1, channels)
    base = var.label.removesuffix(".weight")
    w_name = _add_variable(graph, f"{base}.folded_weight", scaled, graph.values[filt.name].dtype)
    b_name = _add_variable(graph, f"{base}.folded_bias", new_bias, torch.float32)
    conv.args = [conv.args[0], Ref(w_name), Ref(b_name), *conv.args[3:]]
    conv.outputs = [last.outputs[0]]
    graph.operations = [op for op in graph.operations if op is not mul and op is not last]
    what = "batch norm (mul + add)" if last is not mul else "per-channel mul"
    return (
        f"folded the {what} after conv '{conv.source}' into its tract-native filter "
        f"{var.label!r} (stored as {base}.folded_weight / .folded_bias)"
    )


def _add_variable(graph: Graph, label: str, tensor: Any, dtype: torch.dtype) -> str:
    name = graph.fresh_name(label)
    graph.variables[name] = Variable(name, label, tensor)
    graph.add_value(Value(name, dtype, tuple(tensor.shape)))
    return name


def _only_user(graph: Graph, name: str) -> Operation | None:
    if name in graph.outputs:
        return None
    users = [op for op in graph.operations if name in _refs([*op.args, *op.attrs.values()])]
    return users[0] if len(users) == 1 else None


def _channel_operand(
    op: Operation, data: str, constants: _Constants, rank: int, channels: int
) -> torch.Tensor | None:
    """The other operand of binary ``op`` as ``[channels]`` if it only varies along axis 1."""
    if len(op.args) != 2 or op.attrs:
        return None
    other = [a for a in op.args if a != Ref(data)]
    if len(other) != 1:
        return None
    t = constants.value(other[0])
    if t is None or not t.dtype.is_floating_point or t.dim() > rank:
        return None
    shape = [1] * (rank - t.dim()) + list(t.shape)  # NNEF broadcasts from the front
    if any(s != 1 for i, s in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return t.reshape(-1).float().expand(channels).clone()


class _Constants:
    """Values computable from literals and plain stored tensors by a few elementwise ops."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producers = {o: op for op in graph.operations for o in op.outputs}
        self.memo: dict[str, torch.Tensor | None] = {}

    def value(self, operand: Any) -> torch.Tensor | None:
        if isinstance(operand, bool):
            return None
        if isinstance(operand, (int, float)):
            return torch.tensor(float(operand))
        if not isinstance(operand, Ref):
            return None
        if operand.name not in self.memo:
            self.memo[operand.name] = self._compute(operand.name)
        return self.memo[operand.name]

    def _compute(self, name: str) -> torch.Tensor | None:
        var = self.graph.variables.get(name)
        if var is not None:
            t = var.tensor
            plain = isinstance(t, torch.Tensor) and not isinstance(t, NNEFStorage)
            return t.detach().float() if plain and t.dtype.is_floating_point else None
        op = self.producers.get(name)
        if op is None or len(op.outputs) != 1:
            return None
        args = [self.value(a) for a in op.args]
        if any(a is None for a in args):
            return None
        if op.op in _UNARY and len(args) == 1 and not op.attrs:
            return _UNARY[op.op](args[0])
        if op.op in _BINARY and len(args) == 2 and not op.attrs:
            return _BINARY[op.op](args[0], args[1])
        shape = self.graph.values[name].shape
        if op.op in ("unsqueeze", "squeeze") and all(isinstance(d, int) for d in shape):
            return args[0].reshape(shape)
        return None

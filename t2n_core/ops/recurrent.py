"""Recurrent layers (LSTM, GRU, Elman RNN), each layer and direction one ``tract_core_scan`` loop.

The input projection of all time steps is one matmul over the whole sequence, outside the
loop; the loop body (``fragments/t2n_<cell>.nnef``) does only the recurrent matmuls and the gate
arithmetic. Each gate gets its own row range of the recurrent weight (and its own slice of the
projection), so the body text does not depend on the hidden size. Every weight matrix reaches
its ``matmul`` as the stored rank-2 variable (the input projection folds the sequence's leading
axes instead, the loop body squeezes the state ``[1, B, H]`` to ``[B, H]``): tract then keeps
a Q4_0 weight compressed and an f32 weight once (see docs/tract-facts.md). The loop runs along
axis 0 of a time-major sequence (a ``batch_first`` input is transposed once on the way in and
out; backwards for the reverse direction). While capturing, these ops get a shape rule instead
of their decomposition (which loops over time), so a dynamic time axis stays a symbol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops.linear import times_matrix
from t2n_core.ops.registry import register
from t2n_core.shape_rules import register_shape_rule

aten = torch.ops.aten


@dataclass(frozen=True)
class _Cell:
    fragment: str  # scan wrapper fragment (its body fragment lives in the same file)
    gates: int  # gate blocks stacked in weight_ih / weight_hh


_LSTM = _Cell("t2n_lstm", 4)  # carries a cell state c besides h
_GRU = _Cell("t2n_gru", 3)
_RNN = {
    aten.rnn_tanh.input: _Cell("t2n_rnn_tanh", 1),
    aten.rnn_relu.input: _Cell("t2n_rnn_relu", 1),
}


@register(aten.lstm.input)
def lstm(ctx: EmitContext, node: torch.fx.Node):
    """lstm.input(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor, Tensor)"""  # noqa: E501
    h0, c0 = ctx.arg(1)
    return _recurrent(ctx, _LSTM, h0, c0)


@register(aten.gru.input)
def gru(ctx: EmitContext, node: torch.fx.Node):
    """gru.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor)"""  # noqa: E501
    return _recurrent(ctx, _GRU, ctx.arg(1), None)


@register(*_RNN)
def rnn(ctx: EmitContext, node: torch.fx.Node):
    """rnn_tanh.input(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, float dropout, bool train, bool bidirectional, bool batch_first) -> (Tensor, Tensor); rnn_relu.input likewise"""  # noqa: E501
    return _recurrent(ctx, _RNN[node.target], ctx.arg(1), None)


def _recurrent(ctx: EmitContext, cell: _Cell, h0: Ref, c0: Ref | None):
    x, params = ctx.arg(0), ctx.arg(2)
    has_biases, num_layers = bool(ctx.arg(3)), int(ctx.arg(4))
    dropout, train = float(ctx.arg(5)), bool(ctx.arg(6))
    directions = 2 if ctx.arg(7) else 1
    batch_first = bool(ctx.arg(8))
    dtype = ctx.meta(0).dtype
    if not dtype.is_floating_point:
        raise ctx.error(f"recurrent layers need a floating-point input, got {dtype}")
    if train and dropout > 0 and num_layers > 1:
        raise ctx.error("dropout between recurrent layers in training mode cannot be exported; "
                        "export the model in eval mode")  # fmt: skip
    if ctx.rank(x) != 3:
        raise ctx.error(f"expected a 3-D input sequence, got rank {ctx.rank(x)}")
    per_direction, rest = divmod(len(params), num_layers * directions)
    projected = per_direction == 2 + 2 * has_biases + 1
    if rest or not (per_direction == 2 + 2 * has_biases or (projected and cell is _LSTM)):
        raise ctx.error(f"unexpected parameter list of {len(params)} tensors for "
                        f"{num_layers} layer(s) x {directions} direction(s)")  # fmt: skip
    layer_input = _swap_batch_time(ctx, x, "time_major") if batch_first else x
    h_last: list[Ref] = []
    c_last: list[Ref] = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            weights = params[index * per_direction : (index + 1) * per_direction]
            tag = f"l{layer}{'_reverse' if direction else ''}"
            y, h, c = _direction(
                ctx, cell, layer_input, weights, has_biases, projected,
                _initial_state(ctx, h0, index, tag + "_h0"),
                None if c0 is None else _initial_state(ctx, c0, index, tag + "_c0"),
                reverse=bool(direction), tag=tag,
            )  # fmt: skip
            outputs.append(y)
            h_last.append(h)
            if c is not None:
                c_last.append(c)
        layer_input = _concat(ctx, outputs, axis=2, hint=f"l{layer}_output")
    if batch_first:
        layer_input = _swap_batch_time(ctx, layer_input, "batch_first")
    results = [layer_input, _concat(ctx, h_last, axis=0, hint="h_n")]
    if c0 is not None:
        results.append(_concat(ctx, c_last, axis=0, hint="c_n"))
    return tuple(results)


def _direction(
    ctx: EmitContext,
    cell: _Cell,
    x: Ref,
    weights: list[Ref],
    has_biases: bool,
    projected: bool,
    h0: Ref,
    c0: Ref | None,
    *,
    reverse: bool,
    tag: str,
) -> tuple[Ref, Ref, Ref | None]:
    """One layer in one direction of a time-major ``x``: input projection, then the scan.

    Returns (y, h_T, c_T).
    """
    dtype = ctx.dtype(x)
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_biases else (None, None)
    hidden = ctx.shape(w_hh)[0] // cell.gates  # cell size
    out_size = ctx.shape(w_hh)[1]  # h size (the projection size for a projected LSTM)
    seq = ctx.shape(x)

    # input projection of every time step at once: [T, B, gates * hidden]
    proj = times_matrix(
        ctx, x, w_ih, dtype, (seq[0], seq[1], cell.gates * hidden), transpose_b=True,
        hint=f"{tag}_input_proj",
    )  # fmt: skip
    if has_biases:
        # GRU keeps its recurrent bias of the candidate gate n inside r * (W_hn h + b_hn)
        bias = b_ih if cell is _GRU else _add(ctx, b_ih, b_hh, f"{tag}_bias")
        proj = _add(ctx, proj, _unsqueeze(ctx, bias, [0, 1], f"{tag}_bias"), f"{tag}_input_proj")
    xs = [_gate(ctx, proj, 2, k, hidden, f"{tag}_x") for k in range(cell.gates)]
    ws = [_gate(ctx, w_hh, 0, k, hidden, f"{tag}_w") for k in range(cell.gates)]
    extra: list[Ref] = []
    if cell is _GRU:
        if has_biases:
            for k in (0, 1):
                b = _gate(ctx, b_hh, 0, k, hidden, f"{tag}_b_hh")
                xs[k] = _add(ctx, xs[k], _unsqueeze(ctx, b, [0, 1], f"{tag}_b_hh"), f"{tag}_x")
            b_hn = _gate(ctx, b_hh, 0, 2, hidden, f"{tag}_b_hn")
            extra.append(_unsqueeze(ctx, b_hn, [0, 1], f"{tag}_b_hn"))
        else:
            extra.append(ctx.constant(torch.zeros(1, 1, hidden, dtype=dtype), f"{tag}_bn"))
    if projected:
        extra.append(weights[4])

    fragment = cell.fragment + ("_proj" if projected else "")
    ctx.fragment(fragment)
    state_shape = ctx.shape(h0)
    out_shape = list(seq)
    out_shape[2] = out_size
    outputs: list[tuple[torch.dtype, Any]] = [(dtype, tuple(out_shape)), (dtype, state_shape)]
    states = [h0]
    if c0 is not None:
        outputs.append((dtype, ctx.shape(c0)))
        states.append(c0)
    refs = ctx.emit_multi(
        fragment, [*xs, *states, *ws, *extra], {"axis": 0, "step": -1 if reverse else 1},
        outputs, hint=f"{tag}_scan",
    )  # fmt: skip
    return refs[0], refs[1], refs[2] if c0 is not None else None


def _initial_state(ctx: EmitContext, state: Ref, index: int, hint: str) -> Ref:
    """Row ``index`` of a ``[layers * directions, B, H]`` state as ``[1, B, H]``."""
    shape = ctx.shape(state)
    if shape[0] != 1:
        state = ctx.emit(
            "slice", [state], {"axes": [0], "begin": [index], "end": [index + 1]},
            dtype=ctx.dtype(state), shape=(1, *shape[1:]), hint=hint,
        )  # fmt: skip
    return state


def _swap_batch_time(ctx: EmitContext, seq: Ref, hint: str) -> Ref:
    """``[B, T, F]`` <-> ``[T, B, F]``."""
    shape = ctx.shape(seq)
    return ctx.emit(
        "transpose", [seq], {"axes": [1, 0, 2]},
        dtype=ctx.dtype(seq), shape=(shape[1], shape[0], shape[2]), hint=hint,
    )  # fmt: skip


def _gate(ctx: EmitContext, ref: Ref, axis: int, k: int, size: int, hint: str) -> Ref:
    """Block ``k`` (of ``size`` rows) of the gates stacked along ``axis``."""
    shape = list(ctx.shape(ref))
    if shape[axis] == size:
        return ref
    shape[axis] = size
    return ctx.emit(
        "slice", [ref], {"axes": [axis], "begin": [k * size], "end": [(k + 1) * size]},
        dtype=ctx.dtype(ref), shape=tuple(shape), hint=hint,
    )  # fmt: skip


def _unsqueeze(ctx: EmitContext, ref: Ref, axes: list[int], hint: str) -> Ref:
    shape = list(ctx.shape(ref))
    for axis in axes:
        shape.insert(axis, 1)
    return ctx.emit(
        "unsqueeze", [ref], {"axes": axes}, dtype=ctx.dtype(ref), shape=tuple(shape), hint=hint,
    )  # fmt: skip


def _add(ctx: EmitContext, a: Ref, b: Ref, hint: str) -> Ref:
    return ctx.emit("add", [a, b], dtype=ctx.dtype(a), shape=ctx.shape(a), hint=hint)


def _concat(ctx: EmitContext, refs: list[Ref], axis: int, hint: str) -> Ref:
    if len(refs) == 1:
        return refs[0]
    shape = list(ctx.shape(refs[0]))
    shape[axis] = sum(ctx.shape(r)[axis] for r in refs)  # layer/direction or feature sizes: ints
    return ctx.emit(
        "concat", [refs], {"axis": axis}, dtype=ctx.dtype(refs[0]), shape=tuple(shape),
        hint=hint,
    )  # fmt: skip


# ---- shapes while capturing (instead of the decomposition, which unrolls the time axis) ------
def _sequence_output(input: torch.Tensor, hidden: int, bidirectional: bool) -> torch.Tensor:
    return input.new_empty((input.shape[0], input.shape[1], (2 if bidirectional else 1) * hidden))


@register_shape_rule(aten.lstm.input)
def _lstm_shapes(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                 batch_first):  # fmt: skip
    h0, c0 = hx
    out = _sequence_output(input, h0.shape[-1], bidirectional)
    return out, h0.new_empty(h0.shape), c0.new_empty(c0.shape)


@register_shape_rule(aten.gru.input, *_RNN)
def _gru_rnn_shapes(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                    batch_first):  # fmt: skip
    return _sequence_output(input, hx.shape[-1], bidirectional), hx.new_empty(hx.shape)

"""Embedding lookups and one-hot encoding.

``embedding`` becomes ``tract_core_gather(weight, indices, axis = 0, datum_type = 'f32')``
with the weight as the gather's direct data input, so a block-quantized (Q4_0) table stays
compressed: tract gathers rows straight from Q4_0 storage. tract 0.23.9 refuses a gather on
compressed data without the explicit ``datum_type`` of its output (f32 or f16).
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.nnef.text import tract_dtype_name
from t2n_core.ops._common import dim_attr, exact_scalar
from t2n_core.ops.registry import register

aten = torch.ops.aten


@register(aten.embedding.default)
def embedding(ctx: EmitContext, node: torch.fx.Node):
    """embedding(Tensor weight, Tensor indices, SymInt padding_idx=-1,
    bool scale_grad_by_freq=False, bool sparse=False) -> Tensor"""
    weight, indices = ctx.arg(0), ctx.arg(1)
    if ctx.meta(1).dtype.is_floating_point:
        raise ctx.error("embedding indices must be an integer tensor")
    attrs = {"axis": 0, "datum_type": tract_dtype_name(ctx.meta().dtype)}
    return ctx.emit_like("tract_core_gather", [weight, indices], attrs, hint="embedding")


@register(aten.one_hot.default)
def one_hot(ctx: EmitContext, node: torch.fx.Node):
    """one_hot(Tensor self, int num_classes=-1) -> Tensor"""
    x = ctx.arg(0)
    classes = ctx.arg(1, ctx.arg("num_classes", -1))
    if not isinstance(classes, int) or classes < 0:
        raise ctx.error(
            "one_hot needs an explicit num_classes (inferring it from the data gives a "
            "data-dependent shape)"
        )
    meta = ctx.meta()
    shape = ctx.out_shape(meta)
    hot = ctx.emit(
        "tract_core_one_hot", [x],
        {"axis": ctx.rank(x), "dim": classes, "value_off": 0.0, "value_on": 1.0},
        dtype=torch.float32, shape=shape,
    )  # fmt: skip
    return ctx.cast(hot, meta.dtype)


_BAG_MODES = {0: "sum", 1: "mean", 2: "max"}


@register(aten._embedding_bag_forward_only.default, aten._embedding_bag.default)
def embedding_bag(ctx: EmitContext, node: torch.fx.Node):
    """_embedding_bag_forward_only(Tensor weight, Tensor indices, Tensor offsets,
    bool scale_grad_by_freq=False, int mode=0, bool sparse=False,
    Tensor? per_sample_weights=None, bool include_last_offset=False, int padding_idx=-1)
    -> (Tensor, Tensor, Tensor, Tensor); only the bags (first output) are translated.

    Rows are gathered, each row's bag is the number of offsets at or before its position
    minus one, and ``tract_core_scatter_nd`` sums (or maxes) the rows into their bags;
    ``mean`` divides by the bag sizes (empty bags give zeros, as in torch).
    """
    weight, indices, offsets = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    mode = _BAG_MODES[int(ctx.arg(4, 0))]
    if ctx.arg(6) is not None or int(ctx.arg(8, -1)) >= 0:
        raise ctx.error("embedding_bag with per_sample_weights or padding_idx is not supported")
    out_meta = ctx.meta()[0]
    out_shape = list(ctx.out_shape(out_meta))
    n_bags, dim = out_shape
    dtype = out_meta.dtype
    if ctx.arg(7, False):  # include_last_offset: the last offset only closes the last bag
        offsets = ctx.emit("slice", [offsets], {"axes": [0], "begin": [0], "end": [n_bags]},
                           dtype=torch.int64, shape=[n_bags], hint="bag_offsets")  # fmt: skip
    n = ctx.shape(indices)[0]
    rows = ctx.emit("tract_core_gather", [weight, indices], {"axis": 0, "datum_type": "f32"},
                    dtype=dtype, shape=[n, dim], hint="bag_rows")  # fmt: skip
    if not isinstance(n, int):
        raise ctx.error("embedding_bag needs a static number of indices")
    positions = ctx.constant(torch.arange(n), hint="bag_positions")
    bag = _count_below_right(ctx, offsets, positions)
    bag = ctx.emit("sub", [bag, ctx.scalar(1, torch.int64)], dtype=torch.int64, shape=[n])
    bag_nd = ctx.emit("unsqueeze", [bag], {"axes": [1]}, dtype=torch.int64, shape=[n, 1])
    fill = float("-inf") if mode == "max" else 0.0
    empty = ctx.emit("tract_core_broadcast", [exact_scalar(ctx, fill, dtype)],
                     {"shape": [dim_attr(n_bags), dim_attr(dim)]}, dtype=dtype,
                     shape=out_shape, hint="bag_init")  # fmt: skip
    reduction = "max" if mode == "max" else "add"
    y = ctx.emit("tract_core_scatter_nd", [empty, bag_nd, rows], {"reduction": reduction},
                 dtype=dtype, shape=out_shape, hint="bags")  # fmt: skip
    if mode == "max":  # empty bags: 0, as torch
        finite = ctx.emit("gt", [y, exact_scalar(ctx, float("-inf"), dtype)], dtype=torch.bool,
                          shape=out_shape, hint="bag_empty")  # fmt: skip
        y = ctx.emit("select", [finite, y, 0.0], dtype=dtype, shape=out_shape, hint="bags")
    elif mode == "mean":
        ones = ctx.emit("tract_core_broadcast", [1.0], {"shape": [dim_attr(n), 1]}, dtype=dtype,
                        shape=[n, 1], hint="bag_count")  # fmt: skip
        zeros = ctx.emit("tract_core_broadcast", [0.0], {"shape": [dim_attr(n_bags), 1]},
                         dtype=dtype, shape=[n_bags, 1], hint="bag_count")  # fmt: skip
        counts = ctx.emit("tract_core_scatter_nd", [zeros, bag_nd, ones], {"reduction": "add"},
                          dtype=dtype, shape=[n_bags, 1], hint="bag_count")  # fmt: skip
        counts = ctx.emit("max", [counts, 1.0], dtype=dtype, shape=[n_bags, 1], hint="bag_count")
        y = ctx.emit("div", [y, counts], dtype=dtype, shape=out_shape, hint="bags")
    return (y, None, None, None)


def _count_below_right(ctx: EmitContext, offsets, positions):
    """For each position, how many offsets are <= it."""
    n = ctx.shape(positions)[0]
    m = ctx.shape(offsets)[0]
    p = ctx.emit("unsqueeze", [positions], {"axes": [1]}, dtype=torch.int64, shape=[n, 1])
    o = ctx.emit("unsqueeze", [offsets], {"axes": [0]}, dtype=torch.int64, shape=[1, m])
    le = ctx.emit("le", [o, p], dtype=torch.bool, shape=[n, m], hint="bag_of")
    counts = ctx.emit("sum_reduce", [ctx.cast(le, torch.int64)], {"axes": [1]},
                      dtype=torch.int64, shape=[n, 1], hint="bag_of")  # fmt: skip
    return ctx.emit("squeeze", [counts], {"axes": [1]}, dtype=torch.int64, shape=[n])

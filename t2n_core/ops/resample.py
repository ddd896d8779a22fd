"""Resampling: nearest / (bi)linear interpolation, pixel_shuffle and pixel_unshuffle.

Interpolation is separable over the spatial axes. Axes resized by an integer factor go to
tract's ``nearest_upsample`` / ``multilinear_upsample`` (tract ``Resize``; dynamic sizes work).
Any other ratio is a matmul with a constant ``[in, out]`` interpolation matrix that PyTorch
itself computes (``F.interpolate`` of an identity matrix), so weights and rounding are exactly
PyTorch's; that needs static sizes on those axes.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
import torch.fx
import torch.nn.functional as F

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.ops._common import out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten

# overload -> (number of spatial axes, torch mode, whether it has align_corners)
_NEAREST = {
    aten.upsample_nearest1d.vec: (1, "nearest"), aten.upsample_nearest2d.vec: (2, "nearest"),
    aten.upsample_nearest3d.vec: (3, "nearest"),
    aten._upsample_nearest_exact1d.vec: (1, "nearest-exact"),
    aten._upsample_nearest_exact2d.vec: (2, "nearest-exact"),
    aten._upsample_nearest_exact3d.vec: (3, "nearest-exact"),
}  # fmt: skip
_NEAREST_DEFAULT = {
    aten.upsample_nearest1d.default: (1, "nearest"),
    aten.upsample_nearest2d.default: (2, "nearest"),
    aten.upsample_nearest3d.default: (3, "nearest"),
}  # fmt: skip
_LINEAR = {
    aten.upsample_linear1d.vec: 1, aten.upsample_bilinear2d.vec: 2,
    aten.upsample_trilinear3d.vec: 3,
}  # fmt: skip
_LINEAR_DEFAULT = {
    aten.upsample_linear1d.default: 1, aten.upsample_bilinear2d.default: 2,
    aten.upsample_trilinear3d.default: 3,
}  # fmt: skip


@register(*_NEAREST)
def upsample_nearest_vec(ctx: EmitContext, node: torch.fx.Node):
    """upsample_nearest2d.vec(Tensor input, SymInt[]? output_size, float[]? scale_factors)
    -> Tensor (and 1d/3d, _upsample_nearest_exact*d)"""
    n, mode = _NEAREST[node.target]
    return _interpolate(ctx, n, mode, None, ctx.arg(2, ctx.arg("scale_factors")))


@register(*_NEAREST_DEFAULT)
def upsample_nearest(ctx: EmitContext, node: torch.fx.Node):
    """upsample_nearest2d(Tensor self, SymInt[2] output_size, float? scales_h=None,
    float? scales_w=None) -> Tensor (and 1d/3d)"""
    n, mode = _NEAREST_DEFAULT[node.target]
    return _interpolate(ctx, n, mode, None, _scales(ctx, 2, n))


@register(*_LINEAR)
def upsample_linear_vec(ctx: EmitContext, node: torch.fx.Node):
    """upsample_bilinear2d.vec(Tensor input, SymInt[]? output_size, bool align_corners,
    float[]? scale_factors) -> Tensor (and linear1d, trilinear3d)"""
    n = _LINEAR[node.target]
    return _interpolate(ctx, n, "linear", bool(ctx.arg(2)), ctx.arg(3, ctx.arg("scale_factors")))


@register(*_LINEAR_DEFAULT)
def upsample_linear(ctx: EmitContext, node: torch.fx.Node):
    """upsample_bilinear2d(Tensor self, SymInt[2] output_size, bool align_corners,
    float? scales_h=None, float? scales_w=None) -> Tensor (and linear1d, trilinear3d)"""
    n = _LINEAR_DEFAULT[node.target]
    return _interpolate(ctx, n, "linear", bool(ctx.arg(2)), _scales(ctx, 3, n))


def _scales(ctx: EmitContext, first: int, n: int) -> list[float] | None:
    scales = [ctx.arg(first + i) for i in range(n)]
    return None if all(s is None for s in scales) else scales


def _integer_factor(ctx: EmitContext, axis: int, scale: float | None) -> int | None:
    """The integer ratio out/in of ``axis`` (symbolic sizes too), or None."""
    size_in, size_out = ctx.meta(0).shape[axis], ctx.meta().shape[axis]
    if scale is not None and not float(scale).is_integer():
        return None
    expr_in = size_in.node.expr if isinstance(size_in, torch.SymInt) else sympy.Integer(size_in)
    expr_out = size_out.node.expr if isinstance(size_out, torch.SymInt) else sympy.Integer(size_out)
    ratio = sympy.simplify(expr_out / expr_in)
    if ratio.is_Integer and int(ratio) >= 1:
        return int(ratio)
    return None


def _interpolate(ctx, n: int, mode: str, align_corners: bool | None, scales: Any) -> Ref:
    dtype = out_dtype(ctx)
    if mode == "linear" and not dtype.is_floating_point:
        raise ctx.error(f"linear interpolation of {dtype} tensors is not supported")
    x = ctx.arg(0)
    rank = ctx.rank(x)
    if rank < n + 1:
        raise ctx.error(f"{n}-d interpolation needs an input of rank {n + 1} or more")
    factors: list[int] = []
    matrices: list[int] = []  # axes resampled with a matrix
    for i in range(n):
        axis = rank - n + i
        scale = scales[i] if scales is not None else None
        factor = _integer_factor(ctx, axis, scale)
        if factor is None:
            if not isinstance(ctx.shape(x)[axis], int):
                raise ctx.error(
                    "interpolation by a non-integer ratio needs static sizes on the resized "
                    f"axes (axis {axis} is dynamic); use an integer scale_factor"
                )
            matrices.append(axis)
            factor = 1
        factors.append(factor)
    out_shape = list(ctx.out_shape())
    shape = list(ctx.shape(x))
    if any(f != 1 for f in factors):
        for i, f in enumerate(factors):
            if f != 1:
                shape[rank - n + i] = out_shape[rank - n + i]
        if mode == "linear":
            op = "multilinear_upsample"
            method = "aligned" if align_corners else "symmetric"
            attrs = {"factor": factors, "method": method, "border": "replicate"}
        else:
            op, attrs = "nearest_upsample", {"factor": factors}
        x = ctx.emit(op, [x], attrs, dtype=dtype, shape=tuple(shape), hint="upsample")
    for axis in matrices:
        i = axis - (rank - n)
        scale = scales[i] if scales is not None else None
        shape[axis] = out_shape[axis]
        x = _resample_axis(ctx, x, axis, mode, align_corners, scale, tuple(shape))
    return x


def _resample_axis(ctx, x: Ref, axis: int, mode: str, align_corners, scale, shape) -> Ref:
    """Resample one axis with a constant PyTorch-computed matrix: a matmul on the last two axes."""
    dtype = out_dtype(ctx)
    rank = ctx.rank(x)
    size_in, size_out = ctx.shape(x)[axis], shape[axis]
    if not isinstance(size_in, int) or not isinstance(size_out, int):
        raise ctx.error(
            "interpolation by a non-integer ratio needs static sizes on the resized axes "
            f"(axis {axis}: {size_in} -> {size_out}); use an integer scale_factor"
        )
    if axis < rank - 2:
        raise ctx.error("interpolation by a non-integer ratio is supported on the last two axes")
    eye = torch.eye(size_in, dtype=torch.float64).unsqueeze(0)
    kwargs: dict[str, Any] = {"mode": mode}
    if mode == "linear":
        kwargs["align_corners"] = align_corners
    if scale is not None:
        kwargs["scale_factor"] = float(scale)
    else:
        kwargs["size"] = size_out
    # [1, in, in] -> [1, in, out]: row c holds the weights of input c in every output
    weights = F.interpolate(eye, **kwargs)[0].to(dtype)
    if weights.shape[-1] != size_out:
        raise ctx.error(f"could not reproduce PyTorch's interpolation to size {size_out}")
    lead = [1] * (rank - 2)
    if axis == rank - 1:  # [..., H, in] @ [in, out]
        mat = ctx.constant(weights.reshape(*lead, size_in, size_out), hint="resample_matrix")
        args = [x, mat]
    else:  # [out, in] @ [..., in, W]
        mat = ctx.constant(weights.T.reshape(*lead, size_out, size_in), hint="resample_matrix")
        args = [mat, x]
    return ctx.emit("matmul", args, {"transposeA": False, "transposeB": False},
                    dtype=dtype, shape=shape, hint="resample")  # fmt: skip


# ---- pixel shuffle ------------------------------------------------------------------------


def _dims(shape) -> list[int | Expr]:
    return [d if isinstance(d, int) else Expr(d) for d in shape]


@register(aten.pixel_shuffle.default)
def pixel_shuffle(ctx: EmitContext, node: torch.fx.Node):
    """pixel_shuffle(Tensor self, int upscale_factor) -> Tensor

    ``[*, C*r*r, H, W] -> [*, C, r, r, H, W] -> [*, C, H, r, W, r] -> [*, C, H*r, W*r]``
    """
    x, r = ctx.arg(0), int(ctx.arg(1))
    dtype = out_dtype(ctx)
    shape = ctx.shape(x)
    out = ctx.out_shape()
    rank = len(shape)
    c = rank - 3  # channel axis
    c_out, h, w = out[c], shape[c + 1], shape[c + 2]
    split = (*shape[:c], c_out, r, r, h, w)
    y = ctx.emit("reshape", [x], {"shape": _dims([c_out, r, r]), "axis_start": c, "axis_count": 1},
                 dtype=dtype, shape=split, hint="shuffle_split")  # fmt: skip
    perm = [*range(c), c, c + 3, c + 1, c + 4, c + 2]
    moved = (*shape[:c], c_out, h, r, w, r)
    y = ctx.emit("transpose", [y], {"axes": perm}, dtype=dtype, shape=moved, hint="shuffle")
    return ctx.emit_like(
        "reshape", [y], {"shape": _dims(out[c + 1 :]), "axis_start": c + 1, "axis_count": 4}
    )


@register(aten.pixel_unshuffle.default)
def pixel_unshuffle(ctx: EmitContext, node: torch.fx.Node):
    """pixel_unshuffle(Tensor self, int downscale_factor) -> Tensor

    ``[*, C, H*r, W*r] -> [*, C, H, r, W, r] -> [*, C, r, r, H, W] -> [*, C*r*r, H, W]``
    """
    x, r = ctx.arg(0), int(ctx.arg(1))
    dtype = out_dtype(ctx)
    shape = ctx.shape(x)
    out = ctx.out_shape()
    rank = len(shape)
    c = rank - 3
    h, w = out[c + 1], out[c + 2]
    split = (*shape[: c + 1], h, r, w, r)
    y = ctx.emit(
        "reshape", [x], {"shape": _dims([h, r, w, r]), "axis_start": c + 1, "axis_count": 2},
        dtype=dtype, shape=split, hint="unshuffle_split",
    )  # fmt: skip
    perm = [*range(c), c, c + 2, c + 4, c + 1, c + 3]
    moved = (*shape[: c + 1], r, r, h, w)
    y = ctx.emit("transpose", [y], {"axes": perm}, dtype=dtype, shape=moved, hint="unshuffle")
    return ctx.emit_like("reshape", [y], {"shape": [out[c]], "axis_start": c, "axis_count": 3})


_GRID_MODES = {0: "bilinear", 1: "nearest", 2: "bicubic"}
_GRID_PADDING = {0: "zeros", 1: "border", 2: "reflection"}


@register(aten.grid_sampler_2d.default)
def grid_sampler_2d(ctx: EmitContext, node: torch.fx.Node):
    """grid_sampler_2d(Tensor input, Tensor grid, int interpolation_mode, int padding_mode,
    bool align_corners) -> Tensor; as ``tract_core_grid_sample`` (tract >= 0.23.2)."""
    x, grid = ctx.arg(0), ctx.arg(1)
    attrs = {
        "mode": _GRID_MODES[int(ctx.arg(2))],
        "padding_mode": _GRID_PADDING[int(ctx.arg(3))],
        "align_corners": bool(ctx.arg(4)),
    }
    return ctx.emit_like("tract_core_grid_sample", [x, grid], attrs)

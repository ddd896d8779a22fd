"""AWQ's scales, found and folded: per group of Linears reading one input, the per-channel
scales are searched (:func:`t2n_quant.calibration.awq.search_scales`), ``1/s`` is folded into
the op producing the input (a norm's weight, also one scaling by ``c + weight``, a Linear's or
convolution's output channels, or the rows of a Linear of the block with as many outputs),
the other readers of that output are compensated, and the fold is kept only when the
checked output is unchanged; otherwise the group is rounded plainly, with the reason noted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from t2n_quant.block_calls import first_tensor
from t2n_quant.calibration.awq import search_scales
from t2n_quant.qtensor import QTensor

if TYPE_CHECKING:
    from t2n_quant.layerwise import Job, Target


def norm_weight(module: nn.Module) -> nn.Parameter | None:
    """The 1-D affine weight of a norm-like module (not a Linear / convolution), or None."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return None
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, nn.Parameter) and weight.dim() == 1 else None


def fold(producer: nn.Module, s: torch.Tensor,
         call: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
         ) -> tuple[Callable[[], None] | None, str]:  # fmt: skip
    """Divide ``producer``'s output channels by ``s`` (a norm's affine weight and bias, a
    Linear's rows, a convolution's output channels); returns the undo, or None and why not.

    A norm may scale by ``c + weight`` rather than ``weight`` (Gemma's ``1 + weight``):
    with its recorded ``call``, the offset ``c`` is read from its output at weight 0 and 1,
    the weight set to ``(c + weight) / s - c``, and its output checked to be divided by
    ``s`` (else nothing is changed)."""
    k = s.numel()
    params = []
    offset: torch.Tensor | None = None
    weight = norm_weight(producer)
    if isinstance(producer, nn.Linear) and producer.out_features == k:
        params = [(producer.weight, s[:, None]), (producer.bias, s)]
    elif isinstance(producer, (nn.Conv1d, nn.Conv2d)) and producer.out_channels == k:
        rows = s.reshape(-1, *[1] * (producer.weight.dim() - 1))
        params = [(producer.weight, rows), (producer.bias, s)]
    elif weight is not None and weight.numel() == k:
        params = [(weight, s), (getattr(producer, "bias", None), s)]
    params = [(p, d) for p, d in params if isinstance(p, nn.Parameter)]
    if not params or any(type(p) is not nn.Parameter or not p.dtype.is_floating_point
                         for p, _ in params):  # fmt: skip
        return None, "cannot take the scales"  # nothing to fold into, or already quantized
    saved = [p.detach().clone() for p, _ in params]

    def undo() -> None:
        for (p, _), old in zip(params, saved):
            p.data.copy_(old)

    if weight is not None and call is not None:
        ref = producer(*call[0], **call[1])
        axis = _channel_axis(ref, k)
        if axis is None:
            return None, "cannot take the scales (no output axis of its channels)"
        offset = _weight_offset(producer, weight, params, call, axis)
    for p, d in params:
        d = d.to(p.device, p.dtype)
        if offset is not None and p is weight:
            p.data.add_(offset).div_(d).sub_(offset)
        else:
            p.data.div_(d)
    if weight is not None and call is not None:
        got = producer(*call[0], **call[1])
        shape = [1] * ref.dim()
        shape[axis] = k  # type: ignore[index]
        want = ref / s.to(ref.device, ref.dtype).reshape(shape)
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-5 * float(want.abs().max())):
            undo()
            return None, "cannot take the scales (its output is not its weight, or an offset " \
                "plus its weight, times a function of its input)"
    return undo, ""


def _channel_axis(out: torch.Tensor, k: int) -> int | None:
    """The axis of ``out`` holding a norm's ``k`` channels: the last, else the second."""
    if out.shape[-1] == k:
        return out.dim() - 1
    return 1 if out.dim() > 1 and out.shape[1] == k else None


def _weight_offset(producer: nn.Module, weight: nn.Parameter, params: list[Any],
                   call: tuple[tuple[Any, ...], dict[str, Any]], axis: int,
                   ) -> torch.Tensor | None:  # fmt: skip
    """``c`` (per channel) where ``producer`` scales by ``c + weight``; None when c is 0.
    Its output is ``f(x) * (c + w) + b``: at ``w = 0`` and ``w = 1`` (no bias), ``c`` is
    the least-squares ratio of the two."""
    saved = [p.detach().clone() for p, _ in params]
    try:
        for p, _ in params:
            p.data.zero_()
        y0 = producer(*call[0], **call[1]).movedim(axis, -1).reshape(-1, weight.numel())
        weight.data.fill_(1)
        y1 = producer(*call[0], **call[1]).movedim(axis, -1).reshape(-1, weight.numel())
    finally:
        for (p, _), old in zip(params, saved):
            p.data.copy_(old)
    d = (y1 - y0).float()
    c = (y0.float() * d).sum(0) / (d * d).sum(0).clamp(min=1e-30)
    if float(c.abs().max()) < 1e-6:
        return None
    return c.to(weight.device, weight.dtype)


def awq_stage(targets: list[Target], job: Job, produced: dict[int, Any],
              probe: Callable[[], torch.Tensor]) -> None:  # fmt: skip
    """AWQ on each group of targets reading the same input the same way (Linears; one kind
    of convolution), folded into its producer."""
    groups: dict[tuple[int, Any], list[Target]] = {}
    for t in targets:
        if t.parts is not None:  # one set of scales cannot serve three inputs
            job.note(f"awq: {t.weight.name}: its query, key and value differ; plain "
                     f"{job.options['inner']!r} rounding")  # fmt: skip
            t.hessian, t.parts = None, None
            job.assign(t, t.weight.param.detach(), None)
            continue
        groups.setdefault((id(_whole(t.first_input)), _columns(t.module)), []).append(t)
    # last reached first: a group's producer may be an earlier group's module, still float
    for group in reversed(groups.values()):
        names = ", ".join(t.weight.name for t in group)
        job.note(f"awq: {names}: {_awq_group(group, job, produced, probe)}")
        for t in group:
            t.hessian = None
            job.assign(t, t.weight.param.detach(), None)


def _columns(module: nn.Module) -> Any:
    """How ``module`` turns its input into the columns its weight multiplies: None for a
    Linear or an attention's projections (the features), a convolution's geometry."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return (type(module), module.kernel_size, module.stride, module.padding, module.dilation)
    return None


def _awq_group(group: list[Target], job: Job, produced: dict[int, Any],
               probe: Callable[[], torch.Tensor]) -> str:  # fmt: skip
    """Search, fold and check one group's scales; says what happened."""
    inner = job.options["inner"]
    plain = f"plain {inner!r} rounding"
    found = producer_of(produced, group[0].first_input)
    first = group[0]
    if found is None and _columns(first.module) is not None:
        return f"no module produces the input as is; {plain}"
    act = first.act / max(first.rows, 1)  # type: ignore[operator]
    repeat = 1
    if isinstance(first.module, (nn.Conv1d, nn.Conv2d)):  # columns: channel x kernel
        repeat = act.numel() // first.module.in_channels
        act = act.reshape(-1, repeat).mean(1)
    weights = [t.weight.param.detach() for t in group]
    codecs, h = [t.codec for t in group], first.hessian
    assert h is not None
    s, alpha, ratio = search_scales(weights, codecs, h, act, inner=inner,
                                    grid=job.options.get("grid", 20), repeat=repeat)  # fmt: skip
    if alpha == 0:
        return f"no scaling beats {plain}"
    done = f"scales (alpha {alpha:.2f}, output error x{ratio:.2f}) folded into"
    if found is not None:
        ok, what = _try_fold(found, group, s, repeat, probe, job, plain)
        return f"{done} {what}" if ok else what
    # the input is no module's output (act(gate) * up, attention's heads): a Linear of the
    # block with as many outputs whose rows, scaled, scale it alike (up_proj, v_proj)?
    for entry in _row_candidates(produced, group, s.numel()):
        ok, what = _try_fold(entry, group, s, repeat, probe, job, plain)
        if ok:
            return f"{done} {what} (the input is its output times another's, or mixed along " \
                "tokens only)"
    return f"no module produces the input as is; {plain}"


def _row_candidates(produced: dict[int, Any], group: list[Target], k: int) -> list[Any]:
    """The Linears of ``produced`` (last run first, at most 3) with ``k`` outputs, not in
    ``group``: AWQ's up_proj -> down_proj, v_proj -> o_proj (the fold's check decides)."""
    mine = {id(t.module) for t in group}
    found = [e for e in produced.values() if isinstance(e[1], nn.Linear)
             and e[1].out_features == k and id(e[1]) not in mine
             and type(e[1].weight) is nn.Parameter]  # fmt: skip
    return found[::-1][:3]


def _try_fold(found: Any, group: list[Target], s: torch.Tensor, repeat: int,
              probe: Callable[[], torch.Tensor], job: Job,
              plain: str) -> tuple[bool, str]:  # fmt: skip
    """Fold ``s`` into the producer of ``found`` and scale ``group``'s weights, kept when the
    output stays the same: (True, the producer's path) or (False, why not)."""
    path, producer, _, call, readers = found
    ref = probe()
    undo, why = fold(producer, s, call)
    if undo is None:
        return False, f"{path!r} ({type(producer).__name__}) {why}; {plain}"

    def along_inputs(w: torch.Tensor) -> torch.Tensor:  # dim 1: a weight's input channels
        return s.to(w.device, w.dtype).reshape(1, -1, *[1] * (w.dim() - 2))

    floats = [t.weight.param for t in group]
    for t, w in zip(group, floats):  # new tensors: the float ones stay as they were
        _put(t, nn.Parameter(w.detach() * along_inputs(w), requires_grad=False))
    others = [] if repeat != 1 else _other_readers(readers, group, s)
    if others is None:
        undo()
        for t, param in zip(group, floats):
            _put(t, param)
        return False, _other_users(path, readers, group, plain)
    undo_others = _scale_inputs(others, s)
    got = probe()
    err = float((got - ref).float().norm() / ref.float().norm().clamp(min=1e-30))
    if err < 1e-3:
        job.undos += [undo, undo_others]
        also = "" if not others else (
            f" (its other readers' matrices scaled alike: {', '.join(p for p, _ in others)})")
        return True, f"{path!r}{also}"
    undo_others()
    undo()
    for t, param in zip(group, floats):
        _put(t, param)
    return False, _other_users(path, readers, group, plain)


def _other_users(path: str, readers: dict[int, Any], group: list[Target], plain: str) -> str:
    mine = {id(t.module) for t in group}
    users = [r[0] for r in readers.values()  # not the group's modules nor their ancestors
             if not any(id(m) in mine for m in r[1].modules())]  # fmt: skip
    return (f"folding into {path!r} would change the model (its output has other users: "
            f"{', '.join(users) or 'an op outside modules, e.g. a residual sum'}); {plain}")


def _other_readers(readers: dict[int, Any], group: list[Target],
                   s: torch.Tensor) -> list[Any] | None:  # fmt: skip
    """The modules reading the producer's output besides ``group``'s that have float
    matrices (a router, experts ``[e, out, in]``), each with those whose last axis, scaled
    by ``s``, undoes the fold for it (checked on its recorded call: all its matrices of
    ``s.numel()`` columns, else one of them); None when one of them has none such."""
    out = []
    mine = {id(t.module) for t in group}
    for path, module, args, kwargs in readers.values():
        if any(id(m) in mine for m in module.modules()):  # passes the input to the group
            continue
        k = s.numel()
        found = [p for p in module._parameters.values() if type(p) is nn.Parameter
                 and p.dim() >= 2 and p.shape[-1] == k and p.dtype.is_floating_point]  # fmt: skip
        if any(isinstance(p, QTensor) and p.shape[-1] == k for p in module._parameters.values()):
            return None  # already quantized: cannot take the inverse scales
        if id(module) in mine or not found:
            continue
        tries = [found, *([p] for p in found)]
        fits = next((c for c in tries if _undoes(module, c, s, args, kwargs)), None)
        if fits is None:
            return None
        out.append((path, fits))
    return out


def _undoes(module: nn.Module, params: list[nn.Parameter], s: torch.Tensor, args: Any,
            kwargs: dict[str, Any]) -> bool:  # fmt: skip
    """Whether ``module`` gives the same output on its input divided by ``s`` (channels
    last) once ``params``' last axis is multiplied by ``s``."""
    def call(first: torch.Tensor) -> Any:
        if args:
            return module(first, *args[1:], **kwargs)
        key = next(iter(kwargs))
        return module(**{**kwargs, key: first})

    x = args[0] if args else next(iter(kwargs.values()))
    try:
        ref = first_tensor(call(x))
        undo = _scale_inputs([("", params)], s)
        try:
            got = first_tensor(call(x / s.to(x.device, x.dtype)))
        finally:
            undo()
    except Exception:  # a module that cannot be rerun alone: not compensated
        return False
    return bool(torch.allclose(got, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max())))


def _scale_inputs(readers: list[Any], s: torch.Tensor) -> Callable[[], None]:
    """Multiply the last axis of each reader's matrices by ``s`` in place; returns the undo."""
    saved = [(p, p.detach().clone()) for _, params in readers for p in params]
    for p, _ in saved:
        p.data.mul_(s.to(p.device, p.dtype))

    def undo() -> None:
        for p, old in saved:
            p.data.copy_(old)

    return undo


def _whole(x: torch.Tensor | None) -> torch.Tensor | None:
    """The tensor ``x`` is a reshape of (every row, channels last, as MoE layers flatten
    their input), or ``x``: the Linears reading either share one AWQ group."""
    base = None if x is None else x._base
    if base is None or base.dim() == 0 or x.dim() == 0 or x.numel() != base.numel():  # type: ignore[union-attr]
        return x
    same = x.shape[-1] == base.shape[-1] and x.stride(-1) == base.stride(-1)  # type: ignore[union-attr]
    return base if same else x


def producer_of(produced: dict[int, Any], x: torch.Tensor | None) -> Any:
    """The entry of ``produced`` whose module output ``x`` is, or of which ``x`` is a view
    keeping every channel (the last axis) in place (``hidden[:, -n:]``, an LM head's
    ``logits_to_keep``): scaling that output's channels scales ``x``'s alike."""
    if x is None:
        return None
    found = produced.get(id(x))
    if found is not None and found[2] is x:
        return found
    base = x._base
    found = None if base is None else produced.get(id(base))
    if found is None or found[2] is not base or base.dim() == 0 or x.dim() == 0:
        return None
    if x.shape[-1] != base.shape[-1] or x.stride(-1) != base.stride(-1):
        return None
    return found


def _put(t: Target, param: nn.Parameter) -> None:
    """``param`` as the float weight of ``t`` in its module."""
    for _, module in t.weight.users:
        module._parameters[t.weight.attr] = param
    t.weight.param = param

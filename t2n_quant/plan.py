"""Mixed precision: a plan maps module-path globs to codec specs, and :func:`plan` makes one
that meets a size budget with the least end-to-end error.

A plan is a plain, editable mapping ``{glob: spec}`` (``{"model.layers.*.mlp.*": "q4_0",
"lm_head": "symmetric:8:g32", "model.layers.0.*": "float"}``) that
:func:`~t2n_quant.quantize_model` accepts in place of a codec; the first glob matching a
weight's module path decides its codec (``"float"`` keeps it in float). It saves to and
loads from JSON (:meth:`Plan.save`, :meth:`Plan.load`).

:func:`plan` measures each layer's sensitivity: for every layer and candidate codec, the
end-to-end error of the model with only that layer quantized (KL divergence of the
next-token distributions for a model returning ``logits``, relative squared error of the
outputs otherwise; padded tokens left out) on calibration data, the layer rounded as
``quantize_model`` will round it: with a data-aware ``calibration`` (``"gptq"``) by GPTQ on
the Hessian of the layer's inputs in the float model (gathered in one pass for all layers).
The layers are swapped in and out of ``model`` itself (no copy of the model). It then
picks each layer's candidate with the least summed error within
``budget_bits_per_weight`` (stored bits over the values of the planned weights; the errors
of single layers are taken as adding up) by :func:`choose`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2n_core.capture import eval_mode
from t2n_core.progress import progress_bar
from t2n_quant.calibration.registry import is_data_aware
from t2n_quant.calibration_data import batches as calibration_batches
from t2n_quant.calibration_data import like_model
from t2n_quant.codecs import Codec
from t2n_quant.config import resolve
from t2n_quant.data_aware_options import as_options, check_options
from t2n_quant.errors import CalibrationOptionError, PlanError
from t2n_quant.layerwise import _rejected as rejected
from t2n_quant.layerwise import input_hessians, no_fastpath, no_kv_cache, token_mask
from t2n_quant.matmul_weights import to_stored_layout
from t2n_quant.module_state import snapshot
from t2n_quant.weights import collect_weights, filter_reason, glob_list, skip_reason

logger = logging.getLogger(__name__)

FLOAT = "float"
#: the candidates plan() tries when none are given: tract-native 4.5, 3.5 and 2.5, 8.5 bits
CANDIDATES = ("q4_0", "minmax:3:g32", "minmax:2:g32", "symmetric:8:g32")


class Plan(dict[str, str]):
    """``{module path glob: codec spec}``, first match wins; ``"float"`` keeps a weight float.

    >>> p = Plan({"0": "q4_0", "*": "minmax:3:g32"})
    >>> p.codec_for(["2"]).spec
    'minmax:3:g32'
    """

    #: how compare tables name this plan (plan() sets ``plan<=BUDGET``)
    label: str = "plan"

    def codec_for(self, paths: Sequence[str]) -> Codec | None:
        """The codec of the first entry matching one of ``paths`` (None: float or no match)."""
        for glob, spec in self.items():
            if any(fnmatch.fnmatchcase(p, glob) for p in paths):
                return None if spec == FLOAT else resolve(spec)
        return None

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON; the file is replaced whole, never left half-written."""
        path = Path(path)
        part = path.with_name(f".{path.name}.part")
        part.write_text(json.dumps(dict(self), indent=2) + "\n", encoding="utf-8")
        part.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """A plan from a JSON object of ``{glob: spec}`` strings."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise PlanError(f"cannot read plan {path}: {err}") from err
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise PlanError(f"plan {path} must be a JSON object of glob -> codec spec strings")
        return cls(raw)


def bits_per_weight(codec: Codec, shape: Sequence[int]) -> float:
    """Stored bits per value of a weight of ``shape`` under ``codec`` (codes, scales, zeros).

    >>> bits_per_weight(Codec.from_spec("q4_0"), (64, 64))
    4.5
    """
    rows, k = shape[0], math.prod(shape[1:])
    bs = codec.block_size(k)
    n_blocks = rows * (k // bs)
    item = torch.empty(0, dtype=codec.storage_dtype).element_size()
    per_block = codec.bytes_per_block(bs) + item * (2 if codec.has_zero else 1)
    return 8.0 * n_blocks * per_block / (rows * k)


def check_plan(plan: Mapping[str, str], weights: Sequence[Any]) -> dict[str, Codec | None]:
    """Each weight's codec under ``plan`` (by weight name; None: float), or a
    :class:`~t2n_quant.errors.PlanError` listing every problem: bad specs, globs matching no
    weight, codecs that do not fit the weights they match."""

    problems: list[str] = []
    codecs: dict[str, Codec | None] = {}
    bad_keys = [g for g in plan if not isinstance(g, str)]
    if bad_keys:
        problems += [f"{g!r}: a plan's keys are module path globs (strings)" for g in bad_keys]
        plan = {g: s for g, s in plan.items() if isinstance(g, str)}
    for glob, spec in plan.items():
        if spec != FLOAT:
            try:
                codecs[spec] = resolve(spec)
            except ValueError as err:
                problems.append(f"{glob!r}: bad codec spec {spec!r} ({err})")
    used: set[str] = set()
    chosen: dict[str, Codec | None] = {}
    for w in weights:
        paths = [p for p, _ in w.users]
        for glob, spec in plan.items():
            if any(fnmatch.fnmatchcase(p, glob) for p in paths):
                used.add(glob)
                codec = codecs.get(spec)
                if spec != FLOAT and codec is not None:
                    reason = skip_reason(w, codec, 0)
                    if reason is not None:
                        problems.append(f"{w.name} {tuple(w.param.shape)}: {spec} does not fit "
                                        f"({reason}) [entry {glob!r}]")  # fmt: skip
                chosen[w.name] = codec if spec != FLOAT else None
                break
    for glob in plan:
        if glob not in used:
            problems.append(f"{glob!r} matches no quantizable module")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PlanError(f"the plan has {len(problems)} problem(s); nothing was quantized:\n{lines}")
    return chosen


def _output(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, torch.Tensor):
        return out
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0]


def _error(ref: torch.Tensor, got: torch.Tensor, kl: bool, mask: torch.Tensor | None) -> float:
    """The error of one batch's output ``got`` against the float model's ``ref``."""
    if mask is not None and tuple(ref.shape[: mask.dim()]) == tuple(mask.shape):
        ref, got = ref[mask], got[mask]  # padded tokens do not count
    if kl:
        pa, pb = ref.float().log_softmax(-1), got.float().log_softmax(-1)
        return (pa.exp() * (pa - pb)).sum(-1).mean().item()
    return ((ref - got).float().square().sum() / ref.float().square().sum()).item()


def _put(w: Any, value: torch.Tensor) -> None:
    for _, module in w.users:
        module._parameters[w.attr] = value


def _trial(w: Any, codec: Codec, calibration: str, options: dict[str, Any],
           target: Any) -> torch.Tensor:  # fmt: skip
    """``w`` quantized with ``codec`` as quantize_model would (GPTQ when ``target`` holds the
    Hessian of its inputs), as a frozen parameter."""
    from t2n_quant.calibration.gptq import gptq
    from t2n_quant.quantize import quantize_tensor

    inner = options.get("inner", "minmax")
    if target is not None:
        gptq_options = {k: v for k, v in options.items() if k != "inner"}
        new_w, params = gptq(w.param.detach(), target.hessian, codec, inner=inner,
                             **gptq_options)  # fmt: skip
        qt = quantize_tensor(new_w.reshape(w.param.shape), codec, params=params, name=w.name)
        if qt.dtype != w.param.dtype:
            qt = qt.with_inner(lambda x: x, dtype=w.param.dtype)
    else:
        method = inner if is_data_aware(calibration) else calibration
        qt = quantize_tensor(w.param, codec, calibration=method, name=w.name)
    return nn.Parameter(qt, requires_grad=False)


def _measure(
    model: nn.Module,
    layers: list[tuple[Any, list[Codec]]],
    batches: list[Any],
    calibration: str,
    options: dict[str, Any],
    targets: dict[str, Any],
    progress: bool,
) -> dict[tuple[str, str], float]:
    """``{(weight name, codec spec): end-to-end error}``: each layer quantized alone with each
    of its codecs, the error averaged over ``batches``.

    Memory does not grow with the number of batches: per layer, the float output of one batch
    at a time is computed and compared with that batch's outputs of the layer's trials (the
    float forward is repeated once per layer, so ``1 / len(codecs)`` more forward passes
    than holding the float outputs of every batch, whose size is tokens x vocabulary)."""
    errors: dict[tuple[str, str], float] = {}
    masks = [token_mask(b) for b in batches]
    total = len(batches) * sum(len(f) for _, f in layers)
    bar = progress_bar(
        total=total, desc="plan: layer sensitivity", unit="trial", disable=not progress
    )
    with torch.no_grad(), no_kv_cache(model), no_fastpath(), eval_mode(model):
        for w, fits in layers:
            target = targets.pop(w.name, None)
            trials = [_trial(w, c, calibration, options, target) for c in fits]
            if target is not None:
                target.hessian = None
            sums = [0.0] * len(fits)
            original = w.param
            try:
                for b, ((a, k), mask) in enumerate(zip(batches, masks)):
                    try:
                        raw = model(*a, **k)
                    except Exception as err:
                        raise rejected("running the float model", b, err,
                                       f"plan, measuring {w.name}") from err  # fmt: skip
                    kl = isinstance(getattr(raw, "logits", None), torch.Tensor)
                    ref = _output(raw).detach()
                    del raw
                    for i, trial in enumerate(trials):
                        _put(w, trial)
                        got = _output(model(*a, **k))
                        sums[i] += _error(ref, got, kl, mask)
                        _put(w, original)
                        bar.update(1)
                    del ref, got
            finally:
                _put(w, original)
            for codec, s in zip(fits, sums):
                errors[(w.name, codec.spec)] = s / len(batches)
    bar.close()
    return errors


#: one layer's options: ``(bits per weight, error, codec spec)``, fewest bits first
Options = list[tuple[float, float, str]]


def _total(options: dict[str, Options], sizes: dict[str, int], pick: dict[str, int],
           field: int) -> float:  # fmt: skip
    return sum(options[n][i][field] * (sizes[n] if field == 0 else 1) for n, i in pick.items())


def _greedy(options: dict[str, Options], sizes: dict[str, int], budget: float,
            pick: dict[str, int] | None = None) -> dict[str, int]:  # fmt: skip
    """From ``pick`` (default: every layer at its fewest bits), upgrade the layer with the
    largest error decrease per added bit while the budget allows."""
    pick = dict(pick) if pick is not None else {name: 0 for name in options}
    used = _total(options, sizes, pick, 0)
    while True:
        best = None
        for name, i in pick.items():
            bits0, err0, _ = options[name][i]
            for j in range(i + 1, len(options[name])):
                bits1, err1, _ = options[name][j]
                extra = (bits1 - bits0) * sizes[name]
                if err1 >= err0 or used + extra > budget:
                    continue
                gain = (err0 - err1) / max(extra, 1e-9)
                if best is None or gain > best[0]:
                    best = (gain, name, j, extra)
        if best is None:
            return pick
        _, name, j, extra = best
        pick[name] = j
        used += extra


def _knapsack(options: dict[str, Options], sizes: dict[str, int], budget: float,
              steps: int = 4096) -> dict[str, int] | None:  # fmt: skip
    """The least summed error within ``budget`` by dynamic programming over the layers, each
    layer's bits rounded up to ``budget / steps`` (so the result always fits); None when
    the rounding leaves no fit."""
    unit = budget / steps
    names = list(options)
    inf = float("inf")
    best = torch.full((steps + 1,), inf, dtype=torch.float64)
    best[0] = 0.0
    choices, costs = [], []
    for name in names:
        cost = [math.ceil(bits * sizes[name] / unit - 1e-9) for bits, _, _ in options[name]]
        new = torch.full_like(best, inf)
        arg = torch.full((steps + 1,), -1, dtype=torch.long)
        for j, ((_, err, _), c) in enumerate(zip(options[name], cost)):
            if c > steps:
                continue
            cand = torch.full_like(best, inf)
            cand[c:] = best[: steps + 1 - c] + err
            better = cand < new
            new[better], arg[better] = cand[better], j
        best = new
        choices.append(arg)
        costs.append(cost)
    end = int(torch.argmin(best))
    if not math.isfinite(float(best[end])):
        return None
    pick: dict[str, int] = {}
    for name, arg, cost in zip(reversed(names), reversed(choices), reversed(costs)):
        j = int(arg[end])
        pick[name] = j
        end -= cost[j]
    return {name: pick[name] for name in names}


def choose(options: dict[str, Options], sizes: dict[str, int], budget: float) -> dict[str, int]:
    """Each layer's option (an index into ``options[name]``) with the least summed error
    within ``budget`` stored bits: the better of an exact-up-to-rounding dynamic program
    (then topped up greedily with what its rounding left) and the greedy upgrade by error
    decrease per bit, which alone can spend the budget on a cheap gain and miss a better
    combination.

    >>> opts = {"a": [(1, 10.0, "a1"), (2, 4.0, "a2")], "b": [(1, 10.0, "b1"), (3, 0.0, "b3")]}
    >>> choose(opts, {"a": 1, "b": 1}, 4.0)  # greedy alone takes a2 (then b3 no longer fits)
    {'a': 0, 'b': 1}
    """
    picks = [_greedy(options, sizes, budget)]
    exact = _knapsack(options, sizes, budget)
    if exact is not None:
        picks.append(_greedy(options, sizes, budget, exact))
    return min(picks, key=lambda p: _total(options, sizes, p, 1))


def _like_model(batches: list[Any], model: nn.Module) -> list[Any]:
    batches, converted = like_model(batches, model)
    if converted is not None:
        logger.warning("plan: %s", converted)
    return batches


@contextlib.contextmanager
def quantize_layout(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` laid out as quantize_model lays it out (transformers Conv1D as Linear,
    experts ``[experts, out, in]``), so that a plan covers and checks the same weights, with
    their shapes; put back as it was after."""
    restore = snapshot(model)
    try:
        to_stored_layout(model)
        yield model
    finally:
        restore()


def _as_quantize_model_sees(fn: Callable[..., Plan]) -> Callable[..., Plan]:
    @functools.wraps(fn)
    def wrapped(model: nn.Module, *args: Any, **kwargs: Any) -> Plan:
        with quantize_layout(model):
            return fn(model, *args, **kwargs)

    return wrapped


@_as_quantize_model_sees
def plan(
    model: nn.Module,
    budget_bits_per_weight: float = 4.5,
    candidates: Sequence[str] = CANDIDATES,
    *,
    data: Any,
    calibration_data: Any = None,
    calibration: str = "mse",
    calibration_options: dict[str, Any] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int = 4,
    progress: bool = True,
) -> Plan:
    """A :class:`Plan` (one entry per weight) within ``budget_bits_per_weight``, least
    end-to-end error first (see the module docstring). Layers are measured with
    ``calibration`` (weight-only, or ``"gptq"`` / ``"gptq:mse"`` with
    ``calibration_options`` as for ``quantize_model``); ``data`` takes the forms of
    :mod:`t2n_quant.calibration_data` (its first ``max_batches`` batches are used);
    ``calibration_data`` (same forms, default ``data``) gives gptq its Hessians, so that the
    layers are rounded as ``quantize_model(..., data=calibration_data)`` will round them.
    ``model`` is left as it was.

    >>> torch.manual_seed(0); m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    <torch._C.Generator object at ...>
    >>> p = plan(m, 4.0, ["q4_0", "minmax:2:g32"], data=torch.randn(8, 64), progress=False)
    >>> sorted(p.values())
    ['minmax:2:g32', 'q4_0']
    """

    options = as_options(calibration_options)
    if is_data_aware(calibration) and ":" in calibration:
        calibration, options["inner"] = calibration.split(":", 1)
    if is_data_aware(calibration) and calibration != "gptq":
        raise PlanError(f"plan measures layers with weight-only calibrations or 'gptq', "
                        f"not {calibration!r}")  # fmt: skip
    if not is_data_aware(calibration) and options:
        raise CalibrationOptionError(
            f"calibration_options {sorted(options)} given to weight-only {calibration!r}"
        )
    if options:
        check_options("gptq", options)
    for key in ("sequential", "float_target", "tune_steps", "tune_lr"):
        if options.pop(key, None) is not None:
            logger.warning("plan: each layer is measured alone on the float model's inputs; "
                           "the %r option applies to quantize_model only", key)  # fmt: skip
    if calibration_data is not None and not is_data_aware(calibration):
        logger.warning("plan: calibration_data is used by gptq only; %r ignores it", calibration)
    codecs = [resolve(c) for c in candidates]
    if not codecs:
        raise PlanError("plan needs at least one candidate codec")
    batches = _like_model(calibration_batches(data, max_batches), model)
    inc, exc = glob_list(include), glob_list(exclude)
    layers = []
    for w in collect_weights(model):
        if any(filter_reason(p, inc, exc) for p, _ in w.users):
            continue
        fits = [c for c in codecs if skip_reason(w, c, 0) is None]
        if fits:
            layers.append((w, fits))
        else:
            logger.info("plan: no candidate fits %s; it stays float", w.name)
    if not layers:
        raise PlanError("no weight of the model fits any candidate codec")

    targets = {}
    if is_data_aware(calibration):
        hessian_batches = batches
        if calibration_data is not None:
            hessian_batches = _like_model(calibration_batches(calibration_data, max_batches),
                                          model)  # fmt: skip
        with torch.no_grad(), no_kv_cache(model), no_fastpath(), eval_mode(model):
            targets = input_hessians(model, [w for w, _ in layers], hessian_batches)
        for w, _ in layers:
            if w.name not in targets:
                logger.info("plan: gptq applies to %s (a %s) only weight-only", w.name,
                            w.module_type)  # fmt: skip
    errors = _measure(model, layers, batches, calibration, options, targets, progress)

    sizes = {w.name: w.param.numel() for w, _ in layers}
    budget = budget_bits_per_weight * sum(sizes.values())
    per_layer: dict[str, Options] = {}
    for w, fits in layers:
        per_layer[w.name] = sorted((bits_per_weight(c, w.param.shape), errors[(w.name, c.spec)],
                                    c.spec) for c in fits)  # fmt: skip
    used = sum(per_layer[n][0][0] * sizes[n] for n in per_layer)
    if used > budget:
        raise PlanError(
            f"even the smallest candidates need {used / sum(sizes.values()):.3f} bits per weight, "
            f"over the budget of {budget_bits_per_weight}"
        )
    pick = choose(per_layer, sizes, budget)
    used = sum(per_layer[n][pick[n]][0] * sizes[n] for n in per_layer)
    out = Plan()
    out.label = f"plan<={budget_bits_per_weight:g}"
    for w, _ in layers:
        out[w.users[0][0]] = per_layer[w.name][pick[w.name]][2]
    logger.info("plan: %.3f bits per weight (budget %s)", used / sum(sizes.values()),
                budget_bits_per_weight)  # fmt: skip
    return out

"""``quantize_model``: replace the weights of Linear / Embedding / Conv / recurrent modules (and
the 3-D expert weights of transformers MoE layers) by QTensors.

Each new weight is ``nn.Parameter(qtensor, requires_grad=False)``, which for a tensor
subclass *is* the QTensor flagged as a parameter: it stays in ``module._parameters``,
``state_dict()`` and ``model.to(device)`` (moved compressed). A weight shared by several
modules (tied embedding and LM head) is quantized once and the same object is assigned
to all of them.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from t2n_core.capture import eval_mode
from t2n_core.deferred import DeferredTensor
from t2n_core.lora import adapter_parameters
from t2n_core.lora import apply as apply_lora
from t2n_core.lora import plan_for_quantization as plan_lora_for_quantization
from t2n_core.progress import progress_bar
from t2n_core.summary import human_bytes
from t2n_quant.calibration import Calibration, get_calibration
from t2n_quant.calibration.registry import is_data_aware
from t2n_quant.calibration_data import batches as calibration_batches
from t2n_quant.calibration_data import fingerprint, like_model
from t2n_quant.codecs import Codec, Q4_0Codec
from t2n_quant.config import QuantConfig, resolve
from t2n_quant.data_aware_options import (
    DEFAULTS,
    as_options,
    check_device,
    check_options,
    parameters,
)
from t2n_quant.errors import CalibrationOptionError, ConfigSpecError
from t2n_quant.layerwise import quantize_with_data
from t2n_quant.matmul_weights import to_stored_layout
from t2n_quant.module_state import snapshot
from t2n_quant.parametrizations import bake_weight_parametrizations
from t2n_quant.plan import check_plan
from t2n_quant.qtensor import QTensor
from t2n_quant.quantize import quantize_deferred, quantize_tensor
from t2n_quant.summary import QuantizationSummary, QuantizedWeight, SkippedWeight
from t2n_quant.weights import (
    SUPPORTED_MODULES,
    Weight,
    codec_misfit,
    collect_weights,
    filter_reason,
    glob_list,
    skip_reason,
)

logger = logging.getLogger(__name__)


def _warn_unmatched(
    model: nn.Module, inc: list[str] | None, exc: list[str] | None, summary: QuantizationSummary
) -> None:
    """An include/exclude glob that matches no module path is most likely a typo: say so."""
    paths = [p for p, _ in model.named_modules()]
    for kind, globs in (("include", inc), ("exclude", exc)):
        for g in globs or []:
            if not any(fnmatch.fnmatchcase(p, g) for p in paths):
                note = (
                    f"{kind} pattern {g!r} matches no module (module paths look like {paths[1:4]})"
                )
                logger.warning("%s", note)
                summary.notes.append(note)


def _prepare_lora(model: nn.Module, lora: str | None) -> list[str]:
    """Merge the LoRA adapters in place when ``lora="merged"``; notes for the summary."""
    plan = plan_lora_for_quantization(model, lora)
    if plan is None:
        return []
    if plan.mode == "merged":
        apply_lora(model, plan)
    return [*plan.scan.notes, plan.summary()]


def _adapter_reason(adapters: dict[int, str], param: torch.Tensor) -> str:
    site = repr(adapters[id(param)]) if adapters[id(param)] else "the model"
    return (
        f"LoRA adapter of {site}: kept float, apart from its base weight "
        "(lora='separate'; lora='merged' folds it into the weight before quantizing)"
    )


def _list_unreachable(
    model: nn.Module,
    collected: list[Weight],
    summary: QuantizationSummary,
    adapters: dict[int, str] | None = None,
) -> None:
    """List, as skipped, every float matrix (2-D or more) that no supported module owns."""
    seen = {id(w.param) for w in collected}
    owners = {
        id(p): (f"{path}.{name}" if path else name, type(m).__name__)
        for path, m in model.named_modules()
        for name, p in m.named_parameters(recurse=False)
    }
    for param in model.parameters():
        if id(param) in seen or param.ndim < 2 or not param.dtype.is_floating_point:
            continue
        if isinstance(param, QTensor):
            continue
        seen.add(id(param))
        name, module_type = owners[id(param)]
        if adapters and id(param) in adapters:
            summary.skipped.append(SkippedWeight(
                name, module_type, tuple(param.shape), _adapter_reason(adapters, param),
                param.nbytes,
            ))  # fmt: skip
            continue
        reason = (
            f"a {module_type} parameter: quantize_model takes the weights of "
            f"{', '.join(t.__name__ for t in SUPPORTED_MODULES)} and transformers Conv1D / "
            "MoE experts only"
        )
        summary.skipped.append(
            SkippedWeight(name, module_type, tuple(param.shape), reason, param.nbytes)
        )


def _all_or_nothing(fn: Callable[..., QuantizationSummary]) -> Callable[..., QuantizationSummary]:
    """On any error, give every module of the model its class and attributes back (shallow:
    the same tensors and submodules), undoing what ran before quantizing proper: Conv1D
    swapped for Linear, experts transposed, parametrizations baked, LoRA merged."""

    @functools.wraps(fn)
    def guarded(model: nn.Module, *args: Any, **kwargs: Any) -> QuantizationSummary:
        restore = snapshot(model)
        try:
            return fn(model, *args, **kwargs)
        except Exception as exc:
            restore()
            note = "quantize_model put every float weight back: the model is unchanged"
            if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", []):
                exc.add_note(note)
            raise

    return guarded


@_all_or_nothing
def quantize_model(
    model: nn.Module,
    codec_or_config: str | QuantConfig | Codec | Mapping[str, str],
    *,
    bits: int | None = None,
    group_size: int | None = None,
    calibration: str | Calibration = "minmax",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    min_numel: int = 0,
    fallback: str | QuantConfig | Codec | None = None,
    data: Any = None,
    calibration_options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    lora: str | None = None,
) -> QuantizationSummary:
    """Quantize, in place, the weights of ``model``'s Linear / Embedding / Conv modules
    (and the input projections of ``nn.MultiheadAttention``, the input, hidden and
    projection matrices of every layer and direction of ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``,
    and the 3-D expert weights of transformers MoE layers). transformers ``Conv1D`` layers
    (GPT-2) are first replaced by the equivalent ``nn.Linear``, and experts stored
    ``[experts, in, out]`` (GPT-OSS) transposed (:mod:`t2n_quant.matmul_weights`).
    Any other float parameter of rank >= 2 is left as it is and listed in the summary's
    skipped weights, with the reason.

    ``codec_or_config`` is a spec (``"q4_0"``, ``"minmax:4:g32"``), a config
    (:class:`~t2n_quant.config.MinMaxConfig`, ...) or a codec; ``bits`` / ``group_size``
    override it when given (``group_size=None``, the default, keeps the spec's group size;
    ``-1`` gives one group per output channel). It may also
    be a plan, ``{module path glob: spec}`` (:mod:`t2n_quant.plan`): the first matching glob
    gives each weight its codec; a plan naming modules that do not exist or codecs that do
    not fit raises :class:`~t2n_quant.errors.PlanError` listing them all before anything
    is quantized.
    ``include`` / ``exclude`` are ``fnmatch`` globs on module paths (``"layers.*.mlp.*"``).
    ``calibration`` is ``"minmax"``, ``"mse"``, ``"hqq"`` or a function. Weights the codec
    cannot take stay in float and are listed, with the reason, in the returned summary; a
    weight shared by several modules is quantized once and stays shared.
    ``fallback`` (e.g. ``"minmax:4:pc"``) quantizes the weights the main codec cannot take
    (a shape q4_0's blocks of 32 do not divide, a transposed conv); the summary lists the
    codec of each weight and the overall bits per weight.
    ``calibration="gptq"`` is data-aware: ``data`` (tensors, batches or a DataLoader, see
    :mod:`t2n_quant.calibration_data`) is run through the model and each Linear weight is
    rounded with GPTQ's error compensation (:mod:`t2n_quant.layerwise`), on ``device``
    (``"cuda"``) block by block; ``calibration_options`` go to the method (``damp``,
    ``inner`` = the weight-only calibration choosing each group's scale, ``block``,
    ``act_order``, ``sequential``: within a block, gather each stage's inputs through the
    already quantized Linears before it, default True; ``float_target``: fit each weight
    so that its output on those inputs comes closest to the float model's, default True);
    ``"gptq:mse"`` is short for ``inner="mse"``.
    The summary records the calibration, its options and a hash of the data, and so does
    ``model.t2n_properties``, which export writes into the archive's properties.
    LoRA adapters (PEFT or plain ``lora_A`` / ``lora_B``, :mod:`t2n_core.lora`): with
    ``lora="separate"`` (the default) their A / B matrices stay float, listed as skipped, and
    only the base weights are quantized (export then writes them apart, swappable); with
    ``lora="merged"`` each adapted layer is first replaced, in place, by one layer of weight
    ``W + s·B·A``, which is then quantized like any other.

    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> s = quantize_model(model, "minmax", bits=4, group_size=32, exclude="2", progress=False)
    >>> [q.name for q in s.quantized], [k.name for k in s.skipped]
    (['0.weight'], ['2.weight'])
    """
    lora_notes = _prepare_lora(model, lora)
    adapters = adapter_parameters(model)
    to_stored_layout(model)
    planned: dict[str, Codec | None] | None = None
    if isinstance(codec_or_config, Mapping):  # a plan: {module glob: spec}, checked up front
        given = [n for n, v in (("bits", bits), ("group_size", group_size),
                                ("fallback", fallback)) if v is not None]  # fmt: skip
        if given:
            raise ConfigSpecError(
                f"{', '.join(given)} cannot go with a plan: it gives each weight its codec "
                "(write the bits and group size in its specs, 'float' for the weights to keep)"
            )
        planned = check_plan(codec_or_config, collect_weights(model))
        specs = sorted({c.spec for c in planned.values() if c is not None})
        codec = resolve(specs[0]) if specs else Q4_0Codec()
    else:
        codec = resolve(codec_or_config, bits=bits, group_size=group_size)
    second = resolve(fallback) if fallback is not None else None
    options = as_options(calibration_options)
    data_aware = is_data_aware(calibration)
    if data_aware and ":" in str(calibration):  # "gptq:mse": the inner calibration
        method, inner = str(calibration).split(":", 1)
        if options.get("inner", inner) != inner:
            raise CalibrationOptionError(
                f"calibration {calibration!r} says inner={inner!r}, calibration_options "
                f"inner={options['inner']!r}: give one"
            )
        calibration, options["inner"] = method, inner
    if data_aware:
        check_options(str(calibration), options)
        check_device(device)
    calibrate = get_calibration(options.get("inner", "minmax") if data_aware else calibration)
    if not data_aware and options:
        raise CalibrationOptionError(
            f"calibration_options {sorted(options)} given to weight-only {calibration!r}"
        )
    cal_name = getattr(calibration, "__name__", "custom")
    cal_name = calibration if isinstance(calibration, str) else cal_name
    label = codec.spec if planned is None else f"plan ({', '.join(specs) or 'all float'})"
    summary = QuantizationSummary(label, cal_name, fallback=second and second.spec)
    summary.calibration_options = options
    if data_aware:
        summary.calibration_parameters = parameters(str(calibration), options)
    batches = None
    if data_aware:
        batches = calibration_batches(data)
        summary.data_hash = fingerprint(batches)  # the data as given, before conversion
        batches, converted = like_model(batches, model, move=device is None)
        if converted is not None:
            summary.notes.append(converted)
    else:
        ignored = [(what, value) for what, value in (("data", data), ("device", device))
                   if value is not None]  # fmt: skip
        for what, _ in ignored:
            note = (f"{what} ignored: calibration {cal_name!r} looks at weights only (use "
                    "'gptq' or 'awq' for calibration on data)")  # fmt: skip
            logger.warning("%s", note)
            summary.notes.append(note)
    inc, exc = glob_list(include), glob_list(exclude)
    _warn_unmatched(model, inc, exc, summary)
    summary.notes += lora_notes
    summary.notes += bake_weight_parametrizations(model, SUPPORTED_MODULES)
    todo: list[tuple[Weight, Codec]] = []
    collected = collect_weights(model)
    _list_unreachable(model, collected, summary, adapters)
    for w in collected:
        if id(w.param) in adapters:
            summary.skipped.append(SkippedWeight(
                w.name, w.module_type, tuple(w.param.shape), _adapter_reason(adapters, w.param),
                w.param.numel() * w.param.element_size(),
            ))  # fmt: skip
            continue
        reasons = [(p, filter_reason(p, inc, exc)) for p, _ in w.users]
        blocked = [(p, r) for p, r in reasons if r is not None]
        reason = None
        if len(blocked) == len(w.users):
            reason = blocked[0][1]
        elif blocked:
            reason = f"tied with {blocked[0][0] or 'the model'!r}, left in float ({blocked[0][1]})"
        chosen = codec
        if planned is not None and reason is None:
            chosen = planned.get(w.name)  # type: ignore[assignment]
            if chosen is None:
                reason = "the plan keeps it in float" if w.name in planned else "not in the plan"
        if reason is None and (reason := skip_reason(w, chosen, min_numel)) is not None:
            if second is not None and codec_misfit(w, chosen, min_numel):
                fallback_reason = skip_reason(w, second, min_numel)
                if fallback_reason is None:
                    chosen, reason = second, None
                else:
                    reason = f"{reason}; fallback {second.spec}: {fallback_reason}"
        if reason is not None:
            nbytes = getattr(w.param, "nbytes", w.param.numel() * w.param.element_size())
            summary.skipped.append(
                SkippedWeight(w.name, w.module_type, tuple(w.param.shape), reason, nbytes)
            )
        else:
            todo.append((w, chosen))
    originals = [(w, w.param) for w, _ in todo]
    undos: list[Callable[[], None]] = []  # awq's folds into the ops before its Linears
    try:  # all or nothing: on any error every weight gets its float tensor back
        if batches is not None:
            if any(m.training for m in model.modules()):
                summary.notes.append("the model is in training mode: calibrated in eval mode "
                                     "(no dropout), its modes left as they were")  # fmt: skip
            with eval_mode(model):
                todo = quantize_with_data(
                    model, todo, batches, lambda w, c, qt: _install(w, c, qt, summary),
                    summary, method=str(calibration), device=device,
                    options={**DEFAULTS[str(calibration)], **options},  # as recorded
                    progress=progress, undos=undos,
                )  # fmt: skip
        desc = f"quantizing ({codec.spec})"
        for w, chosen in progress_bar(todo, desc=desc, unit="weight", disable=not progress):
            if isinstance(w.param, DeferredTensor):  # not read yet: quantized when written
                qt = quantize_deferred(w.param, chosen, calibration=calibrate, name=w.name)
            else:
                qt = quantize_tensor(w.param, chosen, calibration=calibrate, name=w.name)
            _install(w, chosen, qt, summary)
    except Exception as exc:
        for undo in reversed(undos):
            undo()
        for w, param in originals:
            _restore(w, param)
        if hasattr(exc, "add_note"):
            exc.add_note("quantize_model put every float weight back: the model is unchanged")
        logger.error("quantize_model failed, the model is unchanged: %s", exc)
        raise
    if summary.quantized:
        props = {f"quantization.{k}": v for k, v in summary.provenance.items()}
        model.t2n_properties = {**(getattr(model, "t2n_properties", None) or {}), **props}
    float_bytes = sum(k.nbytes for k in summary.skipped if not k.reason.startswith("already"))
    if float_bytes > summary.bytes_before:
        share = 100 * float_bytes / (float_bytes + summary.bytes_before)
        note = (
            f"most of the model stays float: {human_bytes(float_bytes)} of weights ({share:.0f}% "
            "of weight bytes) left in float; see the skipped list for each one's reason"
        )
        logger.warning("%s", note)
        summary.notes.append(note)
    logger.info("%s", summary.headline())
    return summary


def _restore(w: Weight, param: torch.Tensor) -> None:
    """Put ``param`` (the float weight) back in every module using ``w``."""
    for _, module in w.users:
        module._parameters[w.attr] = param
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()
    w.param = param


def _install(
    w: Weight, codec: Codec, qt: QTensor | DeferredTensor, summary: QuantizationSummary
) -> None:
    """``qt`` in place of ``w`` in every module using it, recorded in ``summary``."""
    before = w.param.numel() * w.param.element_size()
    new = qt if isinstance(qt, DeferredTensor) else nn.Parameter(qt, requires_grad=False)
    if isinstance(qt, DeferredTensor):
        qt = qt.encoded_like  # an empty QTensor: the layout and sizes it will be written in
    for _, module in w.users:
        module._parameters[w.attr] = new
        if isinstance(module, nn.RNNBase):
            module._init_flat_weights()  # its forward reads this cached list
    w.param = new
    summary.quantized.append(
        QuantizedWeight(
            w.name, tuple(p for p, _ in w.users), w.module_type, tuple(qt.shape),
            codec.spec, qt.bits_per_weight, before, qt.nbytes,
        )
    )  # fmt: skip

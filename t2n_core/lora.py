"""LoRA adapters: found in a model, exported merged or kept apart from the base weight.

A *LoRA site* is a linear layer whose output is ``x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`` with a low-rank
pair ``A [r, in]``, ``B [out, r]`` and a scale ``s``. Two layouts are found:

- PEFT (``peft`` from PyPI): a ``lora.Linear`` tuner layer (``base_layer``, ``lora_A`` /
  ``lora_B`` per adapter name, ``scaling``); its one active adapter is the site's adapter;
- plain: a module with ``lora_A`` and ``lora_B`` (``nn.Linear`` children or 2-D parameters)
  beside its own ``weight`` (an ``nn.Linear`` subclass, as loralib's) or one ``nn.Linear``
  child; ``s`` is its ``scaling`` / ``scale`` attribute, else read off its output.

Either way the site is checked on a probe input before anything is exported: its output
must equal the formula above (so a forward doing something else is refused, never exported
wrong). Exported *separate*, each site becomes :class:`SeparateLora` during the capture: the
graph computes ``base(x) + (x·Aᵀ)·Bᵀ·s`` and the adapter lives in three files named after the
site's module path ``P`` in the exported model: ``P.lora_A.dat``, ``P.lora_B.dat`` and
``P.lora_scale.dat`` (a 1-element tensor), in the adapter's own dtype (never quantized). The
archive's ``lora.sites`` property lists the sites (path, rank, in, out) so that
:func:`t2n_core.lora_swap.swap_adapter` can replace those files. Exported *merged*, each site
becomes one linear layer of weight ``W + s·B·A`` (PEFT's own merge for PEFT layers, which also
covers DoRA and the other PEFT tuners).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from t2n_core.deferred import DeferredTensor
from t2n_core.errors import LoraError

logger = logging.getLogger(__name__)

LoraMode = Literal["separate", "merged"]
MODES = ("separate", "merged")
#: file stems of a site's adapter tensors, after its module path
SUFFIXES = ("lora_A", "lora_B", "lora_scale")


def stem(path: str, suffix: str) -> str:
    """The file stem of a site's adapter tensor: ``<path>.<suffix>`` (``<suffix>`` for a site
    that is the exported model itself).

    >>> stem("layers.0.q_proj", "lora_A"), stem("", "lora_scale")
    ('layers.0.q_proj.lora_A', 'lora_scale')
    """
    return f"{path}.{suffix}" if path else suffix


#: archive property listing the separate sites (JSON: path, rank, in, out)
SITES_PROPERTY = "lora.sites"
MODE_PROPERTY = "lora.mode"
#: the prefix PEFT puts before module paths (``PeftModel.base_model.model``)
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSite:
    """One adapted linear layer (see the module docstring)."""

    path: str
    module: nn.Module
    layout: Literal["peft", "plain"]
    adapter: str  # PEFT adapter name; "" for the plain layout
    a: torch.Tensor | None = None  # [r, in]
    b: torch.Tensor | None = None  # [out, r]
    scale: float = 1.0
    dropout: float = 0.0
    problem: str | None = None  # why it cannot be kept separate (None: it can)

    @property
    def rank(self) -> int:
        assert self.a is not None
        return int(self.a.shape[0])


@dataclass
class LoraScan:
    """The LoRA sites of a model, and what is worth telling about them."""

    sites: list[LoraSite] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _mro_names(module: nn.Module) -> set[str]:
    return {f"{c.__module__.split('.')[0]}.{c.__name__}" for c in type(module).__mro__}


def is_peft_tuner(module: nn.Module) -> bool:
    """Whether ``module`` is a PEFT tuner layer (LoRA, LoHa, IA3, ...)."""
    return "peft.BaseTunerLayer" in _mro_names(module)


def _is_peft_lora(module: nn.Module) -> bool:
    return (
        is_peft_tuner(module)
        and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "scaling", None), dict)
    )


def _is_plain_lora(module: nn.Module) -> bool:
    pair = (getattr(module, "lora_A", None), getattr(module, "lora_B", None))
    return not is_peft_tuner(module) and all(isinstance(m, (nn.Linear, torch.Tensor)) for m in pair)


def _matrix(owner: nn.Module, name: str) -> torch.Tensor:
    value = getattr(owner, name)
    if isinstance(value, nn.Linear):
        if value.bias is not None:
            raise LoraError(f"{name} of a plain LoRA layer has a bias; only bias-free A/B fit")
        return value.weight
    return value


def _scale_of(module: nn.Module) -> float | None:
    for attr in ("scaling", "scale"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value)
    return None


def _dropout_p(module: nn.Module | None) -> float:
    return float(module.p) if isinstance(module, nn.Dropout) else 0.0


def _peft_site(path: str, module: nn.Module) -> LoraSite:
    active = [a for a in module.active_adapters if a in module.lora_A]
    site = LoraSite(path, module, "peft", ",".join(active))
    if module.disable_adapters:
        site.problem = "its adapters are disabled (disable_adapter()): it runs as its base layer"
        return site
    if module.merged:
        site.problem = (
            f"adapter(s) {module.merged_adapters} are already merged into its base weight "
            "(unmerge_adapter() first to keep them apart)"
        )
        return site
    if not active:
        embedding = set(module.active_adapters) & set(getattr(module, "lora_embedding_A", {}))
        what = "Embedding" if embedding else type(module.get_base_layer()).__name__
        site.problem = f"LoRA on {what} layers can only be exported merged"
        return site
    if len(active) > 1:
        site.problem = (
            f"{len(active)} adapters are active at once ({', '.join(active)}); activate one "
            "with set_adapter(name), or export them merged"
        )
        return site
    name = active[0]
    a_mod, b_mod = module.lora_A[name], module.lora_B[name]
    variant = getattr(module, "lora_variant", {}).get(name)
    if variant is not None or getattr(module, "use_dora", {}).get(name):
        kind = "DoRA" if getattr(module, "use_dora", {}).get(name) else type(variant).__name__
        site.problem = f"adapter {name!r} is a {kind} variant, not plain LoRA"
    elif not (isinstance(a_mod, nn.Linear) and isinstance(b_mod, nn.Linear)):
        site.problem = f"its adapter is a {type(a_mod).__name__}, not a linear pair"
    elif b_mod.bias is not None:
        site.problem = f"adapter {name!r} has a bias on lora_B (lora_bias=True)"
    site.a, site.b = a_mod.weight, b_mod.weight
    site.scale = float(module.scaling[name])
    site.dropout = _dropout_p(module.lora_dropout[name]) if name in module.lora_dropout else 0.0
    return site


def _plain_site(path: str, module: nn.Module) -> LoraSite:
    site = LoraSite(path, module, "plain", "")
    site.a, site.b = _matrix(module, "lora_A"), _matrix(module, "lora_B")
    scale = _scale_of(module)
    site.scale = 1.0 if scale is None else scale  # None: read off the output later
    site.dropout = _dropout_p(getattr(module, "lora_dropout", None))
    if site.a.ndim != 2 or site.b.ndim != 2 or site.b.shape[1] != site.a.shape[0]:
        site.problem = (
            f"lora_A {tuple(site.a.shape)} and lora_B {tuple(site.b.shape)} are not a "
            "[r, in], [out, r] pair"
        )
    elif getattr(module, "merged", False):
        site.problem = "its adapter is already merged into its weight (merged=True)"
    elif _plain_base(module) is None:
        site.problem = "it has neither its own 2-D weight nor exactly one nn.Linear child"
    return site


def _plain_base(module: nn.Module) -> nn.Module | None:
    """The base layer of a plain site: itself (its own ``weight``) or its one Linear child."""
    if isinstance(module, nn.Linear) or (
        isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim == 2
    ):
        return module
    children = [
        m for n, m in module.named_children()
        if isinstance(m, nn.Linear) and n not in ("lora_A", "lora_B")
    ]  # fmt: skip
    return children[0] if len(children) == 1 else None


def find_lora(model: nn.Module) -> LoraScan:
    """Every LoRA site of ``model`` (outermost first) and the notes worth reporting.

    >>> class Lora(nn.Linear):
    ...     def __init__(self):
    ...         super().__init__(8, 8)
    ...         self.lora_A = nn.Parameter(torch.randn(2, 8))
    ...         self.lora_B = nn.Parameter(torch.randn(8, 2))
    >>> [(s.path, s.rank) for s in find_lora(nn.Sequential(Lora())).sites]
    [('0', 2)]
    """
    scan = LoraScan()
    seen: set[int] = set()
    others: dict[str, list[str]] = {}
    inactive: dict[str, int] = {}
    for path, module in model.named_modules():
        if id(module) in seen or any(
            s.path == "" or path.startswith(f"{s.path}.") for s in scan.sites
        ):
            continue
        if _is_peft_lora(module):
            site = _peft_site(path, module)
            for name in set(module.lora_A) - set(module.active_adapters):
                inactive[name] = inactive.get(name, 0) + 1
        elif _is_plain_lora(module):
            site = _plain_site(path, module)
        elif is_peft_tuner(module) and hasattr(module, "merge"):
            site = LoraSite(path, module, "peft", "")
            site.problem = f"{type(module).__module__}.{type(module).__name__} is not LoRA"
            others.setdefault(type(module).__name__, []).append(path)
        else:
            continue
        seen.add(id(module))
        scan.sites.append(site)
    for name, count in sorted(inactive.items()):
        scan.notes.append(
            f"adapter {name!r} is loaded on {count} module(s) but not active: it is not exported"
        )
    dropped = [s for s in scan.sites if s.dropout > 0]
    if dropped:
        ps = sorted({s.dropout for s in dropped})
        scan.notes.append(
            f"lora_dropout (p={', '.join(f'{p:g}' for p in ps)}) on {len(dropped)} adapted "
            "module(s) is a training-time op: inactive at inference, not exported"
        )
    for kind, paths in others.items():
        scan.notes.append(f"{len(paths)} PEFT {kind} layer(s) (not LoRA), e.g. {paths[0]!r}")
    return scan


class SeparateLora(nn.Module):
    """``base(x) + (x·Aᵀ)·Bᵀ·s`` with ``A``, ``B`` and ``s`` as tensors of their own.

    ``base`` is the site's base layer (kept as the child ``base_name``, so its weights keep
    their names), or ``None`` when the site holds its own ``weight`` / ``bias`` (then
    registered here under the same names).
    """

    def __init__(self, site: LoraSite, base: nn.Module | None, base_name: str = "base_layer"):
        super().__init__()
        assert site.a is not None and site.b is not None
        self.base_name = base_name if base is not None else None
        if base is None:
            self.weight = site.module.weight
            self.bias = getattr(site.module, "bias", None)
        else:
            self.add_module(base_name, base)
        self.lora_A = _as_parameter(site.a)
        self.lora_B = _as_parameter(site.b)
        self.register_buffer("lora_scale", torch.tensor([site.scale], dtype=site.b.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.base_name is not None:
            y = self._modules[self.base_name](x)
        else:
            y = F.linear(x, self.weight, self.bias)
        a = self.lora_A
        delta = F.linear(F.linear(x.to(a.dtype), a), self.lora_B) * self.lora_scale
        return (y + delta).to(y.dtype)  # as PEFT: summed in the wider dtype


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)


def _separate_module(site: LoraSite) -> SeparateLora:
    if site.layout == "peft":
        return SeparateLora(site, site.module.get_base_layer())
    base = _plain_base(site.module)
    if base is site.module:
        return SeparateLora(site, None)
    names = [n for n, m in site.module.named_children() if m is base]
    return SeparateLora(site, base, names[0])


def _merged_module(site: LoraSite) -> nn.Module:
    """A linear layer holding ``W + s·B·A`` (PEFT's merge for PEFT layers), built on copies:
    the site's own tensors are left as they are."""
    module = site.module
    if site.layout == "peft" and (module.disable_adapters or module.merged):
        return module.get_base_layer()  # it already runs as its base layer
    if site.layout == "peft":
        _refuse_quantized(site, module.get_base_layer())
        merged = copy.deepcopy(module, _read_streamed(module))
        try:
            merged.merge(safe_merge=True)
        except (ValueError, RuntimeError) as exc:
            raise LoraError(f"PEFT cannot merge the adapter of {site.path!r}: {exc}") from exc
        return merged.get_base_layer()
    if site.problem is not None:
        raise LoraError(f"cannot merge the plain LoRA layer {site.path!r}: {site.problem}")
    base = _plain_base(module)
    assert base is not None and site.a is not None and site.b is not None
    _refuse_quantized(site, base)
    weight = base.weight
    delta = (site.b.float() @ site.a.float()) * site.scale
    bias = getattr(base, "bias", None)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out.weight = nn.Parameter((weight.float() + delta).to(weight.dtype), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return out.to(weight.device)


def _read_streamed(module: nn.Module) -> dict[int, nn.Parameter]:
    """A ``deepcopy`` memo giving each streamed float weight of ``module`` (a
    :class:`~t2n_core.deferred.DeferredTensor`, which cannot be copied) as a plain tensor."""
    return {
        id(t): nn.Parameter(t.materialize(), requires_grad=False)
        for t in module.parameters()
        if isinstance(t, DeferredTensor) and t.transform is None
    }


def _refuse_quantized(site: LoraSite, base: nn.Module) -> None:
    weight = getattr(base, "weight", None)
    streamed_float = isinstance(weight, DeferredTensor) and weight.transform is None
    if (
        weight is not None
        and type(weight) not in (torch.Tensor, nn.Parameter)
        and not (streamed_float)
    ):
        raise LoraError(
            f"{site.path!r}: its base weight is already quantized ({type(weight).__name__}); "
            "merge LoRA before quantizing: quantize_model(model, spec, lora='merged')"
        )


def _probe(site: LoraSite, replacement: nn.Module, what: str) -> None:
    """Refuse ``replacement`` unless it gives the site's own output on a probe input."""
    x = _probe_input(site)
    with torch.no_grad(), _eval(site.module), _eval(replacement):
        try:
            want = site.module(x)
        except Exception as exc:  # a forward that needs more than a [3, in] input
            raise LoraError(
                f"cannot check the LoRA layer {site.path!r} on a {list(x.shape)} input "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        got = replacement(x)
    low = {torch.float16, torch.bfloat16} & {x.dtype, want.dtype, got.dtype}
    tol = 1e-3 if low else 1e-5
    err = float((got.float() - want.float()).abs().max())
    if not err <= tol * (1 + float(want.float().abs().max())):
        raise LoraError(
            f"the LoRA layer {site.path!r} ({type(site.module).__name__}) does not compute "
            f"{what} (max difference {err:.3g} on a probe input); its forward is not plain "
            "LoRA, so t2n cannot export it that way"
        )


def _probe_input(site: LoraSite) -> torch.Tensor:
    """``[3, in]`` random values in the dtype the layer is fed (its base weight's: PEFT may
    keep an f16 model's adapter in f32)."""
    assert site.a is not None
    base = site.module.get_base_layer() if site.layout == "peft" else _plain_base(site.module)
    weight = getattr(base, "weight", None)
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else site.a.dtype
    x = torch.randn(3, site.a.shape[1], generator=torch.Generator().manual_seed(0))
    return x.to(site.a.device, dtype)


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in module.modules()}
    for m in modes:
        m.training = False  # not .eval(): loralib's train(False) merges the weight in place
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _infer_plain_scale(site: LoraSite) -> None:
    """The plain site's scale, read off its output when it has no scale attribute."""
    if _scale_of(site.module) is not None or site.problem is not None:
        return
    probe = _separate_module(site)
    probe.lora_scale.fill_(0.0)
    assert site.a is not None
    x = _probe_input(site)
    with torch.no_grad(), _eval(site.module):
        rest = (site.module(x) - probe(x)).double().flatten()
        delta = F.linear(F.linear(x.to(site.a.dtype), site.a), site.b).double().flatten()
    denom = float(delta @ delta)
    site.scale = float(rest @ delta) / denom if denom > 0 else 1.0


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def _refuse_problems(sites: list[LoraSite], mode: str) -> None:
    bad = [s for s in sites if s.problem is not None]
    if bad:
        lines = "\n".join(f"  - {s.path}: {s.problem}" for s in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        hint = (
            "export with lora='merged' (W + s·B·A in one weight)"
            if mode == "separate" else "fix these layers first"
        )  # fmt: skip
        raise LoraError(
            f"{len(bad)} LoRA layer(s) cannot be exported {mode}:\n{lines}{more}\n{hint}"
        )


def _warn_no_lora(model: nn.Module, mode: str) -> None:
    logger.warning(
        "lora=%r has no effect: %s has no LoRA layer (PEFT, or lora_A / lora_B beside a weight)",
        mode, type(model).__name__,
    )  # fmt: skip


def check_mode(mode: str | None) -> LoraMode:
    if mode is None:
        return "separate"
    if mode not in MODES:
        raise LoraError(f"lora={mode!r}: expected one of {list(MODES)}")
    return mode  # type: ignore[return-value]


@dataclass
class LoraPlan:
    """What a LoRA mode does to a model: the replacement of each site, checked."""

    mode: LoraMode
    scan: LoraScan
    replacements: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def properties(self) -> dict[str, str]:
        """Archive properties recording the layout (``lora.sites`` only when separate)."""
        if not self.scan.sites:
            return {}
        props = {MODE_PROPERTY: self.mode}
        if self.mode == "separate":
            sites = [
                {"path": s.path, "rank": s.rank, "in": int(s.a.shape[1]), "out": int(s.b.shape[0])}
                for s in self.scan.sites
                if s.a is not None and s.b is not None
            ]
            props[SITES_PROPERTY] = json.dumps(sites, separators=(",", ":"))
        return props

    def adapter_files(self) -> list[str]:
        """The ``.dat`` files the separate adapters must be written to."""
        if self.mode != "separate":
            return []
        return [f"{stem(s.path, x)}.dat" for s in self.scan.sites for x in SUFFIXES]

    def summary(self) -> str:
        n = len(self.scan.sites)
        ranks = sorted({s.rank for s in self.scan.sites if s.a is not None})
        kept = "kept apart (lora_A / lora_B / lora_scale files)" if self.mode == "separate" else (
            "merged into their base weights"
        )  # fmt: skip
        return f"LoRA: {n} adapted layer(s), rank {ranks}, {kept}"


def plan_lora(model: nn.Module, mode: str | None) -> LoraPlan:
    """Find ``model``'s LoRA sites and build (and check on a probe input) each one's
    replacement for ``mode``; raises :class:`LoraError` naming every site that cannot be."""
    plan = LoraPlan(check_mode(mode), find_lora(model))
    sites = plan.scan.sites
    if mode is not None and not sites:
        _warn_no_lora(model, mode)
    if plan.mode == "separate":
        _refuse_problems(sites, "separate")
    for site in sites:
        if site.layout == "plain":
            _infer_plain_scale(site)
        if plan.mode == "separate":
            new = _separate_module(site)
            _probe(site, new, "x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ")
        else:
            if site.problem is not None and site.layout == "plain":
                _refuse_problems([site], "merged")
            new = _merged_module(site)
            if site.a is not None:
                _probe(site, new, "x·(W + s·B·A)ᵀ + b")
        plan.replacements[site.path] = new
    for note in plan.scan.notes:
        logger.warning("%s", note)
    if sites:
        logger.info("%s", plan.summary())
    return plan


def apply(model: nn.Module, plan: LoraPlan) -> None:
    """Put each site's replacement in place, for good (``quantize_model(lora='merged')``)."""
    if "" in plan.replacements:
        raise LoraError(
            f"the model itself ({type(model).__name__}) is the LoRA layer, and a module cannot "
            "replace itself in place: wrap it (nn.Sequential(model)) and quantize the wrapper"
        )
    for path, new in plan.replacements.items():
        _set_module(model, path, new)


@contextlib.contextmanager
def applied(model: nn.Module, plan: LoraPlan) -> Iterator[nn.Module]:
    """Each site's replacement in place while the block runs, which gets the module to
    capture (the replacement itself when the model is a site); the model is restored after."""
    if "" in plan.replacements:
        yield plan.replacements[""]
        return
    originals = {path: model.get_submodule(path) for path in plan.replacements}
    try:
        apply(model, plan)
        yield model
    finally:
        for path, module in originals.items():
            _set_module(model, path, module)


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors a separate export of ``model`` writes, by file stem
    (``<path>.lora_A``, ``<path>.lora_B``, ``<path>.lora_scale``): what
    :func:`t2n_core.lora_swap.swap_adapter` puts in an archive when given a model."""
    scan = find_lora(model)
    _refuse_problems(scan.sites, "separate")
    out: dict[str, torch.Tensor] = {}
    for site in scan.sites:
        if site.layout == "plain":
            _infer_plain_scale(site)
        assert site.a is not None and site.b is not None
        out[stem(site.path, "lora_A")] = site.a.detach()
        out[stem(site.path, "lora_B")] = site.b.detach()
        out[stem(site.path, "lora_scale")] = torch.tensor([site.scale], dtype=site.b.dtype)
    return out


def adapter_parameters(model: nn.Module) -> dict[int, str]:
    """``id`` of every LoRA A / B tensor of ``model`` (active or not) -> its site's path."""
    out: dict[int, str] = {}
    for site in find_lora(model).sites:
        module = site.module
        for name in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            holder = getattr(module, name, None)
            if isinstance(holder, nn.Module):
                for p in holder.parameters():
                    out[id(p)] = site.path
            elif isinstance(holder, torch.Tensor):
                out[id(holder)] = site.path
    return out


def plan_for_quantization(model: nn.Module, mode: str | None) -> LoraPlan | None:
    """What ``quantize_model(lora=mode)`` does with ``model``'s LoRA sites (None: it has
    none). ``"merged"``: the checked merged layers; ``"separate"``: nothing to replace (the
    adapters stay float), refused when a site cannot be kept apart; ``None``: as
    ``"separate"``, leaving that refusal to the export."""
    scan = find_lora(model)
    if not scan.sites:
        if mode is not None:
            check_mode(mode)
            _warn_no_lora(model, mode)
        return None
    if check_mode(mode) == "merged":
        return plan_lora(model, "merged")
    if mode is not None:
        _refuse_problems(scan.sites, "separate")
    for note in scan.notes:
        logger.warning("%s", note)
    return LoraPlan("separate", scan)


def with_peft_adapter(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """``model`` with the PEFT LoRA adapter saved in ``folder`` injected (its LoRA layers in
    place of the adapted ones, the adapter's weights loaded); the model's own object."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise LoraError(
            f"loading the adapter {folder} needs peft: pip install 't2n[lora]'"
        ) from exc
    if not (Path(folder) / "adapter_config.json").is_file():
        raise LoraError(f"{folder} has no adapter_config.json: not a PEFT adapter folder")
    try:
        wrapped = PeftModel.from_pretrained(model, os.fspath(folder), is_trainable=False)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise LoraError(f"PEFT cannot load the adapter {folder} into this model: {exc}") from exc
    return wrapped.base_model.model.eval()

"""``compare``: how much accuracy each codec and calibration costs on one model.

For every (spec, calibration) pair the model is deep-copied and quantized with
:func:`~t2n_quant.quantize_model`; the copy is then run on the same inputs as the float
model, with forward hooks on the modules holding the weights, so each layer's output is
compared with the float layer's output *as errors accumulate in deployment* (the quantized
model is fed its own activations, end to end). Pure PyTorch: nothing is exported.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
>>> c = compare(model, torch.randn(16, 64), ["minmax:8:g32", "minmax:2:g32"], progress=False)
>>> [r.spec for r in c.results], c.best(max_bits=4).spec
(['minmax:8:g32', 'minmax:2:g32'], 'minmax:2:g32')
>>> [row.name for row in c.results[0].layers]
['0.weight', '2.weight']
"""

from __future__ import annotations

import contextlib
import copy
import html
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from t2n_core.progress import progress_bar
from t2n_quant.calibration import Calibration, get_calibration
from t2n_quant.codecs import Codec
from t2n_quant.config import QuantConfig, resolve
from t2n_quant.errors import CalibrationDataError
from t2n_quant.layerwise import DATA_AWARE, is_data_aware, no_fastpath
from t2n_quant.plan import check_plan
from t2n_quant.qtensor import QTensor
from t2n_quant.summary import QuantizationSummary, _html_table, _table, human_bytes
from t2n_quant.swap import quantize_model
from t2n_quant.weights import collect_weights

METRICS = ("sqnr", "cosine", "kl")


@dataclass(frozen=True)
class LMMetrics:
    """What a language-model user checks: next-token distributions against the float model.

    ``kl``: mean KL divergence ``KL(p_float || p_quantized)`` over positions (nats, lower is
    better); ``top1``: share of positions where both models predict the same next token;
    ``perplexity``: of the quantized model on the text itself (the float model's is in
    :attr:`Comparison.reference_perplexity`).
    """

    kl: float
    top1: float
    perplexity: float


def lm_metrics(ref_logits: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> LMMetrics:
    """:class:`LMMetrics` of ``logits`` against ``ref_logits`` (both ``B x T x V``) on the
    token ids ``tokens`` (``B x T``): position ``t`` predicts token ``t + 1``.

    >>> x = torch.randn(1, 5, 7); ids = torch.randint(0, 7, (1, 5))
    >>> m = lm_metrics(x, x, ids); (m.kl, m.top1)
    (0.0, 1.0)
    """
    ref = ref_logits[:, :-1].float().log_softmax(-1)
    got = logits[:, :-1].float().log_softmax(-1)
    kl = (ref.exp() * (ref - got)).sum(-1).mean().clamp(min=0.0).item()
    top1 = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    nll = -got.gather(-1, tokens[:, 1:, None].long()).mean().item()
    return LMMetrics(round(kl, 9), top1, math.exp(nll))


def perplexity(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """``exp`` of the mean next-token negative log-likelihood of ``tokens`` under ``logits``."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return math.exp(-logp.gather(-1, tokens[:, 1:, None].long()).mean().item())


def _logits(out: Any) -> torch.Tensor | None:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is None and isinstance(out, torch.Tensor) and out.dim() == 3:
        logits = out
    return logits.detach() if isinstance(logits, torch.Tensor) else None


def sqnr(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``ref``, in dB (higher is
    better; ``inf`` when they are equal).

    >>> x = torch.tensor([1.0, -2.0, 3.0])
    >>> sqnr(x, x), round(sqnr(x, x * 1.1), 1)
    (inf, 20.0)
    """
    ref, approx = ref.detach().double(), approx.detach().double()
    noise = (ref - approx).pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(ref.pow(2).sum().item() / noise)


def mean_cosine(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Mean cosine similarity of the rows (last axis) of ``approx`` and ``ref`` (1.0: same
    direction).

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> mean_cosine(x, x)
    1.0
    """
    ref, approx = ref.detach().double(), approx.detach().double()
    if ref.dim() == 0:
        ref, approx = ref.reshape(1, 1), approx.reshape(1, 1)
    ref, approx = ref.reshape(-1, ref.shape[-1]), approx.reshape(-1, approx.shape[-1])
    return round(nn.functional.cosine_similarity(ref, approx, dim=-1).mean().item(), 12)


@dataclass(frozen=True)
class LayerResult:
    """One weight of one config: how close its values, and its module's output, stay to
    the float model's. ``module`` is where the output was measured: the module holding the
    weight, or its nearest ancestor whose forward runs (``self_attn`` for ``out_proj``)."""

    name: str
    module: str
    module_type: str
    shape: tuple[int, ...]
    quantized: bool
    bits_per_weight: float
    weight_sqnr: float
    output_sqnr: float | None
    output_cosine: float | None


@dataclass
class ConfigResult:
    """What one (spec, calibration) pair costs; ``summary`` is ``quantize_model``'s."""

    spec: str
    calibration: str
    bits_per_weight: float
    bytes_before: int
    bytes_after: int
    model_bytes_before: int
    model_bytes_after: int
    sqnr: float
    cosine: float
    layers: list[LayerResult] = field(repr=False)  # repr stays one line (best() in a REPL)
    summary: QuantizationSummary = field(repr=False)
    lm: LMMetrics | None = None

    @property
    def label(self) -> str:
        return f"{self.spec} + {self.calibration}"

    @property
    def worst_layer(self) -> LayerResult | None:
        """The layer whose output is furthest from the float model's (lowest output SQNR)."""
        measured = [layer for layer in self.layers if layer.output_sqnr is not None]
        return min(measured, key=lambda layer: layer.output_sqnr, default=None)

    def score(self, metric: str = "sqnr") -> float:
        """Higher is better: SQNR, cosine, or minus the KL divergence."""
        if metric == "kl":
            if self.lm is None:
                raise ValueError("metric 'kl' needs a causal LM compared on token ids (lm=True)")
            return -self.lm.kl
        return self.sqnr if metric == "sqnr" else self.cosine

    def quantize(self, model: nn.Module, **kwargs: Any) -> QuantizationSummary:
        """Quantize ``model`` in place with this config's spec and calibration."""
        return quantize_model(model, self.spec, calibration=self.calibration, **kwargs)


def _db(v: float | None) -> str:
    if v is None:
        return "-"
    return "exact" if math.isinf(v) else f"{v:.1f}"


@dataclass
class Table:
    """A small table: ``print()`` it, show it in Jupyter, or take ``to_rows()`` (dicts)."""

    heads: list[str]
    rows: list[list[Any]]
    cells: list[list[str]] = field(repr=False, default_factory=list)

    def to_rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.heads, row)) for row in self.rows]

    def __str__(self) -> str:
        return "\n".join(_table(self.heads, self.cells)) if self.cells else "(empty)"

    def _repr_html_(self) -> str:
        return _html_table(self.heads, self.cells)


@dataclass
class Comparison:
    """The result of :func:`compare`: one :class:`ConfigResult` per (spec, calibration)."""

    model: str
    results: list[ConfigResult]
    metric: str = "sqnr"
    #: the float model's perplexity on the token ids compared on (causal LMs only)
    reference_perplexity: float | None = None

    def headline(self) -> str:
        before = self.results[0].model_bytes_before if self.results else 0
        text = (
            f"{self.model} ({human_bytes(before)} of float parameters): "
            f"{len(self.results)} config(s), accuracy against the float model's outputs; "
            "param bytes = parameters and buffers as stored (an archive adds graph.nnef, "
            "a 128-byte header per tensor and the graph's constants)"
        )
        if self.reference_perplexity is not None:
            text += f"; float perplexity {self.reference_perplexity:.3f}"
        return text

    def table(self) -> Table:
        lm = any(r.lm is not None for r in self.results)
        heads = ["spec", "calibration", "bits/w", "param bytes"]
        heads += ["KL (nats)", "top-1", "perplexity"] if lm else []
        heads += ["SQNR (dB)", "cosine", "worst layer", "its SQNR (dB)"]
        rows, cells = [], []
        for r in self.results:
            worst = r.worst_layer
            m = r.lm
            row = [r.spec, r.calibration, r.bits_per_weight, r.model_bytes_after]
            cell = [r.spec, r.calibration, f"{r.bits_per_weight:.2f}",
                    human_bytes(r.model_bytes_after)]  # fmt: skip
            if lm:
                row += [m.kl, m.top1, m.perplexity] if m else [None] * 3
                cell += [f"{m.kl:.5f}", f"{m.top1:.4f}", f"{m.perplexity:.3f}"] if m else ["-"] * 3
            row += [r.sqnr, r.cosine, worst.module if worst else None,
                    worst.output_sqnr if worst else None]  # fmt: skip
            cell += [_db(r.sqnr), f"{r.cosine:.4f}", worst.module if worst else "-",
                     _db(worst.output_sqnr if worst else None)]  # fmt: skip
            rows.append(row)
            cells.append(cell)
        return Table(heads, rows, cells)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per config (spec, calibration, bits/w, size in bytes, SQNR, cosine, ...)."""
        return self.table().to_rows()

    def layer_table(self, kind: str = "output") -> Table:
        """Per-layer SQNR (dB) per config, layers in model order: ``kind="output"`` for the
        module outputs, ``"weight"`` for the weights themselves (``float``: not quantized)."""
        if kind not in ("output", "weight"):
            raise ValueError(f"kind must be 'output' or 'weight', not {kind!r}")
        heads = ["layer", "measured at"] + [r.label for r in self.results]
        rows, cells = [], []
        for i, first in enumerate(self.results[0].layers if self.results else []):
            row: list[Any] = [first.name, first.module]
            cell = [first.name, first.module]
            for r in self.results:
                layer = r.layers[i]
                value = layer.output_sqnr if kind == "output" else layer.weight_sqnr
                row.append(value)
                text = _db(value)
                if not layer.quantized:
                    text = "float" if kind == "weight" else f"{text} (float)"
                cell.append(text)
            rows.append(row)
            cells.append(cell)
        return Table(heads, rows, cells)

    def best(self, max_bits: float | None = None) -> ConfigResult:
        """The config with the highest end-to-end score (``metric``) within ``max_bits``
        bits per weight (fewer bits wins a tie)."""
        fits = [r for r in self.results if max_bits is None or r.bits_per_weight <= max_bits]
        if not fits:
            have = sorted({round(r.bits_per_weight, 3) for r in self.results})
            raise ValueError(f"no config fits max_bits={max_bits}; bits/weight compared: {have}")
        return max(fits, key=lambda r: (r.score(self.metric), -r.bits_per_weight))

    def plot(self, kind: str = "layers") -> Any:
        """A matplotlib Figure: ``"layers"`` (per-layer output SQNR per config) or
        ``"tradeoff"`` (bits/weight against end-to-end SQNR). Needs ``t2n[plots]``."""
        from t2n_quant import plots

        if kind == "layers":
            return plots.plot_layers(self)
        if kind == "tradeoff":
            return plots.plot_tradeoff(self)
        raise ValueError(f"kind must be 'layers' or 'tradeoff', not {kind!r}")

    def __str__(self) -> str:
        return f"{self.headline()}\n{self.table()}"

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.headline())}</p>\n{self.table()._repr_html_()}"


# --- measuring ---------------------------------------------------------------------------


def _float_leaves(out: Any) -> list[torch.Tensor]:
    return [
        t.detach().clone()
        for t in pytree.tree_leaves(out)
        if isinstance(t, torch.Tensor) and t.dtype.is_floating_point
    ]


@contextlib.contextmanager
def _recording(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the floating-point outputs of the modules at ``paths`` (every call)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    modules = dict(model.named_modules(remove_duplicate=False))

    def hook(path: str):
        def fn(module: nn.Module, args: Any, out: Any) -> None:
            seen.setdefault(path, []).extend(_float_leaves(out))

        return fn

    try:
        for path in paths:
            handles.append(modules[path].register_forward_hook(hook(path)))
        yield seen
    finally:
        for h in handles:
            h.remove()


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _model_bytes(model: nn.Module) -> int:
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = int(t.nbytes)
    return sum(seen.values())


def _as_args(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _outputs_close(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    if not ref or len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return math.nan, math.nan
    cos = [mean_cosine(a, b) for a, b in zip(ref, got)]
    return sqnr(_flat(ref), _flat(got)), sum(cos) / len(cos)


def compare(
    model: nn.Module,
    inputs: Any,
    specs: Sequence[str | QuantConfig | Codec | Mapping[str, str]],
    *,
    calibrations: Sequence[str | Calibration] = ("minmax",),
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    metric: str = "sqnr",
    data: Any = None,
    device: str | torch.device | None = None,
    calibration_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Comparison:
    """Quantize a copy of ``model`` with every spec and calibration and measure what it costs.

    ``inputs`` is one tensor or a tuple of positional arguments; ``specs`` may include
    plans (:class:`~t2n_quant.plan.Plan`, labelled by their ``label``). Per layer: SQNR of each
    quantized weight against its float values, and SQNR / cosine of its module's output
    against the float model's; end to end: SQNR and mean cosine of the model outputs; plus
    the bits per weight actually stored and the bytes before / after. ``include`` /
    ``exclude`` go to :func:`~t2n_quant.quantize_model`; ``metric`` (``"sqnr"``,
    ``"cosine"`` or ``"kl"``) ranks configs in :meth:`Comparison.best`. ``model`` is left as
    it was. Data-aware calibrations (``"gptq"``) calibrate on ``data`` (on ``device``), with
    ``calibration_options`` as for :func:`~t2n_quant.quantize_model`; keep ``inputs`` out
    of it so the figures are measured on unseen inputs.

    Causal language models (the output has ``logits``, ``inputs`` are token ids ``B x T``)
    also get :class:`LMMetrics` per config: KL divergence of the next-token distributions
    against the float model, top-1 agreement and perplexity on ``inputs``; the table shows
    them first.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    # resolve everything first: a typo fails before any work is done
    codecs = [s if isinstance(s, Mapping) else resolve(s) for s in specs]
    for s in codecs:
        if isinstance(s, Mapping):
            check_plan(s, collect_weights(model))
    cals = [
        (c, c if isinstance(c, str) else getattr(c, "__name__", "custom")) for c in calibrations
    ]
    for c, _ in cals:
        if not is_data_aware(c):
            get_calibration(c)
        elif str(c).count(":"):
            get_calibration(str(c).split(":", 1)[1])
    if data is None and any(is_data_aware(c) for c, _ in cals):
        raise CalibrationDataError(f"calibrations {DATA_AWARE} need data= (calibration batches)")
    args = _as_args(inputs)

    float_weights = {w.name: w for w in collect_weights(model)}
    modules = dict(model.named_modules(remove_duplicate=False))
    candidates = []  # each weight's users and their ancestors, nearest first
    for w in float_weights.values():
        for path, _ in w.users:
            parts = path.split(".") if path else []
            candidates += [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
    candidates = list(dict.fromkeys(p for p in candidates if p in modules))

    with torch.no_grad(), no_fastpath():
        with _recording(model, candidates) as seen:
            raw = model(*args)
            ref_out = _float_leaves(raw)
        tokens = args[0] if len(args) == 1 else None
        ref_logits = _logits(raw)
        if tokens is None or tokens.dtype.is_floating_point or tokens.dim() != 2:
            ref_logits = None
        ref_ppl = None if ref_logits is None else perplexity(ref_logits, tokens)
        del raw
        where: dict[str, str | None] = {}
        for name, w in float_weights.items():
            path = w.users[0][0]
            parts = path.split(".") if path else []
            chain = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
            where[name] = next((p for p in chain if p in seen), None)
        measured = sorted({p for p in where.values() if p is not None}, key=candidates.index)
        ref_acts = {p: seen[p] for p in measured}
        del seen
        before = _model_bytes(model)

        results = []
        configs = [(codec, cal) for codec in codecs for cal in cals]
        bar = progress_bar(configs, desc="comparing", unit="config", disable=not progress)
        for codec, (cal, cal_name) in bar:
            label = codec.spec if isinstance(codec, Codec) else getattr(codec, "label", "plan")
            bar.set_postfix_str(f"{label} + {cal_name}")
            qmodel = copy.deepcopy(model)
            aware = is_data_aware(cal)
            summary = quantize_model(qmodel, codec, calibration=cal, include=include,
                                     exclude=exclude, data=data if aware else None,
                                     device=device, progress=False,
                                     calibration_options=calibration_options if aware else None,
                                     )  # fmt: skip
            with _recording(qmodel, measured) as acts:
                raw = qmodel(*args)
                out = _float_leaves(raw)
            lm = None
            if ref_logits is not None and (got := _logits(raw)) is not None:
                lm = lm_metrics(ref_logits, got, tokens)
            del raw
            e2e_sqnr, e2e_cos = _outputs_close(ref_out, out)
            qweights = {w.name: w for w in collect_weights(qmodel)}
            layers = []
            for name, fw in float_weights.items():
                q = qweights[name].param
                is_q = isinstance(q, QTensor)
                ref_w = fw.param.dequantize() if isinstance(fw.param, QTensor) else fw.param
                path = where[name]
                out_sqnr = out_cos = None
                if path is not None and path in acts:
                    a, b = _flat(ref_acts[path]), _flat(acts[path])
                    if a.shape == b.shape:
                        out_sqnr = sqnr(a, b)
                        out_cos = sum(map(mean_cosine, ref_acts[path], acts[path])) / len(
                            ref_acts[path]
                        )
                layers.append(LayerResult(
                    name, path or "-", fw.module_type, tuple(fw.param.shape), is_q,
                    q.bits_per_weight if is_q else 8.0 * fw.param.element_size(),
                    sqnr(ref_w, q.dequantize() if is_q else q), out_sqnr, out_cos,
                ))  # fmt: skip
            numel = sum(math.prod(q.shape) for q in summary.quantized)
            results.append(ConfigResult(
                label, cal_name, 8.0 * summary.bytes_after / numel if numel else 32.0,
                summary.bytes_before, summary.bytes_after, before, _model_bytes(qmodel),
                e2e_sqnr, e2e_cos, layers, summary, lm,
            ))  # fmt: skip
            del qmodel, acts
    return Comparison(type(model).__name__, results, metric, ref_ppl)

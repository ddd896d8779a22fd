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
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from t2n_core.capture import eval_mode
from t2n_core.progress import progress_bar
from t2n_quant.calibration import Calibration, get_calibration
from t2n_quant.calibration.registry import DATA_AWARE, is_data_aware
from t2n_quant.calibration_data import batches as calibration_batches
from t2n_quant.codecs import Codec
from t2n_quant.config import QuantConfig, resolve
from t2n_quant.data_aware_options import as_options, check_device, check_options
from t2n_quant.errors import CalibrationDataError, ComparedInputError
from t2n_quant.layerwise import float_twin, no_fastpath, token_mask
from t2n_quant.matmul_weights import EXPERT_ATTRS, to_stored_layout
from t2n_quant.plan import check_plan, quantize_layout
from t2n_quant.qtensor import QTensor
from t2n_quant.summary import QuantizationSummary, _html_table, _table, human_bytes
from t2n_quant.swap import quantize_model
from t2n_quant.weights import collect_weights

logger = logging.getLogger(__name__)

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
    sums = _LMSums()
    sums.add(ref_logits, logits, tokens)
    return sums.metrics()


@dataclass
class _LMSums:
    """Running sums of :class:`LMMetrics` over batches of token ids: the metrics of all the
    batches at once, while only one batch's logits are held."""

    kl: float = 0.0
    same: float = 0.0
    nll: float = 0.0
    ref_nll: float = 0.0
    positions: int = 0

    def add(self, ref_logits: torch.Tensor, logits: torch.Tensor | None,
            tokens: torch.Tensor, real: torch.Tensor | None = None) -> None:  # fmt: skip
        """Add one batch; ``logits=None`` adds the float model's perplexity only. ``real``
        (the attention mask, True on real tokens): only predictions of a real token from a
        real token count."""
        ref = ref_logits[:, :-1].float().log_softmax(-1)
        nxt = tokens[:, 1:, None].long()
        if real is not None:
            keep = (real[:, :-1] & real[:, 1:]).to(ref.device)
            ref, nxt = ref[keep], nxt[keep]
        self.ref_nll -= ref.gather(-1, nxt).double().sum().item()
        self.positions += nxt.numel()
        if logits is None:
            return
        got = logits[:, :-1].float().log_softmax(-1)
        if real is not None:
            got = got[keep]
        self.kl += (ref.exp() * (ref - got)).sum(-1).double().sum().item()
        self.same += (ref.argmax(-1) == got.argmax(-1)).sum().item()
        self.nll -= got.gather(-1, nxt).double().sum().item()

    def metrics(self) -> LMMetrics:
        n = max(self.positions, 1)
        return LMMetrics(round(max(self.kl / n, 0.0), 9), self.same / n, math.exp(self.nll / n))

    def reference_perplexity(self) -> float:
        return math.exp(self.ref_nll / max(self.positions, 1))


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


@dataclass
class _Closeness:
    """Running sums of the SQNR and mean row cosine of outputs against the float model's, fed
    one batch at a time: the figures of all batches at once (:func:`sqnr` of the outputs
    concatenated; per output, the mean of :func:`mean_cosine` over its rows; those means
    averaged), while only one batch's outputs are held."""

    signal: float = 0.0
    noise: float = 0.0
    cosines: dict[int, list[float]] = field(default_factory=dict)  # output: [sum, rows]
    mismatch: bool = False

    def add(self, ref: list[torch.Tensor], got: list[torch.Tensor]) -> None:
        if not ref or len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
            self.mismatch = True
            return
        for i, (a, b) in enumerate(zip(ref, got)):
            a, b = a.detach().double(), b.detach().double()
            self.signal += a.pow(2).sum().item()
            self.noise += (a - b).pow(2).sum().item()
            if a.dim() == 0:
                a, b = a.reshape(1, 1), b.reshape(1, 1)
            a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            cos = nn.functional.cosine_similarity(a, b, dim=-1)
            acc = self.cosines.setdefault(i, [0.0, 0])
            acc[0] += cos.sum().item()
            acc[1] += cos.numel()

    def sqnr(self) -> float | None:
        if self.mismatch or not self.cosines:
            return None
        return math.inf if self.noise == 0 else 10 * math.log10(self.signal / self.noise)

    def cosine(self) -> float | None:
        if self.mismatch or not self.cosines:
            return None
        means = [total / max(rows, 1) for total, rows in self.cosines.values()]
        return round(sum(means) / len(means), 12)


def _model_bytes(model: nn.Module) -> int:
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = int(t.nbytes)
    return sum(seen.values())


def _as_args(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _as_stored(model: nn.Module) -> nn.Module:
    """``model``'s float weights as ``quantize_model`` stores them before quantizing
    (transformers ``Conv1D`` as ``nn.Linear``, experts ``[experts, out, in]``), so each is
    measured against its quantized copy: a twin sharing the tensors left as they were."""
    twin = float_twin(model)
    for module in twin.modules():  # a parametrization re-sets its tensor in place: own ones
        for attr in EXPERT_ATTRS:
            p = module._parameters.get(attr)
            if isinstance(p, nn.Parameter) and p.dim() == 3:
                module._parameters[attr] = nn.Parameter(p.detach(), requires_grad=False)
    to_stored_layout(twin)
    return twin


def _token_ids(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The token ids of a causal LM's inputs (one integer tensor ``B x T``, or the
    ``input_ids`` keyword), or None."""
    ids = kwargs.get("input_ids") if not args else args[0] if len(args) == 1 else None
    if not isinstance(ids, torch.Tensor):
        return None
    return ids if ids.dim() == 2 and not ids.dtype.is_floating_point else None


Chunk = tuple[tuple[Any, ...], dict[str, Any]]


def _chunks(inputs: Any, batch_size: int) -> list[Chunk]:
    """``inputs`` (a tensor, a tuple of positional inputs, or a dict / ``BatchEncoding`` of
    keyword inputs) as ``(args, kwargs)`` calls; token ids ``batch_size`` rows at a time (the
    keyword tensors sharing their rows, an ``attention_mask``, cut alike)."""
    if isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    else:
        args, kwargs = _as_args(inputs), {}
    ids = _token_ids(args, kwargs)
    if ids is None:
        return [(args, kwargs)]
    rows = ids.shape[0]

    def cut(v: Any, b: int) -> Any:
        sized = isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows
        return v[b : b + batch_size] if sized else v

    return [(tuple(cut(a, b) for a in args), {k: cut(v, b) for k, v in kwargs.items()})
            for b in range(0, rows, batch_size)]  # fmt: skip


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
    batch_size: int = 8,
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
    them first. Token ids run ``batch_size`` rows at a time (the float model's too, once per
    config), so the memory held (logits: tokens x vocabulary; every measured layer's output)
    is one batch's whatever the number of rows; the figures are those of all rows at once.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    # resolve everything first: a typo fails before any work is done
    codecs = [s if isinstance(s, Mapping) else resolve(s) for s in specs]
    for s in codecs:
        if isinstance(s, Mapping):
            with quantize_layout(model):
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
    aware_methods = {str(c).split(":")[0] for c, _ in cals if is_data_aware(c)}
    for method in sorted(aware_methods):  # a bad option fails before the first config runs
        check_options(method, as_options(calibration_options))
        check_device(device)
    if calibration_options and not aware_methods:
        logger.warning("compare: calibration_options %s ignored: no data-aware calibration "
                       "among %s", dict(calibration_options), [n for _, n in cals])  # fmt: skip
    if data is not None:  # read once (a generator, a shuffled DataLoader): alike in every config
        if not isinstance(data, (torch.Tensor, tuple, Mapping, str, bytes)):
            data = list(data) if isinstance(data, Iterable) else data
        calibration_batches(data)  # bad data fails before the first config runs
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    chunks = _chunks(inputs, batch_size)
    tokens = _token_ids(*chunks[0])

    float_weights = {w.name: w for w in collect_weights(_as_stored(model))}
    modules = dict(model.named_modules(remove_duplicate=False))
    candidates = []  # each weight's users and their ancestors, nearest first
    for w in float_weights.values():
        for path, _ in w.users:
            parts = path.split(".") if path else []
            candidates += [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
    candidates = list(dict.fromkeys(p for p in candidates if p in modules))

    with torch.no_grad(), no_fastpath(), eval_mode(model):
        seen: set[str] = set()  # the modules whose forward runs
        ref_lm: _LMSums | None = _LMSums() if tokens is not None else None
        for i, (args, kwargs) in enumerate(chunks):
            with _recording(model, candidates) as acts:
                try:
                    ref_logits = _logits(model(*args, **kwargs))
                except Exception as err:
                    raise ComparedInputError(
                        f"the float model rejected the compared inputs (chunk {i + 1} of "
                        f"{len(chunks)}, batch_size {batch_size}): {type(err).__name__}: {err}; "
                        "give compare() what the model's forward takes: a tensor, a tuple of "
                        "inputs or a dict of keyword inputs"
                    ) from err
            seen.update(acts)
            if ref_lm is not None and ref_logits is not None:
                ref_lm.add(ref_logits, None, _token_ids(args, kwargs), token_mask((args, kwargs)))
            elif ref_logits is None:
                ref_lm = None
            del acts, ref_logits
        if ref_lm is not None and ref_lm.positions == 0:
            raise CalibrationDataError(
                "the token ids hold no next-token prediction to measure (each sequence needs "
                "at least 2 real tokens): give a longer text"
            )
        ref_ppl = None if ref_lm is None else ref_lm.reference_perplexity()
        where: dict[str, str | None] = {}
        for name, w in float_weights.items():
            path = w.users[0][0]
            parts = path.split(".") if path else []
            chain = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
            where[name] = next((p for p in chain if p in seen), None)
        measured = sorted({p for p in where.values() if p is not None}, key=candidates.index)
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
            e2e = _Closeness()
            per_layer = {path: _Closeness() for path in measured}
            lm = None if ref_lm is None else _LMSums()
            for args, kwargs in chunks:
                with _recording(model, measured) as ref_acts:
                    raw = model(*args, **kwargs)
                    ref_out = _float_leaves(raw)
                ref_logits = _logits(raw)
                with _recording(qmodel, measured) as acts:
                    raw = qmodel(*args, **kwargs)
                    out = _float_leaves(raw)
                got = _logits(raw)
                del raw
                if lm is not None and ref_logits is not None and got is not None:
                    lm.add(ref_logits, got, _token_ids(args, kwargs), token_mask((args, kwargs)))
                elif lm is not None:
                    lm = None
                e2e.add(ref_out, out)
                for path, closeness in per_layer.items():
                    closeness.add(ref_acts.get(path, []), acts.get(path, []))
                del ref_acts, acts, ref_out, out, ref_logits, got
            qweights = {w.name: w for w in collect_weights(qmodel)}
            layers = []
            for name, fw in float_weights.items():
                q = qweights[name].param
                is_q = isinstance(q, QTensor)
                ref_w = fw.param.dequantize() if isinstance(fw.param, QTensor) else fw.param
                path = where[name]
                closeness = per_layer.get(path) if path is not None else None
                out_sqnr = closeness.sqnr() if closeness is not None else None
                out_cos = closeness.cosine() if closeness is not None else None
                layers.append(LayerResult(
                    name, path or "-", fw.module_type, tuple(fw.param.shape), is_q,
                    q.bits_per_weight if is_q else 8.0 * fw.param.element_size(),
                    sqnr(ref_w, q.dequantize() if is_q else q), out_sqnr, out_cos,
                ))  # fmt: skip
            numel = sum(math.prod(q.shape) for q in summary.quantized)
            e2e_sqnr, e2e_cos = e2e.sqnr(), e2e.cosine()
            results.append(ConfigResult(
                label, cal_name, 8.0 * summary.bytes_after / numel if numel else 32.0,
                summary.bytes_before, summary.bytes_after, before, _model_bytes(qmodel),
                math.nan if e2e_sqnr is None else e2e_sqnr,
                math.nan if e2e_cos is None else e2e_cos, layers, summary,
                None if lm is None else lm.metrics(),
            ))  # fmt: skip
            del qmodel
    return Comparison(type(model).__name__, results, metric, ref_ppl)

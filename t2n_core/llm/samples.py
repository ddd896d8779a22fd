"""io samples of an exported causal LM, PyTorch's reference for the tract check.

Three samples, each fed the cache of the one before: ``prompt`` (the prompt, empty cache),
``step`` (one token) and ``chunk`` (two tokens at once: a causal block after a cache). Each
is a pair of dicts keyed by the graph's io names (``input_ids``, ``past_key_0``, ... ->
``logits``, ``present_key_0``, ...), saved as ``NAME_inputs.npz`` / ``NAME_outputs.npz``.

The tokens of all three are chosen in advance (a text, or random ids without a tokenizer), so
that one PyTorch pass over the whole sequence gives them all: with causal attention the
outputs at positions ``0..t`` do not depend on the tokens after ``t``, so the logits and the
k/v cache of each sample are slices of that pass. On a streamed checkpoint a pass reads,
converts or quantizes every weight again, so this saves two thirds of the reference's time.
Where the outputs of a position may depend on the sequence's total length (a sliding or
chunked attention window shorter than it, a RoPE scaling that changes with the length, a
capacity-limited expert routing), the samples are computed in three passes instead, and the
reason is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from t2n_core.check import CheckReport, TractLoad, compare, run_tract_each
from t2n_core.errors import CheckMismatchError
from t2n_core.llm.export import example_inputs
from t2n_core.llm.wrapper import (
    CausalLMWithCache,
    cache_fields_of,
    input_names_of,
    is_stateful,
    output_names_of,
)
from t2n_core.progress import progress_bar

logger = logging.getLogger(__name__)

SAMPLE_TEXT = "Once upon a time, there was a little"
#: io samples in the order they run; value: new tokens (None: the prompt, all the others)
SAMPLES: dict[str, int | None] = {"prompt": None, "step": 1, "chunk": 2}
#: the graph each sample runs on in an archive of prefill and decode graphs
PREFILL_DECODE_SAMPLES = {"prompt": "prefill", "step": "decode", "chunk": "prefill"}
#: the shortest prompt of a sample
MIN_PROMPT = 2
#: length of the random prompt used without a usable tokenizer
RANDOM_PROMPT = 8
#: config fields whose (integer) value is a window of positions an attention sees
_WINDOWS = ("sliding_window", "attention_chunk_size", "window_size", "attention_window",
            "local_attention_window")  # fmt: skip
#: RoPE scalings whose frequencies depend on the sequence's length
_LENGTH_ROPES = ("dynamic", "longrope")

#: one sample: (inputs, outputs), each keyed by io name
IoSample = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]


def sample_tokens(directory: Path | None, vocab: int) -> np.ndarray:
    """``[1, T]`` int64 ids of every sample, prompt first: :data:`SAMPLE_TEXT` tokenized with
    the tokenizer in ``directory`` (None: no tokenizer), else random ids."""
    after = sum(n for n in SAMPLES.values() if n)
    if directory is not None:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            ids = tokenizer(SAMPLE_TEXT, return_tensors="np")["input_ids"].astype(np.int64)
            if ids.shape[1] >= MIN_PROMPT + after:
                return ids
            logger.warning(
                "the tokenizer of %s gives %d tokens for %r, fewer than the %d the io samples "
                "need: random token ids instead", directory, ids.shape[1], SAMPLE_TEXT,
                MIN_PROMPT + after,
            )  # fmt: skip
        except Exception as exc:  # a broken tokenizer is reported, the export goes on
            logger.warning("tokenizer of %s unusable for the io samples: %s", directory, exc)
    return np.random.default_rng(0).integers(0, vocab, (1, RANDOM_PROMPT + after), dtype=np.int64)


def one_pass_hazard(model: nn.Module, length: int) -> str | None:
    """Why one pass over ``length`` tokens may differ from the samples' passes (None: it
    does not): what in the config makes a position's outputs depend on the total length."""
    config = model.config.get_text_config(decoder=True)
    for key in _WINDOWS:
        value = getattr(config, key, None)
        for window in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(window, int) and not isinstance(window, bool) and 0 < window < length:
                return f"{key}={window} is shorter than the {length} tokens of the samples"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    ropes = [rope] if isinstance(rope, dict) else []
    if ropes and all(isinstance(v, dict) for v in rope.values()):  # per layer type
        ropes = list(rope.values())
    for params in ropes:
        kind = params.get("rope_type", params.get("type"))
        limit = params.get("original_max_position_embeddings") or getattr(
            config, "original_max_position_embeddings", None
        ) or getattr(config, "max_position_embeddings", None)  # fmt: skip
        if kind in _LENGTH_ROPES and (not isinstance(limit, int) or length > limit):
            return f"RoPE scaling {kind!r} depends on the sequence length (limit {limit})"
    for key in ("expert_capacity", "capacity_factor"):
        if getattr(config, key, None):
            value = getattr(config, key)
            return f"{key}={value}: expert routing depends on the tokens run together"
    return None


def reference_samples(
    model: nn.Module,
    ids: np.ndarray,
    dtype: torch.dtype,
    *,
    all_logits: bool,
    progress: bool = True,
    one_pass: bool = True,
) -> dict[str, IoSample]:
    """PyTorch's inputs and outputs of :data:`SAMPLES` on ``ids`` (:func:`sample_tokens`),
    keyed by the graph's io names; logits of the last position only unless ``all_logits``.
    Computed in one pass unless ``one_pass=False`` or :func:`one_pass_hazard` says it may
    differ (logged); empty caches are ``dtype``. A model with a recurrent state has the
    samples ``prompt`` and ``step`` only, one token each (:func:`_stepwise_samples`)."""
    if is_stateful(model):
        return _stepwise_samples(model, ids, dtype, all_logits=all_logits, progress=progress)
    in_names, out_names = input_names_of(model), output_names_of(model)
    spans = _spans(ids.shape[1])
    tokens = torch.from_numpy(ids)
    empty = list(example_inputs(model, batch=1, past=0, new=1, dtype=dtype)[1:])
    axes = [f.seq_axis for f in cache_fields_of(model)]
    hazard = one_pass_hazard(model, ids.shape[1]) if one_pass else "asked for"
    if hazard is not None and one_pass:
        logger.info("io samples in %d PyTorch passes, not one: %s", len(spans), hazard)
    passes = 1 if hazard is None else len(spans)
    bar = progress_bar(total=passes, desc="reference", unit="pass", disable=not progress,
                       leave=False)  # fmt: skip
    samples: dict[str, IoSample] = {}
    with torch.no_grad(), bar:
        if hazard is None:
            logits, *present = CausalLMWithCache(model, all_logits=True).eval()(tokens, *empty)
            bar.update(1)
            for name, (a, b) in spans.items():
                inputs = [tokens[:, a:b], *(p.narrow(x, 0, a) for p, x in zip(present, axes))]
                kept = logits[:, a:b] if all_logits else logits[:, b - 1 : b]
                outputs = [kept, *(p.narrow(x, 0, b) for p, x in zip(present, axes))]
                samples[name] = _named(in_names, inputs), _named(out_names, outputs)
            return samples
        step = CausalLMWithCache(model, all_logits=all_logits).eval()
        past = empty
        for name, (a, b) in spans.items():
            inputs = [tokens[:, a:b], *past]
            outputs = step(*inputs)
            samples[name] = _named(in_names, inputs), _named(out_names, outputs)
            past = list(outputs[1:])
            bar.update(1)
    return samples


def _stepwise_samples(
    model: nn.Module, ids: np.ndarray, dtype: torch.dtype, *, all_logits: bool, progress: bool
) -> dict[str, IoSample]:
    """The samples of a model whose step takes one token (a recurrent state, see
    :class:`~t2n_core.llm.wrapper.CausalLMWithCache`): ``prompt`` is the first token on the
    fresh (zero) state, ``step`` the last token after the others were fed one at a time; a
    PyTorch pass per token."""
    in_names, out_names = input_names_of(model), output_names_of(model)
    tokens = torch.from_numpy(ids)
    step = CausalLMWithCache(model, all_logits=all_logits).eval()
    past = list(example_inputs(model, batch=1, past=0, new=1, dtype=dtype)[1:])
    samples: dict[str, IoSample] = {}
    last = tokens.shape[1] - 1
    with torch.no_grad(), progress_bar(total=last + 1, desc="reference", unit="token",
                                       disable=not progress, leave=False) as bar:  # fmt: skip
        for t in range(last + 1):
            inputs = [tokens[:, t : t + 1], *past]
            outputs = step(*inputs)
            for name, at in (("prompt", 0), ("step", last)):
                if t == at:
                    samples[name] = _named(in_names, inputs), _named(out_names, outputs)
            past = list(outputs[1:])
            bar.update(1)
    return samples


def _spans(length: int) -> dict[str, tuple[int, int]]:
    """``name -> (first, end)``: the positions of each sample's new tokens."""
    after = sum(n for n in SAMPLES.values() if n)
    spans, start = {}, 0
    for name, new in SAMPLES.items():
        end = start + (new if new is not None else length - after)
        spans[name] = (start, end)
        start = end
    return spans


def _named(names: list[str], tensors: list[torch.Tensor]) -> dict[str, np.ndarray]:
    return {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, tensors, strict=True)}


def on_graphs(samples: Mapping[str, IoSample], graphs: Mapping[str, str]) -> dict[str, IoSample]:
    """``samples`` keyed by the io names of the graph each runs on (``graphs``: sample ->
    graph) of an archive of several, which prefix them: ``input_ids`` -> ``prefill_input_ids``."""
    renamed: dict[str, IoSample] = {}
    for name, (inputs, outputs) in samples.items():
        prefix = f"{graphs[name]}_"
        renamed[name] = (
            {prefix + k: v for k, v in inputs.items()},
            {prefix + k: v for k, v in outputs.items()},
        )
    return renamed


def save_samples(samples: Mapping[str, IoSample], directory: Path) -> None:
    """``NAME_inputs.npz`` / ``NAME_outputs.npz`` of each sample in ``directory``."""
    for name, (inputs, outputs) in samples.items():
        np.savez(directory / f"{name}_inputs.npz", **inputs)
        np.savez(directory / f"{name}_outputs.npz", **outputs)


def load_samples(directory: Path, names: list[str]) -> dict[str, IoSample]:
    """The samples :func:`save_samples` wrote (keys in the order saved)."""
    samples = {}
    for name in names:
        pair = []
        for io in ("inputs", "outputs"):
            with np.load(directory / f"{name}_{io}.npz", allow_pickle=False) as data:
                pair.append({k: data[k] for k in data.files})
        samples[name] = (pair[0], pair[1])
    return samples


def check_samples(
    archive: Path,
    samples: Mapping[str, IoSample],
    *,
    atol: float,
    rtol: float,
    raise_on_mismatch: bool = True,
    shown_as: str | None = None,
    loaded: TractLoad | None = None,
    graphs: Mapping[str, str] | None = None,
) -> CheckReport:
    """Run every sample in tract, the archive (each graph, ``graphs``: sample -> graph for an
    archive of several) loaded once (``loaded``: already loading, see
    :class:`~t2n_core.check.TractLoad`), and compare with PyTorch's outputs (see
    :func:`~t2n_core.check.compare`); outputs are named ``OUTPUT@SAMPLE``. A mismatch raises
    :class:`~t2n_core.errors.CheckMismatchError` unless ``raise_on_mismatch=False``."""
    shown = shown_as or str(archive)
    ran: dict[str, list[np.ndarray]] = {}
    for graph in dict.fromkeys(graphs[name] if graphs else None for name in samples):
        names = [n for n in samples if (graphs[n] if graphs else None) == graph]
        batches = [list(samples[n][0].values()) for n in names]
        if loaded is not None and loaded.graph == graph:
            outputs = loaded.run(batches)
        else:
            outputs = run_tract_each(archive, batches, shown_as=shown, graph=graph)
        ran.update(zip(names, outputs, strict=True))
    report = CheckReport(atol=atol, rtol=rtol)
    for name, (_, expected) in samples.items():
        actual = ran[name]
        part = compare([f"{o}@{name}" for o in expected], actual, list(expected.values()),
                       atol=atol, rtol=rtol)  # fmt: skip
        report.outputs += part.outputs
    logger.info("%s", report)
    if raise_on_mismatch and not report.passed:
        raise CheckMismatchError(
            f"tract's outputs of {shown} differ from the reference:\n{report}", report
        )
    return report

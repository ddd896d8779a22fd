"""Generation in tract: greedy from an archive of ``export_causal_lm`` (``greedy_generate``), or
text from a directory of ``export_checkpoint`` with sampling (``generate_text``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2n_core.check import load_runnable, tract_message
from t2n_core.errors import CheckpointError, ExportInputError, TractRunError


@dataclass
class Generation:
    """Tokens chosen after the prompt, and the logits of the last position at each step."""

    tokens: np.ndarray  # [B, steps] int64
    logits: list[np.ndarray] = field(default_factory=list)  # steps x [B, vocab]


_NUMPY_DTYPES = {"f32": np.float32, "f16": np.float16}


def empty_cache(runnable: Any, batch: int) -> list[np.ndarray]:
    """The empty cache of an ``export_causal_lm`` archive: zero-length past k/v (P = 0), and
    zeros for a fixed-size state (a fresh recurrent or convolution state), each with the
    shape and dtype the archive declares for it: keys and values may differ (multi-head
    latent attention), and so may layers."""
    facts = [str(runnable.input_fact(i)) for i in range(1, runnable.input_count())]
    return empty_past(facts, batch)


def empty_past(facts: list[str], batch: int) -> list[np.ndarray]:
    """:func:`empty_cache` from tract's facts of the past inputs (``"1,2,P,16,f32"``): the
    first axis is the batch, a symbolic one the past length (0), the others as declared."""
    past = []
    for fact in facts:
        *dims, dtype = fact.split(",")
        shape = [batch] + [int(d) if d.isdigit() else 0 for d in dims[1:]]
        past.append(np.zeros(shape, _NUMPY_DTYPES[dtype]))
    return past


def one_token_per_step(ids_fact: str) -> bool:
    """Whether a step graph takes one token per call (tract's fact of ``input_ids``, e.g.
    ``"B,1,i64"``): the step of a model with a recurrent state (see
    :class:`~t2n_core.llm.wrapper.CausalLMWithCache`); a prompt is then fed token by token."""
    return ids_fact.split(",")[1] == "1"


class _Steps:
    """What both step runners share: a prompt fed token by token to a one-token step graph,
    and the single-row :meth:`step`."""

    one_token: bool

    def run_rows(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step_rows(self, ids: np.ndarray) -> np.ndarray:
        """Run ``ids [B, T]`` on the cache so far; the next-token logits ``[B, vocab]``."""
        if self.one_token and ids.shape[1] > 1:
            for t in range(ids.shape[1] - 1):
                self.run_rows(ids[:, t : t + 1])
            ids = ids[:, -1:]
        return self.run_rows(ids)

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Run ``ids [1, T]`` on the cache so far; the next-token logits ``[vocab]``."""
        return self.step_rows(ids)[0]


class InProcessSteps(_Steps):
    """Generation steps run by tract in this process: the fastest, but a tract panic (an
    abort) ends the Python process too. An archive of prefill and decode graphs runs each
    where it belongs (:func:`step_runnables`)."""

    def __init__(self, path: str | os.PathLike, batch: int = 1) -> None:
        self.prefill, self.decode = step_runnables(path)
        self.runnable = self.prefill
        self.past = empty_cache(self.prefill, batch)
        self.shown = os.fspath(path)
        self.one_token = one_token_per_step(str(self.prefill.input_fact(0)))

    def run_rows(self, ids: np.ndarray) -> np.ndarray:
        """One graph call on ``ids [B, T]``; the next-token logits ``[B, vocab]``."""
        try:
            outputs = [o.to_numpy() for o in self.runnable.run([ids, *self.past])]
        except Exception as exc:
            raise TractRunError(
                f"tract could not run a step of {self.shown}: {tract_message(exc)}"
            ) from exc
        self.past, self.runnable = outputs[1:], self.decode
        return outputs[0][:, -1]

    def close(self) -> None:
        pass


class ChildSteps(_Steps):
    """Generation steps run in the tract worker process (:mod:`t2n_core.tract_child`), so that
    a tract crash raises :class:`TractRunError` here instead of ending this process. The
    model and its k/v cache stay in the worker: a step sends the new token ids and reads
    back the next-token logits. An archive of prefill and decode graphs keeps both in the
    worker, prefill for the first step and decode after."""

    def __init__(self, path: str | os.PathLike, batch: int = 1) -> None:
        from t2n_core.check import in_tract_child

        self.path, self.shown = os.path.abspath(path), os.fspath(path)
        # each step passes its files through WORKDIR: in memory where the system has a tmpfs
        fast = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.work = Path(tempfile.mkdtemp(prefix="t2n-generate-", dir=fast))
        try:  # the archive is checked once, here, for all the steps
            graphs = step_graphs(path)
            if graphs is not None:
                from t2n_core.graph_select import graph_io, select_transforms

                selections = [select_transforms(graph_io(path, g)) for g in graphs]
                (self.work / "graphs.json").write_text(json.dumps(selections))
            in_tract_child("open", self.path, self.work, self.shown)
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        inputs = json.loads((self.work / "facts.json").read_text())["inputs"]
        self.past = empty_past(inputs[1:], batch)
        self.one_token = one_token_per_step(inputs[0])

    def run_rows(self, ids: np.ndarray) -> np.ndarray:
        """One worker call on ``ids [B, T]``; the next-token logits ``[B, vocab]``."""
        from t2n_core.check import in_tract_child

        if self.past:  # the worker keeps the cache from the first step on
            np.savez(self.work / "state.npz", *self.past)
            self.past = []
        np.save(self.work / "ids.npy", ids)
        in_tract_child("step", self.path, self.work, self.shown, validate=False)
        return np.load(self.work / "outputs.npy")

    def close(self) -> None:
        from t2n_core.check import in_tract_child

        try:
            in_tract_child("close", self.path, self.work, self.shown, validate=False)
        except TractRunError:
            pass  # the worker is gone, and the session with it
        shutil.rmtree(self.work, ignore_errors=True)


def step_graphs(path: str | os.PathLike) -> tuple[str, str] | None:
    """``("prefill", "decode")`` when the archive holds those graphs
    (:func:`~t2n_core.llm.export.export_prefill_decode`), else None (one step graph)."""
    from t2n_core.graph_select import archive_graphs

    return ("prefill", "decode") if {"prefill", "decode"} <= set(archive_graphs(path)) else None


def step_runnables(path: str | os.PathLike) -> tuple[Any, Any]:
    """``(prefill, decode)`` runnables of an archive: its ``prefill`` and ``decode`` graphs
    when it holds them (:func:`step_graphs`), else its one step graph twice."""
    from t2n_core.many import load_graph

    graphs = step_graphs(path)
    if graphs is not None:
        prefill, decode = (load_graph(path, g).into_runnable() for g in graphs)
        return prefill, decode
    runnable = load_runnable(path)
    return runnable, runnable


def greedy_generate(
    path: str | os.PathLike, prompt: np.ndarray, steps: int, *, in_process: bool = False
) -> Generation:
    """Prefill ``prompt [B, T]`` with an empty cache (P = 0), then decode greedily one token at
    a time, feeding tract's present k/v back as the next past; ``steps`` tokens in all. An
    archive of prefill and decode graphs runs each where it belongs (:func:`step_graphs`).
    tract runs in the worker process of :mod:`t2n_core.tract_child` (a tract crash raises
    :class:`TractRunError`); ``in_process=True`` runs it here, a little faster per token,
    but a tract panic then ends this process.

    >>> gen = greedy_generate("llm.nnef.tgz", ids, 4)                     # doctest: +SKIP
    """
    prompt = np.asarray(prompt, dtype=np.int64)
    batch = prompt.shape[0]
    runner = InProcessSteps(path, batch) if in_process else ChildSteps(path, batch)
    ids = prompt
    tokens: list[np.ndarray] = []
    logits_per_step: list[np.ndarray] = []
    try:
        for _ in range(steps):
            last = runner.step_rows(ids)
            logits_per_step.append(last)
            ids = last.argmax(-1).astype(np.int64)[:, None]
            tokens.append(ids)
    finally:
        runner.close()
    return Generation(np.concatenate(tokens, axis=1), logits_per_step)


@dataclass
class TextGeneration:
    """What :func:`generate_text` produced, with tract's speed for prefill and for decode."""

    prompt_tokens: list[int]
    tokens: list[int]  # the new tokens (the EOS token included when generation stopped on it)
    text: str | None  # the continuation of the prompt; None without a tokenizer
    prefill_seconds: float
    decode_seconds: float
    stopped_at_eos: bool

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt_tokens) / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.tokens) - 1  # the first new token comes out of the prefill
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0

    def speed(self) -> str:
        return (
            f"prefill: {len(self.prompt_tokens)} tokens, {self.prefill_tokens_per_s:.1f} tokens/s;"
            f" decode: {max(len(self.tokens) - 1, 0)} tokens, "
            f"{self.decode_tokens_per_s:.1f} tokens/s"
        )


def sample_next(
    logits: np.ndarray,
    rng: np.random.Generator,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> int:
    """One token from the last-position ``logits [vocab]``: argmax when ``temperature`` is 0,
    otherwise sampled from the softmax at that temperature, restricted to the ``top_k`` most
    likely tokens (0: all) and to the smallest set whose probability reaches ``top_p``.

    >>> sample_next(np.array([0.1, 3.0, 0.2]), np.random.default_rng(0))
    1
    """
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    order = np.argsort(-scaled)
    if top_k > 0:
        order = order[:top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(rng.choice(order, p=probs))


def generate_text(
    directory: str | os.PathLike,
    prompt: str | None = None,
    *,
    prompt_ids: list[int] | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    in_process: bool = False,
) -> TextGeneration:
    """Generate from a directory written by ``export_checkpoint``, in tract: prefill the
    prompt with an empty cache, then decode one token at a time, feeding the cache back,
    until ``max_new_tokens`` or the EOS token. The tokenizer is the one in the directory;
    without it, pass ``prompt_ids`` (the text is then None). tract runs in the worker
    process of :mod:`t2n_core.tract_child` (a tract crash raises :class:`TractRunError`);
    ``in_process=True`` runs it here, a little faster per token, but a tract panic then ends
    this process.

    >>> gen = generate_text("out/llama", "Once upon a time", max_new_tokens=16)  # doctest: +SKIP
    >>> print(gen.text, gen.speed())                                            # doctest: +SKIP
    """
    root = Path(directory)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path} is missing: generate runs a directory written by "
            "`t2n export-llm` (model.nnef.tgz, manifest.json, tokenizer files)"
        )
    manifest = json.loads(manifest_path.read_text())
    tokenizer = _tokenizer(root) if prompt_ids is None or prompt is None else None
    if prompt_ids is None:
        if prompt is None:
            raise ExportInputError("give a prompt (text) or prompt_ids (token ids)")
        if tokenizer is None:
            raise CheckpointError(
                f"{root} has no tokenizer (none of tokenizer.json, tokenizer.model, vocab.json,"
                " vocab.txt; it was missing from the checkpoint): copy the checkpoint's "
                "tokenizer files there, or pass token ids (--prompt-ids 1,2,3)"
            )
        prompt_ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    if not prompt_ids:
        raise ExportInputError("the prompt has no tokens")
    eos = manifest.get("eos_token_id")
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    archive = root / manifest["archive"]
    steps = InProcessSteps(archive) if in_process else ChildSteps(archive)
    rng = np.random.default_rng(seed)
    ids = np.asarray([prompt_ids], dtype=np.int64)
    new: list[int] = []
    times: list[float] = []
    try:
        for _ in range(max_new_tokens):
            start = time.perf_counter()
            logits = steps.step(ids)
            times.append(time.perf_counter() - start)
            token = sample_next(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
            new.append(token)
            if token in eos_ids:
                break
            ids = np.asarray([[token]], dtype=np.int64)
    finally:
        steps.close()
    text = None
    if tokenizer is not None:  # decoded with the prompt, so that spacing at the seam is right
        full = tokenizer.decode(list(prompt_ids) + new, skip_special_tokens=True)
        head = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
        text = full[len(head) :] if full.startswith(head) else tokenizer.decode(new)
    return TextGeneration(
        list(prompt_ids), new, text, times[0] if times else 0.0, sum(times[1:]),
        bool(new) and new[-1] in eos_ids,
    )  # fmt: skip


def _tokenizer(root: Path) -> Any:
    """The directory's tokenizer (transformers), or None when it has no tokenizer files."""
    from t2n_core.llm.checkpoint import TOKENIZER_VOCAB_FILES

    if not any((Path(root) / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(root, local_files_only=True)

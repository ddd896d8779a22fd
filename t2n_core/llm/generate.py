"""Greedy generation with an archive written by ``export_causal_lm``, run in tract."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from t2n_core.check import load_runnable, tract_message
from t2n_core.errors import TractRunError


@dataclass
class Generation:
    """Tokens chosen after the prompt, and the logits of the last position at each step."""

    tokens: np.ndarray  # [B, steps] int64
    logits: list[np.ndarray] = field(default_factory=list)  # steps x [B, vocab]


def greedy_generate(
    path: str | os.PathLike,
    prompt: np.ndarray,
    steps: int,
    *,
    num_layers: int,
    kv_heads: int,
    head_dim: int,
    dtype: np.dtype | type = np.float32,
) -> Generation:
    """Prefill ``prompt [B, T]`` with an empty cache (P = 0), then decode greedily one token at
    a time, feeding tract's present k/v back as the next past; ``steps`` tokens in all.

    >>> gen = greedy_generate("llm.nnef.tgz", ids, 4, num_layers=2, kv_heads=2,
    ...                       head_dim=16)                                   # doctest: +SKIP
    """
    runnable = load_runnable(path)
    prompt = np.asarray(prompt, dtype=np.int64)
    batch = prompt.shape[0]
    past = [np.zeros((batch, kv_heads, 0, head_dim), dtype) for _ in range(2 * num_layers)]
    ids = prompt
    tokens: list[np.ndarray] = []
    logits_per_step: list[np.ndarray] = []
    for _ in range(steps):
        try:
            outputs = [o.to_numpy() for o in runnable.run([ids, *past])]
        except Exception as exc:
            raise TractRunError(
                f"tract could not run a step of {os.fspath(path)}: {tract_message(exc)}"
            ) from exc
        logits, past = outputs[0], outputs[1:]
        last = logits[:, -1]
        logits_per_step.append(last)
        ids = last.argmax(-1).astype(np.int64)[:, None]
        tokens.append(ids)
    return Generation(np.concatenate(tokens, axis=1), logits_per_step)

"""Per-token decode time of generation with tract in this process vs in the tract worker
process (``t2n_core.tract_child``; ``generate_text``'s default, so that a tract crash cannot
end the caller).

Builds a random Llama checkpoint (save_pretrained), exports it with ``export_checkpoint``,
prefills 8 tokens, then times ``--tokens`` single-token decode steps each way, twice in
alternation, and prints the least and the median time per token (the least is the one to
compare on a busy machine) and the worker's overhead.

    python -m benchmarks.bench_generate [--hidden 256] [--layers 4] [--tokens 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from t2n_core.llm import export_checkpoint
from t2n_core.llm.generate import ChildSteps, InProcessSteps


def per_token_ms(steps: InProcessSteps | ChildSteps, n: int) -> np.ndarray:
    steps.step(np.arange(3, 11, dtype=np.int64)[None])  # prefill
    times = []
    for _ in range(n):
        start = time.perf_counter()
        steps.step(np.array([[5]], dtype=np.int64))
        times.append(time.perf_counter() - start)
    steps.close()
    return 1000 * np.array(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2 * args.tokens + 32, tie_word_embeddings=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        LlamaForCausalLM(config).eval().save_pretrained(Path(tmp) / "ckpt")
        export_checkpoint(Path(tmp) / "ckpt", Path(tmp) / "out", check=False, progress=False)
        archive = Path(tmp) / "out" / "model.nnef.tgz"
        runs: dict[str, list[np.ndarray]] = {"in process": [], "worker": []}
        for _ in range(2):
            runs["in process"].append(per_token_ms(InProcessSteps(archive), args.tokens))
            runs["worker"].append(per_token_ms(ChildSteps(archive), args.tokens))
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: "
        f"{args.tokens} decode steps, twice each way"
    )
    best = {}
    for mode, times in runs.items():
        t = np.concatenate(times)
        best[mode] = t.min()
        print(
            f"{mode:10s}: least {t.min():.2f} ms/token ({1000 / t.min():.0f} tokens/s), "
            f"median {np.median(t):.2f} ms/token"
        )
    print(f"worker overhead (least): {best['worker'] - best['in process']:.2f} ms/token")


if __name__ == "__main__":
    main()

"""Decode speed in tract of the two mixture-of-experts forms, ``dense`` and ``gather``.

Builds a small random Mixtral (8 experts, top-2) and Qwen3-MoE (64 experts, top-8), exports
each with ``export_causal_lm(experts=...)`` in f32 and after q4_0, then in tract: a prefill of
``--prompt`` tokens and ``--steps`` greedy decode steps (tract's k/v fed back). Prints
prefill and decode tokens/s per case and whether the greedy tokens of both forms agree.

    python -m benchmarks.bench_moe_experts [--families mixtral,qwen3_moe] [--modes f32,q4_0]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from t2n_core.check import load_runnable
from t2n_core.llm import export_causal_lm
from t2n_core.llm.generate import empty_cache
from t2n_quant import quantize_model
from tests.llm.families import randomize

_COMMON = dict(
    vocab_size=2048, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
    eos_token_id=2,
)  # fmt: skip
CONFIGS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {**_COMMON, "intermediate_size": 1024, "num_local_experts": 8,
                 "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {**_COMMON, "head_dim": 64, "moe_intermediate_size": 256, "num_experts": 64,
                   "num_experts_per_tok": 8, "intermediate_size": 1024}),
}  # fmt: skip


def build(name: str) -> torch.nn.Module:
    config_cls, model_cls, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
    randomize(model)
    return model.eval()


def run(path: Path, prompt: np.ndarray, steps: int) -> tuple[float, float, list[int]]:
    """prefill tokens/s, decode tokens/s, greedy tokens."""
    runnable = load_runnable(path)
    past = empty_cache(runnable, 1)
    start = time.perf_counter()
    out = [o.to_numpy() for o in runnable.run([prompt, *past])]
    prefill = time.perf_counter() - start
    tokens = [int(out[0][0, -1].argmax())]
    start = time.perf_counter()
    for _ in range(steps):
        ids = np.array([[tokens[-1]]], dtype=np.int64)
        out = [o.to_numpy() for o in runnable.run([ids, *out[1:]])]
        tokens.append(int(out[0][0, -1].argmax()))
    decode = time.perf_counter() - start
    return prompt.shape[1] / prefill, steps / decode, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="mixtral,qwen3_moe", help="comma-separated")
    parser.add_argument("--modes", default="f32,q4_0", help="comma-separated")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (prefill)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps")
    args = parser.parse_args()
    prompt = np.random.default_rng(0).integers(3, 2048, (1, args.prompt), dtype=np.int64)
    print(f"prefill {args.prompt} tokens, then {args.steps} decode steps, tract "
          f"(torch threads {torch.get_num_threads()})\n")  # fmt: skip
    print("| model | params | weights | experts | prefill tok/s | decode tok/s | "
          "same greedy tokens |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in args.families.split(","):
        base = build(name)
        params = sum(p.numel() for p in base.parameters()) / 1e6
        for mode in args.modes.split(","):
            model = copy.deepcopy(base)
            if mode == "q4_0":
                quantize_model(model, "q4_0", progress=False)
            tokens = {}
            with tempfile.TemporaryDirectory() as tmp:
                for form in ("dense", "gather"):
                    path = Path(tmp) / f"{form}.nnef.tgz"
                    export_causal_lm(model, path, check=False, progress=False, experts=form)
                    prefill, decode, tokens[form] = run(path, prompt, args.steps)
                    same = (
                        ""
                        if form == "dense"
                        else ("yes" if tokens["gather"] == tokens["dense"] else "NO")
                    )
                    print(f"| {name} | {params:.0f}M | {mode} | {form} | {prefill:.1f} | "
                          f"{decode:.1f} | {same} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Language-model accuracy of each codec x calibration on a small Llama with trained weights.

The model, tokenizer and the three disjoint text parts (train / calibration / eval: Python
standard-library docstrings split by source file) come from :mod:`benchmarks.llm_fixture`.
Every Linear weight is quantized (the token embedding stays float); figures are measured on
the eval text, never seen by training or calibration: KL divergence of next-token
distributions against the float model, top-1 agreement, perplexity. ``reference rule`` is
the reference exporter's always-negative Q4_0 scale (``d = -max|x| / 8``) in the very same
format, as a custom calibration.

Run: ``python -m benchmarks.bench_llm_accuracy [--steps 3000 --hidden 128 --layers 4]
[--calib-seqs 256]
[--plans-only | --no-plans] [--codecs q4_0 ...]``
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.llm_fixture import add_size_options, load
from t2n_quant.calibration_data import text_batches
from t2n_quant.codecs import QParams
from t2n_quant.compare import compare
from t2n_quant.plan import plan

#: calibration, or (calibration, calibration_options) for a variant
Calib = str | tuple[str, dict[str, object]]
CONFIGS: list[tuple[str, list[Calib]]] = [
    ("q4_0", ["reference", "minmax", "mse", "hqq", "awq", "awq:mse", "gptq", "gptq:mse",
              ("gptq:mse", {"float_target": False}), ("gptq:mse", {"damp": 0.1}),
              ("gptq:mse", {"act_order": True}), ("gptq:mse", {"tune_steps": 200})]),
    ("minmax:3:g32", ["minmax", "mse", "gptq", "gptq:mse",  # 4.0 bits/weight
                      ("gptq:mse", {"tune_steps": 200})]),
    ("symmetric:3:g32", ["mse", "gptq:mse"]),  # 3.5
    ("minmax:2:g32", ["minmax", "mse", "gptq", "gptq:mse"]),  # 3.0
    ("symmetric:2:g16", ["mse", "gptq:mse"]),  # 3.0
    # above q4_0's size: how much accuracy each extra bit buys on this model
    ("symmetric:5:g32", ["mse", "gptq:mse"]),  # 5.5
    ("symmetric:6:g32", ["minmax"]),  # 6.5
    ("symmetric:8:g32", ["minmax"]),  # 8.5
]
#: mixed plans: budget (bits per weight) -> candidate codecs
PLANS: list[tuple[float, list[str]]] = [
    (4.0, ["q4_0", "symmetric:4:g64", "symmetric:4:g128", "minmax:3:g32", "minmax:3:g64",
           "symmetric:3:g64"]),
    (3.0, ["minmax:3:g32", "minmax:3:g64", "symmetric:3:g64", "minmax:2:g32", "minmax:2:g64"]),
]


def reference(codec, blocks: torch.Tensor) -> QParams:
    """torch_to_nnef's Q4_0 scale: always negative, ``d = -max|x| / 8``."""
    return QParams(-blocks.abs().amax(dim=1, keepdim=True) / 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser)
    parser.add_argument("--calib-seqs", type=int, default=256, help="calibration sequences")
    parser.add_argument("--eval-seqs", type=int, default=32, help="evaluation sequences")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--plans-only", action="store_true", help="only the mixed plans")
    parser.add_argument("--no-plans", action="store_true", help="only the single-codec rows")
    parser.add_argument("--codecs", nargs="+", help="only these codecs' rows (e.g. q4_0)")
    parser.add_argument("--calibrations", nargs="+",
                        help="only the rows with these labels (e.g. minmax gptq:mse "
                             "'gptq:mse tune_steps=200')")  # fmt: skip
    args = parser.parse_args()
    folder, tok, model, texts = load(steps=args.steps, hidden=args.hidden, layers=args.layers)
    ids = torch.cat(text_batches(tok, texts["eval"], seq_len=args.seq_len,
                                 n_sequences=args.eval_seqs))  # fmt: skip
    calib = text_batches(tok, texts["calibration"], seq_len=args.seq_len,
                         n_sequences=args.calib_seqs)  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{folder.name}: {n_params / 1e6:.2f}M parameters "
          f"({(folder / 'train_log.txt').read_text().strip()}); eval {tuple(ids.shape)} tokens, "
          f"calibration {sum(b.numel() for b in calib)} tokens; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| codec | calibration | bits/weight | KL (nats) | top-1 | perplexity | seconds |")
    print("|---|---|---|---|---|---|---|")
    base_ppl = None
    for spec, cals in [] if args.plans_only else CONFIGS:
        if args.codecs and spec not in args.codecs:
            continue
        for entry in cals:
            cal, options = entry if isinstance(entry, tuple) else (entry, None)
            label = "reference rule" if cal == "reference" else cal
            if options:
                label += " " + " ".join(f"{k}={v}" for k, v in options.items())
            if args.calibrations and label not in args.calibrations:
                continue
            start = time.perf_counter()
            c = compare(model, ids, [spec], calibrations=[reference if cal == "reference" else cal],
                        exclude="model.embed_tokens", data=calib, progress=False,
                        calibration_options=options)  # fmt: skip
            seconds = time.perf_counter() - start
            r = c.results[0]
            base_ppl = c.reference_perplexity
            assert r.lm is not None
            print(f"| {spec} | {label} | {r.bits_per_weight:.2f} | {r.lm.kl:.5f} | "
                  f"{r.lm.top1:.4f} | {r.lm.perplexity:.3f} | {seconds:.1f} |", flush=True)
    for budget, candidates in [] if args.no_plans else PLANS:
        for cal in ("mse", "gptq:mse"):  # layers measured as they will be rounded
            start = time.perf_counter()
            p = plan(model, budget, candidates, data=calib, calibration=cal,
                     exclude="model.embed_tokens", progress=False)  # fmt: skip
            plan_s = time.perf_counter() - start
            start = time.perf_counter()
            c = compare(model, ids, [p], calibrations=[cal], exclude="model.embed_tokens",
                        data=calib, progress=False)  # fmt: skip
            r = c.results[0]
            base_ppl = c.reference_perplexity
            assert r.lm is not None
            print(f"| {p.label} (plan {plan_s:.0f} s) | {cal} | {r.bits_per_weight:.2f} | "
                  f"{r.lm.kl:.5f} | {r.lm.top1:.4f} | {r.lm.perplexity:.3f} | "
                  f"{time.perf_counter() - start:.1f} |", flush=True)
            counts: dict[str, int] = {}
            for spec in p.values():
                counts[spec] = counts.get(spec, 0) + 1
            print(f"|   {p.label} ({cal} sensitivities) codecs: {counts} | | | | | | |")
    print(f"float perplexity on the eval text: {base_ppl:.3f}")


if __name__ == "__main__":
    main()

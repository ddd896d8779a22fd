"""Model families (tests/families/zoo.py) quantized with q4_0 + a fallback codec and checked
in tract: bits per weight, share of weight bytes quantized, graph rewrites, tract error.

    python -m benchmarks.bench_encoder_families [--fallback minmax:4:pc] [--only resnet,dpt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import t2n_core
from t2n_quant import quantize_model
from tests.families.zoo import FAMILIES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fallback", default="minmax:4:pc", help="codec for what q4_0 cannot take")
    p.add_argument("--only", default="", help="comma-separated family names")
    args = p.parse_args(argv)
    names = [n for n in sorted(FAMILIES) if not args.only or n in args.only.split(",")]
    print("| family | weights q4_0 / fallback / float | bits/weight | % bytes quantized "
          "| folds + views | tract max abs err |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model, inputs = FAMILIES[name]()
            s = quantize_model(model, "q4_0", fallback=args.fallback, progress=False)
            n_q4 = sum(q.codec == "q4_0" for q in s.quantized)
            try:
                r = t2n_core.export(model, inputs, Path(tmp) / f"{name}.tgz", check=True,
                                    atol=1e-3, rtol=1e-3, progress=False)  # fmt: skip
                err = f"{max(o.max_abs_error for o in r.check.outputs):.2e}"
                notes = str(len(r.notes))
            except Exception as exc:  # a benchmark reports every failure
                err, notes = f"FAILED: {type(exc).__name__}", "-"
            print(
                f"| {name} | {n_q4} / {len(s.quantized) - n_q4} / {len(s.skipped)} | "
                f"{s.bits_per_weight:.2f} | {100 * s.quantized_fraction:.1f} | {notes} | {err} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

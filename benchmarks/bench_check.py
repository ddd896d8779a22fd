"""What running the tract check in a child process costs (``t2n_core.check``).

Times ``check_archive`` (tract in a child: validate the archive, start Python with numpy and
tract, load, run, return the outputs) against loading and running the same archive in this
process, on a small MLP and on a wider one, median of several runs.

Run: ``python -m benchmarks.bench_check``
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import t2n_core
from t2n_core.check import check_archive, load_runnable


def _median_s(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    print("| model | weights | in-process load + run (s) | child process check (s) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, width in [("MLP 64", 64), ("MLP 1024", 1024)]:
            model = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 10))
            x = torch.randn(4, width)
            path = Path(tmp) / f"{width}.nnef.tgz"
            t2n_core.export(model, (x,), path, progress=False)
            inputs = [x.numpy()]
            with torch.no_grad():
                expected = [model(x).numpy()]

            def in_process(path=path, inputs=inputs) -> None:
                load_runnable(path).run([np.asarray(a) for a in inputs])

            def child(path=path, inputs=inputs, expected=expected) -> None:
                check_archive(path, inputs, expected)

            n = sum(p.numel() for p in model.parameters())
            print(f"| {name} | {n} | {_median_s(in_process):.3f} | {_median_s(child):.3f} |")


if __name__ == "__main__":
    main()

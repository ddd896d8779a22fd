"""Cost in tract of keeping a batch norm after a q4_0 convolution (``max(y, y)``, ``mul``,
``add`` on the conv's output, :mod:`t2n_core.fold_scale`) against a model whose batch norms
were folded into the float convolutions before quantizing (``fuse_conv_bn_eval``), and the
float model: a Conv+BN+ReLU stack, median time of ``run`` in tract and the check's max error.

Each archive runs in a fresh child process that imports tract and numpy only.
Usage: python -m benchmarks.bench_bn_guard [--layers 6] [--channels 64] [--size 32] [--runs 30]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import t2n_core
from benchmarks._child import run_child
from t2n_quant import quantize_model

CHILD = """
import json, time
import numpy as np, tract
model = tract.nnef().load({path!r}).into_runnable()
x = np.random.default_rng(0).standard_normal({shape!r}, dtype=np.float32)
times = []
for _ in range({runs}):
    t0 = time.perf_counter()
    model.run([x])
    times.append(time.perf_counter() - t0)
print(json.dumps(dict(median=sorted(times)[len(times) // 2])))
"""


def cnn(layers: int, channels: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(layers):
        conv = nn.Conv2d(channels, channels, 3, padding=1)
        bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(channels, generator=g) * 0.1)
            bn.running_mean.copy_(torch.randn(channels, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
        mods += [conv, bn, nn.ReLU()]
    return nn.Sequential(*mods).eval()


def bn_fused(model: nn.Sequential) -> nn.Sequential:
    mods = list(model)
    out: list[nn.Module] = []
    for i in range(0, len(mods), 3):
        out += [fuse_conv_bn_eval(mods[i], mods[i + 1]), mods[i + 2]]
    return nn.Sequential(*out).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=30)
    a = parser.parse_args()
    torch.manual_seed(0)
    base = cnn(a.layers, a.channels)
    shape = (1, a.channels, a.size, a.size)
    x = torch.randn(shape)
    variants = {
        "f32 (tract folds BN)": copy.deepcopy(base),
        "q4_0, BN kept (default)": copy.deepcopy(base),
        "q4_0 of BN-fused f32": bn_fused(copy.deepcopy(base)),
    }
    for name, model in variants.items():
        if name.startswith("q4_0"):
            quantize_model(model, "q4_0", progress=False)
    print(f"{a.layers} x Conv2d({a.channels},{a.channels},3)+BN+ReLU, input {list(shape)}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(variants.items()):
            path = Path(tmp) / f"{i}.nnef.tgz"
            result = t2n_core.export(model, (x,), path, check=True, progress=False)
            assert result.check is not None
            (out,) = result.check.outputs
            timing = run_child(CHILD.format(path=str(path), shape=shape, runs=a.runs))
            verdict = "passed" if result.check.passed else "FAILED"
            print(f"{name:26s} run {timing['median'] * 1e3:7.2f} ms  check max_rel "
                  f"{out.max_rel_error:.2e} ({verdict})")  # fmt: skip


if __name__ == "__main__":
    main()

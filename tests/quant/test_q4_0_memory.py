"""tract keeps Q4_0 weights compressed: peak memory far below the f32 export's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

import t2n_core
from t2n_quant import quantize_model

#: the acceptance bound of issue #3: Q4_0 peak (net of the bare interpreter) < 0.25 x f32's
MAX_Q4_0_TO_F32_RATIO = 0.25

# Runs in a fresh interpreter that imports tract and numpy only (no torch): reads its own
# VmHWM (ru_maxrss would be inherited from this torch-holding process across fork+exec).
CHILD = """
import json, sys
X_SHAPE = tuple(int(d) for d in sys.argv[2].split(","))
import numpy as np, tract

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

baseline = hwm()
model = tract.nnef().with_tract_transformers().with_tract_extra().load(sys.argv[1])
runnable = model.into_runnable()
out = runnable.run([np.ones(X_SHAPE, np.float32)])[0].to_numpy()
print(json.dumps({"baseline": baseline, "peak": hwm(), "finite": bool(np.isfinite(out).all())}))
"""


def _tract_peak(path: Path, shape: tuple[int, ...]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path), ",".join(map(str, shape))],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_q4_0_peak_memory_in_tract_is_below_a_quarter_of_f32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(12)]).eval()
    assert sum(p.numel() for p in model.parameters()) > 50_000_000
    x = torch.randn(1, 4, 2048)  # rank 3: the weight reaches matmul through an unsqueeze
    t2n_core.export(model, (x,), tmp_path / "f32", progress=False)
    quantize_model(model, "q4_0", progress=False)
    t2n_core.export(model, (x,), tmp_path / "q4_0", progress=False)

    f32, q4 = _tract_peak(tmp_path / "f32", x.shape), _tract_peak(tmp_path / "q4_0", x.shape)
    assert f32["finite"] and q4["finite"]
    f32_net = f32["peak"] - f32["baseline"]
    q4_net = q4["peak"] - q4["baseline"]
    assert f32_net > 200_000_000, f32  # the f32 weights themselves are 201 MB
    assert q4_net < MAX_Q4_0_TO_F32_RATIO * f32_net, (q4_net / 2**20, f32_net / 2**20)

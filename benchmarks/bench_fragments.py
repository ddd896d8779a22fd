"""graph.nnef size, archive size and export time of an ``nn.TransformerEncoder`` (width 256,
random weights, dynamic length) with repeated blocks written as fragments (default) and flat
(``fragments=False``). Each export runs in a fresh child process.

Usage: python -m benchmarks.bench_fragments [--layers 12 24]
"""

from __future__ import annotations

import argparse

from benchmarks._child import run_child

CHILD = """
import json, os, tempfile, time
import torch, t2n_core
from torch import nn
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
model = nn.TransformerEncoder(layer, {layers}, enable_nested_tensor=False).eval()
out = tempfile.mkdtemp()
path = os.path.join(out, "m.nnef")
t0 = time.perf_counter()
t2n_core.export(model, (torch.randn(1, 16, 256),), path, dynamic_axes={{"src": {{1: "T"}}}},
                progress=False, fragments={fragments})
seconds = time.perf_counter() - t0
files = [os.path.join(path, f) for f in os.listdir(path)]
archive = sum(os.path.getsize(f) for f in files)
graph = os.path.getsize(os.path.join(path, "graph.nnef"))
lines = open(os.path.join(path, "graph.nnef")).read().count("\\n")
import shutil; shutil.rmtree(out)
print(json.dumps(dict(seconds=seconds, graph=graph, lines=lines, archive=archive)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24])
    args = parser.parse_args()
    for layers in args.layers:
        for fragments in (False, True):
            r = run_child(CHILD.format(layers=layers, fragments=fragments))
            mode = "fragments" if fragments else "flat"
            print(
                f"layers={layers:3} {mode:9} graph.nnef={r['graph'] / 1024:7.1f} KiB "
                f"({r['lines']} lines) archive={r['archive'] / 2**20:7.2f} MiB "
                f"export={r['seconds']:6.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()

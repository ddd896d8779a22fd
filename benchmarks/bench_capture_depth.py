"""Capture time vs depth: a random Llama of width 768 (the 122M fixture's width) exported with
``export_causal_lm`` (KV cache, f32, no tract check), with repeated blocks captured once and
written as fragments (default) and flat (``fragments=False``).

Each run happens in a fresh child process. Reports the capture step (``torch.export`` +
decompositions, CPU seconds and wall seconds), the whole export (wall) and graph.nnef size.
Usage: python -m benchmarks.bench_capture_depth [--layers 2 12 32] [--modes fragments flat]
"""

from __future__ import annotations

import argparse

from benchmarks._child import run_child

CHILD = """
import json, os, sys, tempfile, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from t2n_core.llm import export_causal_lm
export_module = sys.modules["t2n_core.export"]
timings = {{}}
original = export_module.capture
def timed_capture(*args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = original(*args, **kwargs)
    timings["capture_wall"] = time.perf_counter() - wall
    timings["capture_cpu"] = time.process_time() - cpu
    return result
export_module.capture = timed_capture
torch.manual_seed(0)
config = LlamaConfig(vocab_size=24000, hidden_size=768, intermediate_size=2048,
                     num_hidden_layers={layers}, num_attention_heads=12, num_key_value_heads=12,
                     max_position_embeddings=512, tie_word_embeddings=False)
model = LlamaForCausalLM(config).eval()
params = sum(p.numel() for p in model.parameters())
out = tempfile.mkdtemp()
path = os.path.join(out, "m.nnef")
t0 = time.perf_counter()
export_causal_lm(model, path, check=False, progress=False, fragments={fragments})
seconds = time.perf_counter() - t0
graph = os.path.getsize(os.path.join(path, "graph.nnef"))
import shutil; shutil.rmtree(out)
print(json.dumps(dict(seconds=seconds, graph=graph, params=params, **timings)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 12, 32])
    parser.add_argument("--modes", nargs="+", default=["fragments", "flat"])
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        for layers in args.layers:
            r = run_child(CHILD.format(layers=layers, fragments=mode == "fragments"))
            rows.append((mode, layers, r))
            print(
                f"{mode:9} layers={layers:3} params={r['params'] / 1e6:6.1f}M "
                f"capture cpu={r['capture_cpu']:6.1f}s wall={r['capture_wall']:6.1f}s "
                f"export wall={r['seconds']:6.1f}s graph.nnef={r['graph'] / 1024:7.1f} KiB",
                flush=True,
            )
    for mode in args.modes:
        cpu = {layers: r["capture_cpu"] for m, layers, r in rows if m == mode}
        if len(cpu) > 1:
            lo, hi = min(cpu), max(cpu)
            print(f"{mode}: capture cpu {hi} layers / {lo} layers = {cpu[hi] / cpu[lo]:.2f}x")


if __name__ == "__main__":
    main()

"""Several graphs in one archive against one archive per graph: an LLM's prefill and decode
graphs (``t2n_core.llm.export_prefill_decode``), random-weight Llama, f32 or q4_0.

Reports the archive bytes of both graphs in one archive and in two separate archives (the
same graphs, each exported alone with ``export_many``), export time, and tract's decode speed
of the decode graph (T = 1 fixed) against the prefill graph run on one token (what a single
step graph does). Each measurement runs in a fresh child process.

Usage: python -m benchmarks.bench_export_many [--hidden 256 --layers 4 --vocab 4096]
       [--codec q4_0] [--steps 32]
"""

from __future__ import annotations

import argparse

from benchmarks._child import run_child

SETUP = """
import json, os, tempfile, time
import numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM
import t2n_core
from t2n_core.llm import export_prefill_decode
from t2n_core.llm.export import prefill_decode_graphs
from t2n_core.llm.generate import empty_cache
torch.manual_seed(0)
config = LlamaConfig(vocab_size={vocab}, hidden_size={hidden}, intermediate_size={hidden} * 3,
                     num_hidden_layers={layers}, num_attention_heads=8, num_key_value_heads=4,
                     max_position_embeddings=512)
model = LlamaForCausalLM(config).eval()
if {codec!r}:
    from t2n_quant import quantize_model
    quantize_model(model, {codec!r}, exclude=["lm_head"])
out = tempfile.mkdtemp()
both = os.path.join(out, "both.nnef.tgz")
"""

BOTH = """
t0 = time.perf_counter()
export_prefill_decode(model, both, progress=False, check=False)
seconds = time.perf_counter() - t0
params = sum(p.numel() for p in model.parameters())
print(json.dumps(dict(params=params, size=os.path.getsize(both), seconds=seconds)))
"""

ALONE = """
graphs = prefill_decode_graphs(model, dtype=torch.float32)
sizes, t0 = {}, time.perf_counter()
for name in ("prefill", "decode"):
    path = os.path.join(out, name + ".nnef.tgz")
    t2n_core.export_many({name: graphs[name]}, path, progress=False)
    sizes[name] = os.path.getsize(path)
print(json.dumps(dict(sizes=sizes, seconds=time.perf_counter() - t0)))
"""

SPEED = """
export_prefill_decode(model, both, progress=False, check=False)
runnables = {{g: t2n_core.load_graph(both, g).into_runnable() for g in ("prefill", "decode")}}
ids = np.random.default_rng(0).integers(0, {vocab}, (1, 16)).astype(np.int64)

def decode(graph):
    first = runnables["prefill"]
    outs = [o.to_numpy() for o in first.run([ids, *empty_cache(first, 1)])]
    past, token = outs[1:], outs[0][:, -1].argmax(-1)[:, None].astype(np.int64)
    t0 = time.perf_counter()
    for _ in range({steps}):
        outs = [o.to_numpy() for o in runnables[graph].run([token, *past])]
        past, token = outs[1:], outs[0][:, -1].argmax(-1)[:, None].astype(np.int64)
    return {steps} / (time.perf_counter() - t0)

runs = {{"decode": [], "prefill": []}}
for _ in range(3):
    for g in runs:
        runs[g].append(decode(g))
print(json.dumps({{g: max(v) for g, v in runs.items()}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--codec", default="", help="quantize first (e.g. q4_0)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed")
    args = parser.parse_args()
    setup = SETUP.format(**vars(args))
    both = run_child(setup + BOTH)
    alone = run_child(setup + ALONE)
    speed = run_child(setup + SPEED.format(**vars(args)))
    mib = 2**20
    print(f"Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab} "
          f"({both['params'] / 1e6:.1f} M parameters, {args.codec or 'f32'})")  # fmt: skip
    print(f"one archive, prefill + decode: {both['size'] / mib:8.2f} MiB  "
          f"export {both['seconds']:.1f} s")  # fmt: skip
    sizes = alone["sizes"]
    separate = sizes["prefill"] + sizes["decode"]
    print(f"two archives, one graph each:  {separate / mib:8.2f} MiB  "
          f"export {alone['seconds']:.1f} s (prefill {sizes['prefill'] / mib:.2f} + decode "
          f"{sizes['decode'] / mib:.2f})")  # fmt: skip
    print(f"one archive / two archives:    {both['size'] / separate:8.2f}")
    print(f"tract decode, {args.steps} steps after a 16-token prompt (best of 3): decode graph "
          f"{speed['decode']:.1f} tokens/s, prefill graph on one token "
          f"{speed['prefill']:.1f} tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()

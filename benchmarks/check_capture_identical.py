"""Archives unchanged by a capture change: export the tiny LLM families (``tests/llm``) and a
few of them deeper, print an md5 of each archive's ``graph.nnef`` and ``.dat`` files, and
compare with a saved run.

Usage (before the change, then after it)::

    python -m benchmarks.check_capture_identical --save /tmp/before.json
    python -m benchmarks.check_capture_identical --compare /tmp/before.json

Exits 1 when an archive differs (each differing file is named). ``--cases llama gpt2@4``
picks cases (``NAME@LAYERS`` overrides the number of decoder layers; ``+q4_0`` quantizes).
Runs with ``PYTHONHASHSEED=0`` (re-executing itself if needed): Gemma 3's rotary embeddings
are built in the order of a set of strings, so its graph.nnef lists them in an order that
otherwise changes from one process to the next.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

#: families of different layouts (sliding/full layers, MoE, GPT-2's Conv1D, multi-query,
#: parallel attention, latent attention), some with 4 layers (more than one reused call)
CASES = (
    "llama", "llama@4", "mistral", "qwen3", "phi3", "gemma3", "gemma3@4", "gpt2@3",
    "gpt_neox", "opt", "falcon_multi_query", "bloom", "mixtral", "deepseek_v3",
    "llama@4+q4_0", "gemma2+q4_0",
)  # fmt: skip


def _model(case: str):
    import torch
    import transformers

    from tests.llm.families import FAMILIES, randomize, tiny

    name, _, mode = case.partition("+")
    name, _, layers = name.partition("@")
    if not layers:
        model = tiny(name)
    else:
        config_cls, model_cls, kwargs = FAMILIES[name]
        key = "n_layer" if "n_layer" in kwargs else "num_hidden_layers"
        kwargs = {**kwargs, key: int(layers)}
        if "layer_types" in kwargs:
            kwargs["layer_types"] = (kwargs["layer_types"] * int(layers))[: int(layers)]
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs))
        randomize(model, 0)
        model = model.eval()
    if mode:
        from t2n_quant import quantize_model

        quantize_model(model, mode, progress=False)
    return model


def digest(path: str) -> dict[str, str]:
    """md5 of graph.nnef and of each .dat file under ``path`` (an archive directory)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in sorted(files):
            if name == "graph.nnef" or name.endswith(".dat"):
                full = os.path.join(root, name)
                with open(full, "rb") as f:
                    out[os.path.relpath(full, path)] = hashlib.md5(f.read()).hexdigest()
    return out


def run(cases: list[str]) -> dict[str, dict[str, str]]:
    from t2n_core.llm import export_causal_lm

    results = {}
    for case in cases:
        model = _model(case)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.nnef")
            start = time.perf_counter()
            export_causal_lm(model, path, check=False, progress=False)
            results[case] = digest(path)
        print(f"{case:24} {len(results[case]):4} files  {time.perf_counter() - start:5.1f}s",
              flush=True)  # fmt: skip
    return results


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]], env)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--save", help="write the digests to this JSON file")
    parser.add_argument("--compare", help="compare with the digests in this JSON file")
    args = parser.parse_args()
    results = run(args.cases)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = 0
        for case, files in results.items():
            if case not in before:
                print(f"{case}: not in {args.compare}")
                continue
            changed = sorted(
                name for name in set(files) | set(before[case])
                if files.get(name) != before[case].get(name)
            )  # fmt: skip
            differ += bool(changed)
            print(f"{case:24} {'identical' if not changed else 'DIFFERS: ' + ', '.join(changed)}")
        print(f"{len(results) - differ} of {len(results)} archives identical")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()

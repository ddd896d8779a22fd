"""``export-llm`` on random bf16 checkpoints: time and peak RSS of the export, and tract's speed.

Checkpoints are written tensor by tensor (random bf16, never a whole model in memory) from
configs of known sizes; each export runs in a fresh child process that reports its own peak
RSS (VmHWM). Run, from the repository root:

    python -m benchmarks.bench_export_llm make 0.5b /tmp/ck-0.5b      # write a checkpoint
    python -m benchmarks.bench_export_llm export /tmp/ck-0.5b /tmp/out-0.5b --codec q4_0
    python -m benchmarks.bench_export_llm tract /tmp/out-0.5b          # tract RSS, tokens/s
    python -m benchmarks.bench_export_llm precision /tmp/ck-122m       # f16 vs f32 parts
    python -m benchmarks.bench_export_llm compare /tmp/ck-122m --codec q4_0 --repeat 3
    python -m benchmarks.bench_export_llm write /tmp/ck-14b /tmp/14b.nnef.tgz --codec q4_0
    python -m benchmarks.bench_export_llm prefill /tmp/ck-14b /tmp/14b.nnef.tgz --codec q4_0

``compare`` times whole processes, alternating, beside the reference tool
(``t2n_export_llm_to_tract`` of torch-to-nnef-llm in ``--ref-venv``, default
/work/refvenv-llm, whose ``tract`` on the PATH only answers ``--version``). Both sides start a
fresh interpreter, load the checkpoint, export, write io samples and the archive; neither
runs tract (t2n ``--no-check``, the reference ``-nv``) unless ``--check`` (t2n only: the
reference cannot, its tract being a stub). q4_0 is compared with the reference's
``min_max_q4_0_with_embeddings`` (t2n quantizes the embedding too).

On a shared, oversubscribed machine set ``OMP_NUM_THREADS=1``: measured here with 12 runnable
processes on 2 cores, a 16M-value q4_0 quantization took 0.07 s of CPU with one thread and
0.92 s with two (threads spin waiting for each other), so the figures were taken with one.

``write`` exports the archive alone (no io samples, so one pass over the checkpoint instead of
two); ``prefill`` loads it in tract, runs 8 tokens, and compares with the streamed PyTorch model.

Sizes: 122m (Llama, hidden 768, 12 layers, vocab 24000), 0.5b / 1.5b (Qwen2 shapes,
vocab 151936, tied), 8b (Llama-3 shapes), 14b (Llama-2-13B layers with Llama-3's vocabulary:
14.0B parameters, 26 GiB of bf16, more than the 24 GiB of memory of the machine it was
measured on). The 8B checkpoint takes 16 GB of disk, the 14B one 28 GB.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._child import run_child

CONFIGS = {
    "122m": dict(
        model_type="llama", vocab_size=24000, hidden_size=768, intermediate_size=2048,
        num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
        tie_word_embeddings=False,
    ),
    "0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "14b": dict(
        model_type="llama", vocab_size=128256, hidden_size=5120, intermediate_size=13824,
        num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
        tie_word_embeddings=False,
    ),
}  # fmt: skip
SHARD_BYTES = 2 << 30


def make_checkpoint(size: str, out: Path) -> None:
    """Write a random bf16 checkpoint of ``size`` to ``out``, shard by shard."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from t2n_core.llm.checkpoint import parameters_on_meta

    spec = dict(CONFIGS[size])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=1, eos_token_id=2)
    config.dtype = torch.bfloat16
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    names = list(model.state_dict(keep_vars=True))
    params = dict(model.named_parameters())  # tied aliases once
    gen = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for name in names:
        if name not in params:
            continue
        shape = tuple(params[name].shape)
        nbytes = math.prod(shape) * 2
        if sizes[-1] + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = shape  # type: ignore[assignment]
        sizes[-1] += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard.items():
            if len(shape) == 1:
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)  # norm weights
            else:
                std = 1.0 / math.sqrt(shape[-1])
                tensors[name] = (torch.randn(shape, generator=gen) * std).to(torch.bfloat16)
            weight_map[name] = file
        save_file(tensors, out / file, metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    total = sum(sizes)
    print(f"{size}: {total / 2:.3g} parameters, {total / 2**30:.2f} GiB bf16 in {len(shards)} "
          f"shard(s) -> {out}")  # fmt: skip


def export_in_child(ckpt: Path, out: Path, codec: str | None, check: bool, dtype: str) -> dict:
    code = f"""
        import json, resource, time
        start = time.perf_counter()
        from benchmarks._child import vm_hwm_bytes
        from t2n_quant.llm import export_checkpoint
        shipped = export_checkpoint({str(ckpt)!r}, {str(out)!r}, codec={codec!r}, dtype={dtype!r},
                                    check={check!r}, overwrite=True, progress=False)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        from benchmarks._child import worker_hwm_bytes
        print(json.dumps({{"seconds": time.perf_counter() - start, "peak": vm_hwm_bytes(),
                          "cpu": usage.ru_utime + usage.ru_stime,
                          "child_peak": worker_hwm_bytes(),
                          "timings": shipped.timings, "cpu_timings": shipped.cpu_timings,
                          "archive": shipped.manifest["archive_bytes"],
                          "params": shipped.manifest["parameters"]}}))
    """
    return run_child(code, timeout=3600)


def write_in_child(ckpt: Path, out: Path, codec: str | None) -> dict:
    """The archive alone (``export_causal_lm``, no io samples): one pass over the weights."""
    code = f"""
        import json, resource, time
        start = time.perf_counter()
        import torch
        from benchmarks._child import vm_hwm_bytes
        from t2n_core.llm import export_causal_lm
        from t2n_core.llm.checkpoint import open_checkpoint, streamed_model
        from t2n_quant import quantize_model
        ckpt = open_checkpoint({str(ckpt)!r})
        model = streamed_model(ckpt, torch.float32)
        if {codec!r}:
            quantize_model(model, {codec!r}, progress=False)
        result = export_causal_lm(model, {str(out)!r}, dtype=torch.float32, check=False,
                                  all_logits=False, overwrite=True, progress=False)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({{"seconds": time.perf_counter() - start, "peak": vm_hwm_bytes(),
                          "cpu": usage.ru_utime + usage.ru_stime, "weights": ckpt.weight_bytes,
                          "archive": result.path.stat().st_size}}))
    """
    return run_child(code, timeout=7200)


def prefill_in_child(ckpt: Path, archive: Path, codec: str | None, tokens: int = 8) -> dict:
    """tract loads ``archive`` and runs a prompt of ``tokens`` random ids (empty cache), in a
    child of this child (its peak RSS apart); then the streamed PyTorch model runs the same
    prompt (one pass over the checkpoint) and the last position's logits are compared."""
    code = f"""
        import json, resource, time
        import numpy as np, torch
        from benchmarks._child import vm_hwm_bytes
        from t2n_core.check import run_tract
        from t2n_core.llm.checkpoint import open_checkpoint, streamed_model
        from t2n_core.llm.wrapper import CausalLMWithCache, past_shapes_of
        from t2n_quant import quantize_model
        ckpt = open_checkpoint({str(ckpt)!r})
        model = streamed_model(ckpt, torch.float32)
        if {codec!r}:
            quantize_model(model, {codec!r}, progress=False)
        vocab = model.config.get_text_config(decoder=True).vocab_size
        ids = np.random.default_rng(0).integers(3, vocab, (1, {tokens}), dtype=np.int64)
        empty = [np.zeros((1, h, 0, d), np.float32) for h, d in past_shapes_of(model)]
        start = time.perf_counter()
        got = run_tract({str(archive)!r}, [ids, *empty])[0]
        tract_s = time.perf_counter() - start
        from benchmarks._child import worker_hwm_bytes
        tract_peak = worker_hwm_bytes()
        start = time.perf_counter()
        with torch.no_grad():
            step = CausalLMWithCache(model, all_logits=False)
            ref = step(torch.from_numpy(ids), *map(torch.from_numpy, empty))[0].numpy()
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        print(json.dumps({{"tract_seconds": tract_s, "tract_peak": tract_peak,
                          "torch_seconds": time.perf_counter() - start, "peak": vm_hwm_bytes(),
                          "error": err, "same_argmax": bool(got.argmax() == ref.argmax())}}))
    """
    return run_child(code, timeout=7200)


def tract_speed(out: Path, prompt: int = 64, decode: int = 32, repeat: int = 3) -> dict:
    """tract's prefill and decode tokens/s (best of ``repeat`` generations: the machine is
    shared) and the peak RSS of the tract worker process that ran them (a fresh child, so
    that only this archive was ever loaded there)."""
    code = f"""
        import json, time
        import numpy as np
        from benchmarks._child import worker_hwm_bytes
        from t2n_core.llm.generate import generate_text
        m = json.load(open({str(out / "manifest.json")!r}))
        ids = [int(i) for i in np.random.default_rng(0).integers(3, m["vocab_size"], {prompt})]
        runs = [generate_text({str(out)!r}, prompt_ids=ids, max_new_tokens={decode + 1})
                for _ in range({repeat})]
        print(json.dumps({{"prefill": max(g.prefill_tokens_per_s for g in runs),
                          "decode": max(g.decode_tokens_per_s for g in runs),
                          "decoded": min(len(g.tokens) - 1 for g in runs),
                          "peak": worker_hwm_bytes()}}))
    """
    return run_child(code, timeout=1800)


def precision_effect(ckpt: Path, tmp: Path) -> None:
    """Max |logit| error vs the f32 reference for f16 variants, in tract, on the io samples."""
    import numpy as np

    from t2n_core.check import run_tract

    rows = []
    f32 = tmp / "f32"
    export_in_child(ckpt, f32, None, False, "f32")
    variants = {"f16": {}, "f16 + f32 attention": {"f32_attention": True},
                "f16 + f32 norm": {"f32_norm": True},
                "f16 + both": {"f32_attention": True, "f32_norm": True}}  # fmt: skip
    for name, flags in variants.items():
        out = tmp / name.replace(" ", "_").replace("+", "")
        code = f"""
            from t2n_core.llm import export_checkpoint
            export_checkpoint({str(ckpt)!r}, {str(out)!r}, dtype="f16", check=False,
                              overwrite=True, progress=False, **{flags!r})
            print("{{}}")
        """
        run_child(code, timeout=3600)
        errs = []
        for sample in ("prompt", "step", "chunk"):
            inputs = dict(np.load(f32 / f"{sample}_inputs.npz"))
            ref = run_tract(f32 / "model.nnef.tgz", list(inputs.values()))[0]
            half = [v.astype(np.float16) if v.dtype == np.float32 else v for v in inputs.values()]
            got = run_tract(out / "model.nnef.tgz", half)[0].astype(np.float32)
            errs.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
        rows.append((name, max(errs)))
    print("| variant | max abs logit error / max abs logit, vs f32 (tract, 3 samples) |")
    print("|---|---|")
    for name, err in rows:
        print(f"| {name} | {err:.2e} |")


def timed_process(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; its wall time, CPU time (user + system) and peak RSS (from wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output.decode(errors='replace')[-4000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak": usage.ru_maxrss * 1024}


def compare_with_reference(
    ckpt: Path, tmp: Path, codec: str | None, repeat: int, check: bool, ref_venv: Path
) -> None:
    """Whole-process export time of t2n (CLI) and the reference tool, alternating."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root)
    # pip byte-compiles a package when it installs it (the reference's modules are); a source
    # checkout run with PYTHONDONTWRITEBYTECODE=1 would compile t2n's ~130 modules from source
    # in every run instead (0.2 s of CPU): compiled once here, as an install would
    for package in ("t2n_core", "t2n_quant"):
        compileall.compile_dir(root / package, quiet=1)
    ref_env = {**env, "PATH": f"{ref_venv / 'bin'}:{env['PATH']}"}
    ref_env.pop("PYTHONPATH")
    ours = [sys.executable, "-m", "t2n_core.cli", "export-llm", str(ckpt), "-o",
            str(tmp / "t2n"), "--dtype", "f32", "--quiet"]  # fmt: skip
    ours += ["--codec", codec] if codec else []
    ours += [] if check else ["--no-check"]
    ref = [str(ref_venv / "bin" / "t2n_export_llm_to_tract"), "-e", str(tmp / "ref"), "-d",
           str(ckpt), "-dt", "f32", "-nv", "--tract-specific-path",
           str(ref_venv / "bin" / "tract")]  # fmt: skip
    ref += ["-c", "min_max_q4_0_with_embeddings"] if codec == "q4_0" else []
    if codec not in (None, "q4_0"):
        raise SystemExit("compare knows the reference's equivalent of q4_0 only")
    label = f"{ckpt.name} {codec or 'f32'}"
    print(f"{label}: t2n {' '.join(ours[1:])}\n{label}: reference {' '.join(ref)}", flush=True)
    rows = []
    for i in range(repeat):
        load = os.getloadavg()[0]
        runs = {}
        for side, cmd, side_env in (("t2n", ours, env), ("reference", ref, ref_env)):
            shutil.rmtree(tmp / side, ignore_errors=True)
            runs[side] = timed_process(cmd, side_env)
        shutil.rmtree(tmp, ignore_errors=True)
        rows.append((load, runs))
        t, r = runs["t2n"], runs["reference"]
        print(f"run {i + 1}: load {load:.2f} | t2n wall {t['wall']:.1f} s cpu {t['cpu']:.1f} s "
              f"peak {t['peak'] / 2**30:.2f} GiB | reference wall {r['wall']:.1f} s cpu "
              f"{r['cpu']:.1f} s peak {r['peak'] / 2**30:.2f} GiB | ratio wall "
              f"{t['wall'] / r['wall']:.2f} cpu {t['cpu'] / r['cpu']:.2f}", flush=True)  # fmt: skip
    best = {side: min(runs[side]["wall"] for _, runs in rows) for side in ("t2n", "reference")}
    cpu = {side: min(runs[side]["cpu"] for _, runs in rows) for side in ("t2n", "reference")}
    print(f"{label} best of {repeat}: t2n {best['t2n']:.1f} s wall ({cpu['t2n']:.1f} s cpu), "
          f"reference {best['reference']:.1f} s wall ({cpu['reference']:.1f} s cpu): ratio "
          f"{best['t2n'] / best['reference']:.2f} wall, {cpu['t2n'] / cpu['reference']:.2f} cpu; "
          f"load average {os.getloadavg()[0]:.2f} now")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("size", choices=list(CONFIGS))
    p.add_argument("out", type=Path)
    p = sub.add_parser("export")
    p.add_argument("ckpt", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--codec")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--no-check", action="store_true")
    p = sub.add_parser("compare")
    p.add_argument("ckpt", type=Path)
    p.add_argument("--codec", choices=["q4_0"])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--check", action="store_true", help="t2n runs its tract check too")
    p.add_argument("--ref-venv", type=Path, default=Path("/work/refvenv-llm"))
    p.add_argument("--tmp", type=Path, default=Path("/tmp/t2n-compare"))
    p = sub.add_parser("write")
    p.add_argument("ckpt", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--codec")
    p = sub.add_parser("prefill")
    p.add_argument("ckpt", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--codec")
    p = sub.add_parser("tract")
    p.add_argument("out", type=Path)
    p = sub.add_parser("precision")
    p.add_argument("ckpt", type=Path)
    p.add_argument("--tmp", type=Path, default=Path("/tmp/t2n-precision"))
    args = parser.parse_args()
    if args.cmd == "make":
        make_checkpoint(args.size, args.out)
    elif args.cmd == "export":
        start = time.perf_counter()
        r = export_in_child(args.ckpt, args.out, args.codec, not args.no_check, args.dtype)
        print(f"{args.ckpt.name} {args.codec or args.dtype} check={not args.no_check}: "
              f"{r['seconds']:.1f} s in the child ({time.perf_counter() - start:.1f} s with start,"
              f" {r['cpu']:.0f} s CPU), peak RSS {r['peak'] / 2**30:.2f} GiB, "
              f"(tract check worker {r['child_peak'] / 2**30:.2f} GiB), "
              f"archive {r['archive'] / 2**20:.0f} MiB, "
              f"{r['params'] / 1e6:.0f}M parameters; "
              + ", ".join(f"{k} {v:.1f} s ({r['cpu_timings'][k]:.1f} s CPU)"
                          for k, v in r["timings"].items())
              + f"; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    elif args.cmd == "compare":
        compare_with_reference(args.ckpt, args.tmp, args.codec, args.repeat, args.check,
                               args.ref_venv)  # fmt: skip
    elif args.cmd == "write":
        r = write_in_child(args.ckpt, args.archive, args.codec)
        print(f"{args.ckpt.name} {args.codec or 'f32'} archive only: {r['seconds']:.1f} s "
              f"({r['cpu']:.0f} s CPU), peak RSS {r['peak'] / 2**30:.2f} GiB for "
              f"{r['weights'] / 2**30:.1f} GiB of weights, archive {r['archive'] / 2**30:.2f} GiB")
    elif args.cmd == "prefill":
        r = prefill_in_child(args.ckpt, args.archive, args.codec)
        print(f"{args.archive}: tract load + 8-token prefill {r['tract_seconds']:.1f} s, tract "
              f"peak RSS {r['tract_peak'] / 2**30:.2f} GiB; PyTorch (streamed) "
              f"{r['torch_seconds']:.1f} s, peak RSS {r['peak'] / 2**30:.2f} GiB; last logits "
              f"max error / max |logit| {r['error']:.2e}, same argmax {r['same_argmax']}")
    elif args.cmd == "tract":
        r = tract_speed(args.out)
        print(f"{args.out.name}: prefill (64 tokens) {r['prefill']:.0f} tokens/s, decode "
              f"({r['decoded']} tokens) {r['decode']:.1f} tokens/s, best of 3; tract worker "
              f"peak RSS {r['peak'] / 2**20:.0f} MiB; load average "
              f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    else:
        precision_effect(args.ckpt, args.tmp)


if __name__ == "__main__":
    main()

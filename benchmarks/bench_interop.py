"""Figures for bitsandbytes / safetensors interop (random weights, built in code).

    python -m benchmarks.bench_interop bnb        # per bitsandbytes variant: tract vs bnb,
                                                  # archive size and tract peak RSS vs q4_0
    python -m benchmarks.bench_interop save       # save/load_quantized of the 122M model
    python -m benchmarks.bench_interop stream     # quantize_safetensors peak RSS, two sizes

Peak RSS is VmHWM read inside a fresh child process (benchmarks/_child.py).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks._child import run_child

MIB = 1024 * 1024


def _mlp(make, dim: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [make(dim, dim), nn.GELU()]
    return nn.Sequential(*mods)


def _tract_peak(archive: Path, x: np.ndarray) -> dict:
    """Peak RSS of a child that loads ``archive`` in tract and runs it once."""
    code = f"""
        import json, numpy as np, tract
        from benchmarks._child import vm_hwm_bytes
        base = vm_hwm_bytes()
        m = tract.nnef().with_tract_transformers().with_tract_extra().load({str(archive)!r})
        out = m.into_runnable().run([np.load({str(archive)!r} + '.x.npy')])
        print(json.dumps(dict(peak=vm_hwm_bytes(), base=base)))
    """
    np.save(str(archive) + ".x.npy", x)
    return run_child(code)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix == ".dat")


def _linear4bit(bnb, kw: dict):
    return lambda i, o: bnb.nn.Linear4bit(i, o, compute_dtype=torch.float32, **kw)


def bench_bnb(dim: int, layers: int) -> None:
    import bitsandbytes as bnb

    import t2n_core
    from t2n_quant import quantize_model
    from t2n_quant.interop.bitsandbytes import convert_bitsandbytes

    torch.manual_seed(0)
    ref = _mlp(lambda i, o: nn.Linear(i, o), dim, layers).eval()
    x = torch.randn(8, dim)
    variants = {
        "nf4": dict(quant_type="nf4", compress_statistics=False),
        "nf4+dq": dict(quant_type="nf4", compress_statistics=True),
        "fp4": dict(quant_type="fp4", compress_statistics=False),
        "fp4+dq": dict(quant_type="fp4", compress_statistics=True),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        q4 = copy.deepcopy(ref)
        quantize_model(q4, "q4_0", progress=False)
        t2n_core.export(q4, (x,), out / "q4_0.nnef", progress=False)
        q4_size = _dir_size(out / "q4_0.nnef")
        q4_rss = _tract_peak(out / "q4_0.nnef", x.numpy())
        f32 = copy.deepcopy(ref)
        t2n_core.export(f32, (x,), out / "f32.nnef", progress=False)
        f32_rss = _tract_peak(out / "f32.nnef", x.numpy())
        makers = {name: _linear4bit(bnb, kw) for name, kw in variants.items()}
        makers["int8"] = lambda i, o: bnb.nn.Linear8bitLt(i, o, has_fp16_weights=False)
        runs = [(name, make, None) for name, make in makers.items()]
        runs.append(("nf4+dq -> q4_0", makers["nf4+dq"], "q4_0"))
        for name, make, reencode in runs:
            net = _mlp(make, dim, layers)
            net.load_state_dict(ref.state_dict())
            net = net.to("cpu")
            net.train()  # bitsandbytes' dequantize-then-matmul forward
            with torch.no_grad():
                bnb_deq = net(x).numpy()
            other = copy.deepcopy(net).eval()  # its eval forward repacks / quantizes activations
            with torch.no_grad():
                bnb_eval = other(x).numpy()
            t0 = time.perf_counter()
            conv = convert_bitsandbytes(net, reencode=reencode)
            conv_s = time.perf_counter() - t0
            path = out / f"{name.replace(' ', '')}.nnef"
            t2n_core.export(net.eval(), (x,), path, progress=False)
            import tract

            model = tract.nnef().with_tract_transformers().with_tract_extra().load(str(path))
            (y,) = model.into_runnable().run([x.numpy()])
            got = y.to_numpy()
            rss = _tract_peak(path, x.numpy())
            rows.append((
                name, conv.layers[0].codec, float(np.abs(got - bnb_deq).max()),
                float(np.abs(got - bnb_eval).max()), float(np.abs(bnb_deq).max()),
                _dir_size(path), (rss["peak"] - rss["base"]), conv_s,
            ))  # fmt: skip
    print(f"model: {layers} x Linear({dim}, {dim}) + GELU, batch 8, random weights")
    print("| variant | codec | max abs tract - bnb (dequant fwd) | max abs tract - bnb "
          "(eval fwd) | max abs out | archive .dat MiB | tract peak RSS - base MiB "
          "| convert s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3g} | {r[3]:.3g} | {r[4]:.3g} | {r[5] / MIB:.2f} "
              f"| {r[6] / MIB:.1f} | {r[7]:.2f} |")  # fmt: skip
    print(f"| q4_0 (same float model) | q4_0 | - | - | - | {q4_size / MIB:.2f} "
          f"| {(q4_rss['peak'] - q4_rss['base']) / MIB:.1f} | - |")  # fmt: skip
    print(f"| f32 (same float model) | - | - | - | - | - "
          f"| {(f32_rss['peak'] - f32_rss['base']) / MIB:.1f} | - |")  # fmt: skip


def bench_save(codec: str) -> None:
    code = f"""
        import json, time, tempfile, os
        import torch
        from benchmarks.models import transformer_120m
        from benchmarks._child import vm_hwm_bytes
        from t2n_quant import quantize_model
        from t2n_quant.interop.safetensors import save_quantized, load_quantized
        torch.manual_seed(0)
        model = transformer_120m().eval()
        t0 = time.perf_counter(); quantize_model(model, {codec!r}, progress=False)
        tq = time.perf_counter() - t0
        unique = {{id(t): t for t in model.state_dict(keep_vars=True).values()}}
        packed = sum(getattr(t, "nbytes", t.numel() * t.element_size()) for t in unique.values())
        d = tempfile.mkdtemp(dir="/tmp")
        t0 = time.perf_counter()
        files = save_quantized(model, d + "/m.safetensors", progress=False)
        ts = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in files)
        fresh = transformer_120m()
        t0 = time.perf_counter(); load_quantized(d + "/m.safetensors", fresh)
        tl = time.perf_counter() - t0
        for f in files: f.unlink()
        os.rmdir(d)
        print(json.dumps(dict(quantize=tq, save=ts, load=tl, size=size, packed=packed)))
    """
    r = run_child(code)
    print(f"122M transformer (transformer_120m), {codec}: quantize {r['quantize']:.1f} s, "
          f"save_quantized {r['save']:.2f} s, load_quantized {r['load']:.2f} s, file "
          f"{r['size'] / MIB:.1f} MiB vs packed state {r['packed'] / MIB:.1f} MiB "
          f"({100 * (r['size'] / r['packed'] - 1):+.2f}%)")  # fmt: skip


def _write_checkpoint(path: Path, mib: int, dim: int = 2048) -> int:
    """A float32 checkpoint of about ``mib`` MiB, written one tensor at a time."""
    from t2n_quant.interop.stfile import Planned, tensor_bytes, write_safetensors

    per = dim * dim * 4
    n = max(1, mib * MIB // per)

    def random(seed: int):
        gen = torch.Generator().manual_seed(seed)
        return lambda: tensor_bytes(torch.randn(dim, dim, generator=gen))

    planned = [Planned(f"layers.{i}.weight", torch.float32, (dim, dim), random(i))
               for i in range(n)]  # fmt: skip
    return write_safetensors(path, planned, {}).stat().st_size


def bench_stream(sizes: list[int], codec: str) -> None:
    print(f"quantize_safetensors ({codec}, float32 checkpoints of 2048 x 2048 tensors)")
    print("| checkpoint MiB | output MiB | seconds | peak RSS MiB | RSS at start MiB |")
    print("|---|---|---|---|---|")
    for mib in sizes:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            src, dst = Path(tmp) / "f.safetensors", Path(tmp) / "q.safetensors"
            size = _write_checkpoint(src, mib)
            code = f"""
                import json, time
                from benchmarks._child import vm_hwm_bytes
                from t2n_quant.interop.safetensors import quantize_safetensors
                base = vm_hwm_bytes()
                t0 = time.perf_counter()
                quantize_safetensors({str(src)!r}, {str(dst)!r}, {codec!r}, progress=False)
                print(json.dumps(dict(s=time.perf_counter() - t0, peak=vm_hwm_bytes(), base=base)))
            """
            r = run_child(code)
            print(f"| {size / MIB:.0f} | {dst.stat().st_size / MIB:.0f} | {r['s']:.1f} "
                  f"| {r['peak'] / MIB:.0f} | {r['base'] / MIB:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("bnb")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p = sub.add_parser("save")
    p.add_argument("--codec", default="q4_0")
    p = sub.add_parser("stream")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="MiB")
    p.add_argument("--codec", default="q4_0")
    args = parser.parse_args()
    if args.what == "bnb":
        bench_bnb(args.dim, args.layers)
    elif args.what == "save":
        bench_save(args.codec)
    else:
        bench_stream(args.sizes, args.codec)


if __name__ == "__main__":
    main()

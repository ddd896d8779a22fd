"""Export time and peak RSS of a ~120M-parameter transformer (random weights), f32.

Each run happens in a fresh child process that reads its own VmHWM. Prints a table.
Usage: python -m benchmarks.bench_export [--codec q4_0] [--repeat 2]
"""

from __future__ import annotations

import argparse

from benchmarks._child import run_child

CHILD = """
import json, time, tempfile, os
import torch, t2n_core
from benchmarks._child import vm_hwm_bytes, vm_rss_bytes
from benchmarks.models import transformer_120m, weight_bytes
baseline = vm_rss_bytes()
torch.manual_seed(0)
model = transformer_120m().eval()
f32_bytes = weight_bytes(model)
quant_seconds = None
if {codec!r}:
    from t2n_quant import quantize_model
    t0 = time.perf_counter()
    quantize_model(model, {codec!r}, progress=False)
    quant_seconds = time.perf_counter() - t0
tokens = torch.randint(0, 24000, (1, 16))
out = tempfile.mkdtemp()
t0 = time.perf_counter()
result = t2n_core.export(model, (tokens,), os.path.join(out, "m.nnef.tgz"),
                         dynamic_axes={{"tokens": {{1: "S"}}}}, progress=False)
seconds = time.perf_counter() - t0
size = os.path.getsize(result.path)
print(json.dumps(dict(seconds=seconds, quant_seconds=quant_seconds, peak=vm_hwm_bytes(),
                      baseline=baseline, weights=f32_bytes, archive=size)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--codec", default="", help="quantize first (e.g. q4_0)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = [run_child(CHILD.format(codec=args.codec)) for _ in range(args.repeat)]
    mib = 2**20
    label = args.codec or "f32"
    print(f"export of a {rows[0]['weights'] / 4e6:.0f}M-parameter transformer ({label})")
    print(
        "| run | quantize s | export s | peak RSS MiB | baseline MiB | f32 weights MiB "
        "| peak / weights | (peak - baseline) / weights | archive MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        q = f"{r['quant_seconds']:.2f}" if r["quant_seconds"] is not None else "-"
        print(
            f"| {i} | {q} | {r['seconds']:.2f} | {r['peak'] / mib:.0f} | {r['baseline'] / mib:.0f} "
            f"| {r['weights'] / mib:.0f} | {r['peak'] / r['weights']:.2f} "
            f"| {(r['peak'] - r['baseline']) / r['weights']:.2f} | {r['archive'] / mib:.1f} |"
        )


if __name__ == "__main__":
    main()

"""Cross-check the AWQ import against AutoAWQ's own dequantization (``dequantize_gemm``).

AutoAWQ does not install on this CPU-only torch (it pins its own torch and CUDA kernels), but
its ``awq/utils/packing_utils.py`` is plain torch: point ``--awq-src`` at an unpacked source
tree (``pip download autoawq==0.2.9 --no-deps`` and untar it) and this loads that one file.

    python -m benchmarks.check_awq_library --awq-src /tmp/awqdl/autoawq-0.2.9
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from t2n_quant.interop.gptq import layer_qtensor
from tests.interop.test_gptq import layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--awq-src", required=True, help="unpacked autoawq source tree")
    args = parser.parse_args()
    path = Path(args.awq_src) / "awq" / "utils" / "packing_utils.py"
    spec = importlib.util.spec_from_file_location("awq_packing_utils", path)
    assert spec is not None and spec.loader is not None
    awq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(awq)
    for group in (32, 64, 128):
        for seed in range(3):
            layout, tensors, _ = layer("awq", 4, group, n_in=512, out=256, seed=seed, v1=False)
            ref = awq.dequantize_gemm(
                tensors["qweight"], tensors["qzeros"], tensors["scales"], 4, group
            )  # [in, out] f16, AutoAWQ's arithmetic
            qt, record = layer_qtensor(layout, tensors, "p", dtype=torch.float16)
            ours = qt.dequantize().T
            same = torch.equal(ours.view(torch.int16), ref.view(torch.int16))
            print(f"group {group:4d} seed {seed}: exact import={record.exact}, "
                  f"bit-equal to AutoAWQ dequantize_gemm: {same}")  # fmt: skip


if __name__ == "__main__":
    main()

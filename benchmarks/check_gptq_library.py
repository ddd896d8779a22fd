"""Cross-check the GPTQ import against AutoGPTQ's own packing and dequantizing forward.

AutoGPTQ 0.7.1 ships CUDA wheels only, but its ``QuantLinear`` (``qlinear_cuda.py``) packs in
plain torch/numpy and dequantizes in torch when the input is on the CPU. Point ``--gptq-src``
at the unpacked wheel (``pip download auto-gptq==0.7.1 --no-deps --only-binary :all:`` and
unzip it); this loads that one file, packs random layers with it and compares.

    python -m benchmarks.check_gptq_library --gptq-src /tmp/gptqdl/x
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from torch import nn

from t2n_quant.interop.gptq import PackedLayout, dequantize_layer, layer_qtensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gptq-src", required=True, help="unpacked auto-gptq wheel")
    args = parser.parse_args()
    path = Path(args.gptq_src) / "auto_gptq" / "nn_modules" / "qlinear" / "qlinear_cuda.py"
    spec = importlib.util.spec_from_file_location("autogptq_qlinear_cuda", path)
    assert spec is not None and spec.loader is not None
    lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lib)
    n_in, out = 256, 128
    for bits in (2, 4, 8):
        for group in (32, 128, -1):
            for act_order in (False, True):
                gen = torch.Generator().manual_seed(bits * 7 + group)
                linear = nn.Linear(n_in, out, bias=False).half()
                linear.weight.data = (torch.randn(out, n_in, generator=gen) * 0.05).half()
                g = n_in if group == -1 else group
                g_idx = torch.arange(n_in, dtype=torch.int32) // g
                if act_order:
                    g_idx = g_idx[torch.randperm(n_in, generator=gen)]
                linear.weight.requires_grad_(False)
                w = linear.weight.float()
                groups = n_in // g
                lo = torch.stack([w[:, g_idx == j].amin(1) for j in range(groups)], 1).clamp(max=0)
                hi = torch.stack([w[:, g_idx == j].amax(1) for j in range(groups)], 1).clamp(min=0)
                scales = ((hi - lo) / (2**bits - 1)).clamp(min=1e-4).half()  # [out, groups]
                zeros = (-lo / scales.float()).round().clamp(1, 2**bits - 1)  # v1 stores z-1 >= 0
                q = lib.QuantLinear(bits, group, n_in, out, False, weight_dtype=torch.float16)
                q.pack(linear, scales, zeros, g_idx)
                with torch.no_grad():  # its CPU forward on the identity: the weights [in, out]
                    ref = q(torch.eye(n_in, dtype=torch.float16))
                tensors = {"qweight": q.qweight, "qzeros": q.qzeros, "scales": q.scales,
                           "g_idx": q.g_idx}  # fmt: skip
                layout = PackedLayout("gptq", bits, group, 1)
                qt, rec = layer_qtensor(layout, tensors, "p", dtype=torch.float16)
                exact = dequantize_layer(layout, tensors).T.half()
                same = torch.equal(exact.view(torch.int16), ref.view(torch.int16))
                line = f"bits {bits} group {group:4d} act_order {act_order!s:5}: "
                line += f"unpacked == AutoGPTQ forward: {same}; "
                if rec.exact:
                    ours = qt.dequantize().T
                    equal = torch.equal(ours.view(torch.int16), ref.view(torch.int16))
                    line += f"imported exactly, bit-equal: {equal}"
                else:
                    line += f"re-quantized ({rec.reason}), added {rec.added_sqnr_db:.1f} dB SQNR"
                print(line)


if __name__ == "__main__":
    main()

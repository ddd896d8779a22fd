"""Per Linear of the docstring Llama: what GPTQ gains over plain rounding, layer by layer.

Each Linear's inputs are taken in the float model on calibration sequences; its weight is
rounded to q4_0 by min-max (``rtn``), ``gptq`` and ``gptq:mse`` on the Hessian of those
inputs. Columns: the weight's max / std, the relative squared output error
``||X (W - Q)^T||^2 / ||X W^T||^2`` on the calibration inputs and on held-out calibration
sequences (GPTQ above plain rounding on held-out inputs would be a bug or overfitting),
and the KL divergence on the eval text with only that layer quantized. The single-layer
KLs add up to about the whole model's, so the layers they name are the ones to work on.

Run: ``python -m benchmarks.bench_gptq_layers [--steps 3000 --hidden 128 --layers 4]
[--calib-seqs 64]``
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.llm_fixture import add_size_options, load
from t2n_quant.calibration.gptq import gptq
from t2n_quant.calibration_data import text_batches
from t2n_quant.codecs import Q4_0Codec
from t2n_quant.quantize import quantize_tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser)
    parser.add_argument("--calib-seqs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    folder, tok, model, texts = load(steps=args.steps, hidden=args.hidden, layers=args.layers)
    seqs = torch.cat(text_batches(tok, texts["calibration"], seq_len=args.seq_len,
                                  n_sequences=2 * args.calib_seqs))  # fmt: skip
    calib, held = seqs[: args.calib_seqs], seqs[args.calib_seqs :]
    ids = torch.cat(text_batches(tok, texts["eval"], seq_len=args.seq_len, n_sequences=32))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    def inputs(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        got: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
        hooks = [m.register_forward_pre_hook(
            lambda m, a, n=n: got[n].append(a[0].reshape(-1, a[0].shape[-1])))
            for n, m in linears.items()]  # fmt: skip
        with torch.no_grad():
            for batch in tokens.split(8):
                model(input_ids=batch)
        for h in hooks:
            h.remove()
        return {n: torch.cat(v) for n, v in got.items()}

    x_calib, x_held = inputs(calib), inputs(held)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.log_softmax(-1)

    def kl_with(name: str, w: torch.Tensor) -> float:
        module = linears[name]
        saved = module.weight.data.clone()
        module.weight.data.copy_(w)
        with torch.no_grad():
            got = model(input_ids=ids).logits.log_softmax(-1)
        module.weight.data.copy_(saved)
        return float((ref.exp() * (ref - got)).sum(-1).mean())

    codec = Q4_0Codec()
    print(f"{folder.name}: q4_0, {args.calib_seqs} calibration sequences (+ as many held out)")
    print("| layer | max/std | rel. error calib rtn / gptq / gptq:mse | held-out rtn / gptq / "
          "gptq:mse | KL alone rtn / gptq / gptq:mse |")  # fmt: skip
    print("|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0]
    for name, module in linears.items():
        w = module.weight.data
        x = x_calib[name]
        h = x.T @ x
        rounded = [quantize_tensor(w, codec).dequantize()]
        for inner in ("minmax", "mse"):
            new_w, params = gptq(w, h, codec, inner=inner)
            rounded.append(quantize_tensor(new_w, codec, params=params).dequantize())

        def rel(xs: torch.Tensor, q: torch.Tensor, w: torch.Tensor = w) -> float:
            return float(((xs @ (w - q).T).norm() / (xs @ w.T).norm()) ** 2)

        kls = [kl_with(name, q) for q in rounded]
        totals = [t + k for t, k in zip(totals, kls)]
        cells = [" / ".join(f"{rel(xs, q):.5f}" for q in rounded) for xs in (x, x_held[name])]
        print(f"| {name} | {float(w.abs().max() / w.std()):.1f} | {cells[0]} | {cells[1]} | "
              + " / ".join(f"{k:.5f}" for k in kls) + " |", flush=True)  # fmt: skip
    print("| sum of single-layer KLs | | | | " + " / ".join(f"{t:.5f}" for t in totals) + " |")


if __name__ == "__main__":
    main()

"""Two ideas for the trained Llama's q4_0 KL that were measured and not kept (docs/decisions.md,
"The trained Llama's last q4_0 targets").

- ``rotation``: a residual-stream Hadamard rotation folded into the weights (QuaRot /
  SpinQuant's R1: norm weights folded into the Linears reading them, embeddings and the
  Linears writing the residual rotated; no op added), then q4_0 ``minmax`` / ``gptq:mse``.
- ``head``: the LM head alone in q4_0 (decoder float), GPTQ with Hessians weighted by the
  float model's next-token probabilities: one per vocabulary row, per group of rows
  (k-means on the head's rows), or one with the tokens weighted; against the shared Hessian.

Run: ``python -m benchmarks.explore_q4_0_limits rotation|head [--hidden 256]``
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.llm_fixture import add_size_options, load
from t2n_quant.calibration.gptq import gptq
from t2n_quant.calibration_data import text_batches
from t2n_quant.codecs import Codec
from t2n_quant.compare import compare
from t2n_quant.quantize import quantize_tensor


def hadamard(n: int) -> torch.Tensor:
    """An orthogonal Sylvester-Hadamard matrix (``n`` a power of two)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h / n**0.5


@torch.no_grad()
def rotate(model: torch.nn.Module, seed: int = 0) -> None:
    """Rotate a Llama's residual stream in place; its outputs stay the same."""
    n = model.config.hidden_size
    signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    rot = hadamard(n) * signs[:, None].double()

    def read(linear: torch.nn.Linear, norm: torch.nn.Module) -> None:
        w = linear.weight.double() * norm.weight.double()[None]
        linear.weight.data = (w @ rot).float()

    def write(linear: torch.nn.Linear) -> None:
        linear.weight.data = (rot.T @ linear.weight.double()).float()

    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            read(lin, layer.input_layernorm)
        for lin in (mlp.gate_proj, mlp.up_proj):
            read(lin, layer.post_attention_layernorm)
        layer.input_layernorm.weight.data.fill_(1)
        layer.post_attention_layernorm.weight.data.fill_(1)
        write(attn.o_proj)
        write(mlp.down_proj)
    read(model.lm_head, model.model.norm)
    model.model.norm.weight.data.fill_(1)
    emb = model.model.embed_tokens.weight
    emb.data = (emb.double() @ rot).float()


def kmeans(points: torch.Tensor, k: int, iters: int = 25) -> torch.Tensor:
    """Each point's cluster (of ``k``), seeded."""
    pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:k]
    centres = points[pick].clone()
    for _ in range(iters):
        which = torch.cdist(points, centres).argmin(1)
        for j in range(k):
            if (which == j).any():
                centres[j] = points[which == j].mean(0)
    return which


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idea", choices=["rotation", "head"])
    add_size_options(parser)
    parser.add_argument("--calib-seqs", type=int, default=256)
    args = parser.parse_args()
    _, tok, model, texts = load(steps=args.steps, hidden=args.hidden, layers=args.layers)
    ids = torch.cat(text_batches(tok, texts["eval"], seq_len=128, n_sequences=32))
    calib = text_batches(tok, texts["calibration"], seq_len=128, n_sequences=args.calib_seqs)
    if args.idea == "rotation":
        rotated = copy.deepcopy(model)
        rotate(rotated)
        with torch.no_grad():
            drift = (rotated(ids).logits - model(ids).logits).abs().max()
        print(f"float logits moved by at most {drift:.2e}")
        for name, m in (("plain", model), ("rotated", rotated)):
            for cal in ("minmax", "gptq:mse"):
                r = compare(m, ids, ["q4_0"], calibrations=[cal], exclude="model.embed_tokens",
                            data=calib, progress=False).results[0]  # fmt: skip
                assert r.lm is not None
                print(f"{name} {cal}: KL {r.lm.kl:.5f} top-1 {r.lm.top1:.4f}", flush=True)
        return
    torch.set_grad_enabled(False)
    calib_ids = torch.cat(calib)
    k = model.config.hidden_size
    x = torch.cat([model.model(calib_ids[i : i + 32]).last_hidden_state.reshape(-1, k)
                   for i in range(0, len(calib_ids), 32)])  # fmt: skip
    w = model.lm_head.weight.detach().clone()
    p = torch.softmax(x @ w.T, -1)
    x_eval = model.model(ids).last_hidden_state.reshape(-1, k)
    ref = torch.log_softmax(x_eval @ w.T, -1)
    codec = Codec.from_spec("q4_0")

    def report(name: str, wq: torch.Tensor) -> None:
        lq = torch.log_softmax(x_eval @ wq.T, -1)
        kl = float((ref.exp() * (ref - lq)).sum(-1).mean())
        top1 = float((lq.argmax(-1) == ref.argmax(-1)).float().mean())
        print(f"LM head only, {name}: KL {kl:.5f} top-1 {top1:.4f}", flush=True)

    def rounded(rows: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
        new, params = gptq(rows, hessian, codec, inner="mse")
        return quantize_tensor(new, codec, params=params).dequantize()

    h = x.T @ x
    shared = h / h.diagonal().mean()
    report("minmax", quantize_tensor(w, codec).dequantize())
    report("gptq:mse, shared Hessian", rounded(w, h))
    for name, weight in (("Gini", 1 - (p * p).sum(-1)), ("1 - max p", 1 - p.max(-1).values),
                         ("entropy", -(p * p.clamp_min(1e-12).log()).sum(-1))):  # fmt: skip
        report(f"gptq:mse, tokens weighted by {name}", rounded(w, (x * weight[:, None]).T @ x))
    rows_of = torch.nn.functional.normalize(w, dim=1)
    for groups in (16, 64, w.shape[0]):
        which = kmeans(rows_of, groups) if groups < w.shape[0] else torch.arange(w.shape[0])
        wq = torch.empty_like(w)
        for g in range(groups):
            sel = (which == g).nonzero().flatten()
            if len(sel):
                hg = (x * p[:, sel].sum(1, keepdim=True)).T @ x
                wq[sel] = rounded(w[sel], hg / hg.diagonal().mean() + shared)
        report(f"gptq:mse, {groups} probability-weighted Hessians", wq)


if __name__ == "__main__":
    main()

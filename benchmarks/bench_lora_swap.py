"""LoRA adapter swap against a full re-export: bytes changed, bytes written and time.

A Llama built from a config (random weights), PEFT LoRA on every attention and MLP
projection, base weights quantized q4_0, exported with ``lora="separate"`` (a directory and
a ``.tgz``). A second adapter (another alpha, other weights) is then put in two ways:
``swap_adapter`` on the exported archive, and a full export of the model holding it. Both
results run in tract and are compared with PyTorch. "Bytes the swap wrote" excludes the files
of a folder archive hard-linked to the base's.

Usage: python -m benchmarks.bench_lora_swap [--hidden 512] [--layers 8] [--rank 16]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import t2n_core
from t2n_core.nnef.archive import read_archive_files
from t2n_quant import quantize_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, use_cache=False).logits


def build(args: argparse.Namespace, seed: int, alpha: int) -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 128, max_position_embeddings=256,
    )  # fmt: skip
    base = LlamaForCausalLM(config).eval()
    torch.manual_seed(seed)
    lora = LoraConfig(r=args.rank, lora_alpha=alpha, target_modules=TARGETS,
                      init_lora_weights=False)  # fmt: skip
    model = get_peft_model(base, lora).eval()
    quantize_model(model, "q4_0", progress=False)
    return model


def size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir())
    return path.stat().st_size


def timed_export(model: nn.Module, ids: torch.Tensor, path: Path) -> float:
    t0 = time.perf_counter()
    t2n_core.export(Logits(model), (ids,), path, dynamic_axes={"input_ids": {1: "S"}},
                    progress=False)  # fmt: skip
    return time.perf_counter() - t0


def max_error(path: Path, model: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        expected = Logits(model)(ids).numpy()
    report = t2n_core.check_archive(path, [ids.numpy()], [expected])
    return max(o.max_abs_error for o in report.outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    first, second = build(args, 1, 32), build(args, 2, 16)
    n_params = sum(p.numel() for n, p in first.named_parameters() if "lora_" not in n)
    n_lora = sum(p.numel() for n, p in first.named_parameters() if "lora_" in n)
    adapter = Path(tempfile.mkdtemp())
    second.save_pretrained(adapter)
    ids = torch.randint(0, args.vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    out = Path(tempfile.mkdtemp())
    print(f"Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab}: "
          f"{n_params / 1e6:.1f}M base weights (q4_0), LoRA rank {args.rank} on "
          f"{len(TARGETS)} projections x {args.layers} layers: {n_lora / 1e6:.2f}M adapter "
          "values (f32)\n")  # fmt: skip
    print(
        "| archive | full export of adapter 2 | swap of adapter 2 | archive size | bytes "
        "changed by the swap | bytes the swap wrote | tract vs PyTorch (swap / export) |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in ("dir", "tgz"):
        suffix = ".nnef" if kind == "dir" else ".nnef.tgz"
        base, full = out / f"base{suffix}", out / f"full{suffix}"
        timed_export(first, ids, base)
        export_s = timed_export(second, ids, full)
        t0 = time.perf_counter()
        swapped = t2n_core.swap_adapter(base, adapter, out / f"swapped{suffix}")
        swap_s = time.perf_counter() - t0
        old, new = read_archive_files(base), read_archive_files(swapped.path)
        changed = sum(len(new[n]) for n in new if old.get(n) != new[n])
        assert changed == swapped.bytes_changed
        err_swap = max_error(swapped.path, second, ids)
        err_full = max_error(full, second, ids)
        full_files = read_archive_files(full)
        same = all(np.array_equal(np.frombuffer(full_files[n], np.uint8),
                                  np.frombuffer(new[n], np.uint8)) for n in new)  # fmt: skip
        mib = size(base) / 2**20
        share = 100 * changed / size(base)
        wrote = (size(swapped.path) - swapped.bytes_linked) / 2**20  # folder: the rest linked
        print(
            f"| {kind} | {export_s:.2f} s | {swap_s:.2f} s | {mib:.1f} MiB | "
            f"{changed / 2**20:.2f} MiB ({share:.1f}%) | {wrote:.1f} MiB | "
            f"{err_swap:.1e} / {err_full:.1e} |"
        )
        print(f"|   | (swapped archive byte-identical to the full re-export: {same}) |||||")
    shutil.rmtree(out)
    shutil.rmtree(adapter)


if __name__ == "__main__":
    main()

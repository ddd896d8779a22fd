"""Every causal-LM architecture transformers ships, tried as a new user would: a table.

For each ``model_type`` of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, a tiny random config is built
generically from the config class (every size field it has set small: 2 layers, hidden 64,
vocabulary 256...), the model randomized as in ``tests/llm/families.py``, then, each stage in
a child process with a time limit:

1. torch: ``model.generate`` runs (else the tiny config or transformers itself fails);
2. f32: ``export_causal_lm`` with the tract check, then tract's greedy tokens and logits equal
   ``model.generate``'s (``tests/llm/test_families.check_generation``);
3. q4_0: the same after ``quantize_model(model, "q4_0")``.

Each failure gets a cause class read from the exception (missing op, cache type,
data-dependent control flow, ...). Output: a markdown table (``docs/llm-architectures.md``
holds the last one).

    python -m benchmarks.bench_architectures [--only llama,mamba] [--jobs 2] [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: size fields set on every config that has them (names as transformers' configs spell them)
SMALL: dict[str, Any] = {
    **dict.fromkeys(("vocab_size",), 256),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "hidden_dim",
                     "attention_hidden_size", "word_embed_proj_dim", "embedding_size"), 64),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size",
                     "dense_intermediate_size", "decoder_ffn_dim", "mlp_dim"), 128),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers",
                     "decoder_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads",
                     "decoder_attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads",
                     "multi_query_group_num", "num_key_value_groups"), 2),
    **dict.fromkeys(("head_dim", "kv_channels", "attention_head_dim", "v_head_dim"), 16),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx",
                     "context_length", "seq_length", "max_sequence_length"), 128),
    **dict.fromkeys(("moe_intermediate_size", "expert_intermediate_size",
                     "shared_expert_intermediate_size", "moe_ffn_hidden_size",
                     "ffn_hidden_size_moe", "expert_dim"), 64),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts",
                     "ffn_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_top_k", "moe_k", "top_k", "num_selected_experts",
                     "moe_topk"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank"), 16),
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "rotary_dim"), 8),
    **dict.fromkeys(("n_group", "topk_group", "first_k_dense_replace"), 1),
    **dict.fromkeys(("linear_num_key_heads", "linear_num_value_heads"), 2),
    **dict.fromkeys(("linear_key_head_dim", "linear_value_head_dim"), 16),
    **dict.fromkeys(("sliding_window", "attention_window_size", "window_size"), 4),
}  # fmt: skip


def tiny_config(model_type: str, variant: int = 0) -> Any:
    """The config of ``model_type`` with every size field of :data:`SMALL` it has set small.

    Per-layer type lists keep one layer of each distinct type (a hybrid keeps an attention
    layer). ``variant`` 1: as many kv heads as heads (configs that refuse grouped queries).
    """
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    present = default.to_dict()
    small = {}
    for key, value in SMALL.items():
        have = present.get(key, "absent")
        if (isinstance(have, int) and not isinstance(have, bool)) or (
            have is None and key == "head_dim"
        ):
            small[key] = value
    if variant == 1:
        for key in ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads"):
            if key in small:
                small[key] = 4
    types = present.get("layer_types")
    if isinstance(types, list) and types and all(isinstance(t, str) for t in types):
        kept = list(dict.fromkeys(types))
        kept += [types[-1]] * (2 - len(kept))
        small["layer_types"] = kept
        for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
            if key in small:
                small[key] = len(kept)
    ids = {k: v for k, v in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2))
           if k in present}  # fmt: skip
    return AutoConfig.for_model(model_type, **small, **ids)


def tiny_model(model_type: str, seed: int = 0, variant: int = 0) -> Any:
    """The randomized causal LM of :func:`tiny_config` (``tests.llm.families.randomize``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.llm.families import randomize

    config = tiny_config(model_type, variant)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    randomize(model, seed)
    return model.eval()


#: (cause, regex on "ExceptionType: message"), first match wins
CAUSES = [
    ("missing op", r"UnsupportedOpsError|cannot be translated to NNEF"),
    ("cache type", r"past tensors|cache|Cache|layer_idx|keys|conv_states|ssm_states"),
    ("data-dependent control flow", r"GuardOnDataDependent|data.dependent|Could not guard|"
                                    r"Could not extract specialized|ConstraintViolation"),
    ("tract check mismatch", r"CheckMismatchError"),
    ("tract refused the archive", r"TractRunError"),
    ("greedy tokens differ", r"AssertionError: step \d+"),
    ("torch.export failed", r"CaptureError|torch\._dynamo|torch\.export|Unsupported"),
    ("weight not quantized", r"float matrices|float weights"),
    ("time limit", r"timeout after"),
]  # fmt: skip

_CHILD = r"""
import json, pathlib, sys, traceback
import torch
model_type, tmp = sys.argv[1], pathlib.Path(sys.argv[2])
from benchmarks.bench_architectures import VARIANTS, tiny_model
from tests.llm.test_families import check_generation, torch_greedy

def report(stage, **fields):
    print(json.dumps({"stage": stage, **fields}), flush=True)

def failed(stage, exc):
    tb = traceback.format_exc().splitlines()
    report(stage, ok=False, error=f"{type(exc).__name__}: {exc}"[:3000], where=tb[-3:-1])

for variant in VARIANTS:
    try:
        model = tiny_model(model_type, variant=variant)
        torch_greedy(model, torch.randint(0, 256, (1, 6)), 3)
        report("torch", ok=True, variant=variant)
        break
    except Exception as exc:
        error = exc
else:
    try:
        raise error
    except Exception as exc:
        failed("torch", exc)
    sys.exit(0)
from t2n_core.llm import export_causal_lm
from t2n_quant import quantize_model
for stage in ("f32", "q4_0"):
    try:
        model = tiny_model(model_type, variant=variant)
        if stage == "q4_0":
            quantize_model(model, "q4_0", progress=False)
        result = export_causal_lm(model, tmp / f"{stage}.nnef.tgz", progress=False)
        assert result.check is not None and result.check.passed, str(result.check)
        check_generation(model, result.path, stage)
        report(stage, ok=True)
    except Exception as exc:
        failed(stage, exc)
        break
"""

#: model classes of another kind than a text decoder: listed, not tried
MULTIMODAL = ("ConditionalGeneration",)
#: tiny-config variants tried in turn until ``model.generate`` runs (see :func:`tiny_config`)
VARIANTS = (0, 1)


def cause_of(stage: str, error: str) -> str:
    if stage == "torch":
        return "tiny config or transformers fails in torch"
    for cause, pattern in CAUSES:
        if re.search(pattern, error):
            return cause
    return "other"


def sweep(model_type: str, model_class: str, timeout: float) -> dict[str, Any]:
    """Runs the stages of one architecture in a child process; the row of the table."""
    row: dict[str, Any] = {"model_type": model_type, "class": model_class, "stages": {}}
    if any(k in model_class for k in MULTIMODAL):
        row.update(failed="-", cause="not a text-only decoder (multimodal)", error="")
        return row
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, model_type, tmp],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            stdout, tail = proc.stdout, proc.stderr.strip().splitlines()[-1:]
        except subprocess.TimeoutExpired as exc:
            stdout, tail = (exc.stdout or b"").decode(), [f"timeout after {timeout:.0f} s"]
    row["seconds"] = time.perf_counter() - start
    for line in stdout.splitlines():
        if line.startswith("{"):
            out = json.loads(line)
            row["stages"][out.pop("stage")] = out
    stages = row["stages"]
    if len(stages) < 3 or not all(s["ok"] for s in stages.values()):
        last = next((k for k, s in stages.items() if not s["ok"]), None)
        if last is None:  # the child died or ran out of time in the next stage
            last = ("torch", "f32", "q4_0")[len(stages)]
            stages[last] = {"ok": False, "error": f"child ended: {tail}"}
        row.update(failed=last, cause=cause_of(last, stages[last]["error"]),
                   error=stages[last]["error"])  # fmt: skip
    return row


def main() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model types")
    parser.add_argument("--jobs", type=int, default=2, help="architectures run in parallel")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per stage")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args()
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    types = args.only.split(",") if args.only else list(names)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = []
        for row in pool.map(lambda t: sweep(t, names[t], args.timeout), types):
            rows.append(row)
            ok = "failed" not in row
            status = "works" if ok else f"fails at {row['failed']}"
            note = "" if ok else f"{row['cause']}: {row['error'].splitlines()[0][:160]}"
            print(f"| {row['model_type']} | {status} | {note} |", flush=True)
    works = sum("failed" not in r for r in rows)
    print(f"\n{works} of {len(rows)} architectures export, check and generate in f32 and q4_0")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

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

from tests.llm.generic_config import VARIANTS, tiny_config, tiny_model

__all__ = ["VARIANTS", "tiny_config", "tiny_model"]

NO_CACHE = "no transformers cache returned (an encoder run as a decoder, or RWKV's own state)"
#: (cause, regex on "ExceptionType: message"), first match wins
CAUSES = [
    ("missing op", r"UnsupportedOpsError|cannot be translated to NNEF"),
    ("cache type: recurrent or extra state", r"recurrent or otherwise non key/value"),
    (NO_CACHE, r"cache is a NoneType"),
    ("cache type: empty layers (encoder-decoder cache)", r"without keys and values"),
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
from t2n_core.errors import UnsupportedArchitectureError
from t2n_core.llm.export import example_inputs
from t2n_core.llm.wrapper import CausalLMWithCache, is_stateful

def report(stage, **fields):
    print(json.dumps({"stage": stage, **fields}), flush=True)

def failed(stage, exc):
    tb = traceback.format_exc().splitlines()
    report(stage, ok=False, error=f"{type(exc).__name__}: {exc}"[:3000], where=tb[-3:-1])

for variant in VARIANTS:
    try:
        model = tiny_model(model_type, variant=variant)
        torch_greedy(model, torch.randint(0, 256, (1, 6)), 3)
        # the step the export captures, in torch: a batch of 2 on a filled cache (a tiny config
        # can be inconsistent there only, e.g. kv heads that an MLA model repeats wrongly)
        try:
            new = 1 if is_stateful(model) else 3  # a recurrent state: one token per step
            args = example_inputs(model, batch=2, past=5, new=new, dtype=torch.float32)
        except UnsupportedArchitectureError:  # refused at the f32 stage, with its reason
            args = None
        if args is not None:
            with torch.no_grad():
                CausalLMWithCache(model).eval()(*args)
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


def cause_of(stage: str, error: str) -> str:
    if "timeout after" in error:
        return "time limit (this machine's load; rerun with --only)"
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


def cache_cause(why: str) -> str:
    """The cause class of an :class:`UnsupportedArchitectureError`'s reason."""
    if "recurrent" in why:
        return "cache type: recurrent or extra state"
    if "NoneType" in why:
        return NO_CACHE
    if "without keys" in why:
        return "cache type: empty layers (encoder-decoder cache)"
    return "cache type: not a transformers Cache"


def probe(model_type: str, model_class: str) -> dict[str, Any]:
    """In this process: the tiny model builds and generates in torch, and its cache is one the
    exported step carries (no export): what ``--probe`` reports for every architecture fast."""
    import signal

    row: dict[str, Any] = {"model_type": model_type, "class": model_class, "stages": {}}
    if any(k in model_class for k in MULTIMODAL):
        row.update(failed="-", cause="not a text-only decoder (multimodal)", error="")
        return row

    def too_long(*_: Any) -> None:
        raise TimeoutError(f"timeout after {PROBE_SECONDS} s")

    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(PROBE_SECONDS)
    try:
        return _probe(row, model_type)
    except TimeoutError as exc:
        row.update(failed="torch", cause="time limit (a large default sub-config)", error=str(exc))
        return row
    finally:
        signal.alarm(0)


#: seconds the in-process probe gives one architecture
PROBE_SECONDS = 40
#: larger tiny models are not built by the probe
PROBE_MAX_PARAMETERS = 20_000_000


def _probe(row: dict[str, Any], model_type: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from t2n_core.errors import UnsupportedArchitectureError
    from t2n_core.llm.wrapper import past_shapes_of
    from tests.llm.generic_config import tiny_config
    from tests.llm.test_families import torch_greedy

    for variant in VARIANTS:
        try:
            with torch.device("meta"):  # size first: a sub-config may keep its default sizes
                size = sum(p.numel() for p in AutoModelForCausalLM.from_config(
                    tiny_config(model_type, variant)).parameters())  # fmt: skip
            if size > PROBE_MAX_PARAMETERS:
                row.update(failed="torch", cause="tiny config not tiny (a sub-config keeps "
                           f"its default sizes: {size / 1e6:.0f}M parameters)", error="")
                return row
            model = tiny_model(model_type, variant=variant)
            torch_greedy(model, torch.randint(0, 256, (1, 6)), 2)
            break
        except Exception as exc:  # a benchmark reports every failure
            error = f"{type(exc).__name__}: {exc}"
    else:
        row.update(failed="torch", cause=cause_of("torch", error), error=error)
        return row
    try:
        past_shapes_of(model)
    except UnsupportedArchitectureError as exc:
        why = str(exc).split("cache: ", 1)[-1].split(". export_causal_lm")[0]
        row.update(failed="f32", cause=cache_cause(why), error=why)
    except Exception as exc:  # a benchmark reports every failure
        row.update(failed="f32", cause="cache type", error=f"{type(exc).__name__}: {exc}")
    return row


def main() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model types")
    parser.add_argument("--jobs", type=int, default=2, help="architectures run in parallel")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per stage")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--probe", action="store_true", help="no export: torch + cache check "
                        "only, in this process (seconds per architecture)")  # fmt: skip
    args = parser.parse_args()
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    types = args.only.split(",") if args.only else list(names)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = []
        run = (lambda t: probe(t, names[t])) if args.probe else (
            lambda t: sweep(t, names[t], args.timeout))  # fmt: skip
        for row in (map(run, types) if args.probe else pool.map(run, types)):
            rows.append(row)
            ok = "failed" not in row
            status = ("probe passes" if args.probe else "works") if ok else (
                f"fails at {row['failed']}")  # fmt: skip
            note = "" if ok else f"{row['cause']}: {(row['error'].splitlines() or [''])[0][:160]}"
            print(f"| {row['model_type']} | {status} | {note} |", flush=True)
    works = sum("failed" not in r for r in rows)
    what = "pass the probe (torch + cache check)" if args.probe else (
        "export, check and generate in f32 and q4_0")
    print(f"\n{works} of {len(rows)} architectures {what}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

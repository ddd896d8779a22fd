"""`t2n plan`: the mixed-precision plan of a causal LM checkpoint from the shell, written as
the JSON `t2n export-llm --plan` takes; bad input is a clear error before any work."""

from __future__ import annotations

import json
import math

import pytest
import torch

from t2n_core.cli import main
from t2n_quant import Plan
from t2n_quant.plan import bits_per_weight
from t2n_quant.weights import collect_weights
from tests.llm.checkpoints import WORDS, save_tiny_llama


@pytest.fixture
def ckpt(tmp_path):
    model = save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    (tmp_path / "eval.txt").write_text(" ".join(WORDS * 30))
    (tmp_path / "calib.txt").write_text(" ".join(reversed(WORDS * 30)))
    return tmp_path, model


def _planned_bits(model, plan: Plan) -> float:
    from t2n_quant.plan import check_plan

    chosen = check_plan(plan, collect_weights(model))
    shapes = {w.name: tuple(w.param.shape) for w in collect_weights(model)}
    stored = sum(bits_per_weight(c, shapes[n]) * math.prod(shapes[n])
                 for n, c in chosen.items() if c is not None)  # fmt: skip
    return stored / sum(math.prod(shapes[n]) for n, c in chosen.items() if c is not None)


def test_cli_plan_meets_the_budget(ckpt, capsys):
    tmp, model = ckpt
    out = tmp / "plan.json"
    rc = main(["plan", str(tmp / "ckpt"), "--budget", "4.25", "--text", str(tmp / "eval.txt"),
               "--candidates", "q4_0", "minmax:3:g32", "symmetric:8:g32", "--seq-len", "16",
               "--max-sequences", "4", "--exclude", "model.embed_tokens", "-o", str(out),
               "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    plan = Plan.load(out)
    assert "model.embed_tokens" not in plan and "lm_head" in plan
    assert len(set(plan.values())) >= 2  # a real mix, not one codec everywhere
    bits = _planned_bits(model, plan)
    assert bits <= 4.25 + 1e-9
    assert f"{bits:.3f} bits per planned weight (budget 4.25)" in printed
    assert "| lm_head |" in printed and "left float: model.embed_tokens.weight" in printed


@pytest.mark.slow  # plans with gptq, exports and runs in tract
def test_cli_plan_with_gptq_then_export_llm_checks_in_tract(ckpt, capsys):
    tmp, model = ckpt
    plan_args = ["plan", str(tmp / "ckpt"), "--budget", "4.25", "--text", str(tmp / "eval.txt"),
                 "--calibration", "gptq", "--calibration-text", str(tmp / "calib.txt"),
                 "--calibration-option", "damp=0.05", "--seq-len", "16", "--max-sequences",
                 "4", "--candidates", "q4_0", "minmax:3:g32", "-o", str(tmp / "plan.json"),
                 "--quiet"]  # fmt: skip
    assert main(plan_args) == 0
    plan = Plan.load(tmp / "plan.json")
    assert _planned_bits(model, plan) <= 4.25 + 1e-9 and set(plan.values()) == {
        "q4_0", "minmax:3:g32"}  # fmt: skip
    capsys.readouterr()
    assert main(["export-llm", str(tmp / "ckpt"), "-o", str(tmp / "out"), "--plan",
                 str(tmp / "plan.json"), "--calibration", "gptq", "--calibration-text",
                 str(tmp / "calib.txt"), "--max-sequences", "4", "--seq-len", "16",
                 "--calibration-option", "damp=0.05", "--quiet"]) == 0  # fmt: skip
    assert "check       passed" in capsys.readouterr().out
    manifest = json.loads((tmp / "out" / "manifest.json").read_text())
    assert {glob: manifest["quantized"].get(f"{glob}.weight") for glob in plan} == plan


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--candidates", "q4_0", "nosuch:4"], "nosuch"),
        (["--text", None, "--calibration", "gptq"], "need --calibration-text"),
        (["--text", None, "--calibration-option", "damp=0.1"], "weight-only 'mse'"),
        ([], "needs --text FILE"),
    ],
)
def test_cli_plan_bad_input_is_a_clear_error(ckpt, capsys, extra, message):
    tmp, _ = ckpt
    extra = [str(tmp / "eval.txt") if a is None else a for a in extra]
    out = tmp / "plan.json"
    rc = main(["plan", str(tmp / "ckpt"), "--budget", "4", "-o", str(out), *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_cli_plan_keeps_an_existing_output(ckpt, capsys):
    tmp, _ = ckpt
    out = tmp / "plan.json"
    out.write_text('{"*": "q4_0"}\n')
    rc = main(["plan", str(tmp / "ckpt"), "--budget", "4.25", "--text", str(tmp / "eval.txt"),
               "-o", str(out)])  # fmt: skip
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_text() == '{"*": "q4_0"}\n'

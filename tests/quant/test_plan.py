"""Mixed-precision plans: budgeted, editable, saved as JSON, accepted by quantize_model, and
checked up front (every bad entry listed, nothing quantized)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from t2n_quant import Plan, QTensor, plan, quantize_model
from t2n_quant.errors import PlanError
from t2n_quant.plan import bits_per_weight
from tests.core.test_hf_llama import VOCAB, export_llama, tiny_llama


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(),
                         nn.Linear(64, 32))  # fmt: skip


@pytest.mark.parametrize("budget", [3.0, 4.0, 4.5])
def test_plan_meets_the_budget(budget):
    model = mlp()
    x = torch.randn(32, 64)
    p = plan(model, budget, ["q4_0", "minmax:3:g32", "minmax:2:g32", "symmetric:8:g32"],
             data=x, progress=False)  # fmt: skip
    assert set(p) == {"0", "2", "4"}
    s = quantize_model(copy.deepcopy(model), p, progress=False)
    assert s.bits_per_weight <= budget + 1e-9
    assert {q.codec for q in s.quantized} == set(p.values())


def test_more_bits_less_error():
    model = mlp()
    x = torch.randn(64, 64)
    errs = []
    for budget in (3.0, 4.5, 9.0):
        q = copy.deepcopy(model)
        quantize_model(q, plan(model, budget, ["minmax:2:g32", "q4_0", "symmetric:8:g32"],
                               data=x, progress=False), progress=False)  # fmt: skip
        with torch.no_grad():
            errs.append((q(x) - model(x)).square().mean().item())
    assert errs[0] > errs[1] > errs[2]


def test_json_round_trip_and_edit(tmp_path):
    p = Plan({"0": "q4_0", "2": "float", "*": "minmax:3:g32"})
    path = p.save(tmp_path / "plan.json")
    loaded = Plan.load(path)
    assert loaded == p and list(loaded) == ["0", "2", "*"]
    model = mlp()
    s = quantize_model(model, loaded, progress=False)
    assert isinstance(model[0].weight, QTensor) and model[0].weight.codec.spec == "q4_0"
    assert not isinstance(model[2].weight, QTensor)
    assert model[4].weight.codec.spec == "minmax:3:g32"
    assert [k.reason for k in s.skipped] == ["the plan keeps it in float"]
    assert "plan" in s.headline()


def test_bad_plan_lists_every_problem_before_quantizing(tmp_path):
    model = mlp()
    bad = {"0": "q4_0", "nope.*": "q4_0", "2": "q9_9", "4": "minmax:3:g128"}
    with pytest.raises(PlanError) as err:
        quantize_model(model, bad, progress=False)
    text = str(err.value)
    assert "'nope.*' matches no quantizable module" in text
    assert "q9_9" in text
    assert "4.weight (32, 64): minmax:3:g128 does not fit" in text
    assert not any(isinstance(p, QTensor) for p in model.parameters())
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(PlanError, match="JSON object"):
        Plan.load(tmp_path / "x.json")


def test_bits_per_weight_matches_what_is_stored():
    model = mlp()
    for spec in ["q4_0", "minmax:3:g32", "symmetric:8:pc", "minmax:2:g16"]:
        q = copy.deepcopy(model)
        s = quantize_model(q, spec, progress=False)
        for row in s.quantized:
            assert row.bits_per_weight == pytest.approx(
                bits_per_weight(q[int(row.name.split(".")[0])].weight.codec, row.shape)
            )


@pytest.mark.slow  # exports and runs in tract
def test_plan_on_a_causal_lm_exports(tmp_path):
    model = tiny_llama()
    data = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))]
    p = plan(model, 4.25, ["q4_0", "minmax:3:g32", "symmetric:8:g32"], data=data,
             exclude="model.embed_tokens", progress=False)  # fmt: skip
    s = quantize_model(model, p, progress=False)
    assert [k.name for k in s.skipped] == ["model.embed_tokens.weight"]
    quantized_bits = 8 * s.bytes_after / sum(math.prod(q.shape) for q in s.quantized)
    assert quantized_bits <= 4.25 + 1e-9 and len(set(p.values())) >= 2
    export_llama(model, tmp_path)


@pytest.mark.slow  # exports and runs in tract
def test_export_llm_with_a_plan_and_gptq(tmp_path, capsys):
    import json

    from t2n_core.cli import main
    from tests.llm.checkpoints import WORDS, save_tiny_llama

    save_tiny_llama(tmp_path / "ckpt")
    (tmp_path / "calib.txt").write_text(" ".join(WORDS * 40))
    Plan({"model.layers.0.*": "q4_0", "*": "minmax:3:g32"}).save(tmp_path / "plan.json")
    args = ["export-llm", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out"), "--plan",
            str(tmp_path / "plan.json"), "--calibration", "gptq", "--calibration-text",
            str(tmp_path / "calib.txt"), "--max-sequences", "4", "--seq-len", "16", "--quiet",
            "--calibration-option", "act_order=true", "damp=0.05"]  # fmt: skip
    assert main(args) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["calibration"] == "gptq"
    assert manifest["calibration_options"] == {"act_order": True, "damp": 0.05}
    data_hash = manifest["calibration_data_sha256"]
    assert len(data_hash) >= 16 and int(data_hash, 16)
    assert manifest["quantized"]["model.layers.0.mlp.up_proj.weight"] == "q4_0"
    assert manifest["quantized"]["lm_head.weight"] == "minmax:3:g32"
    assert "check       passed" in capsys.readouterr().out
    assert main([*args[:4], "--overwrite", "--plan", "p.json", "--codec", "q4_0"]) != 0


def test_plan_with_gptq_sensitivities_leaves_the_model_as_it_was():
    model = mlp()
    before = {n: p for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in before.items()}
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    p = plan(model, 3.5, ["q4_0", "minmax:3:g32", "minmax:2:g32"], data=x,
             calibration="gptq:mse", progress=False)  # fmt: skip
    assert set(p) == {"0", "2", "4"}
    after = dict(model.named_parameters())
    assert all(after[n] is before[n] and torch.equal(after[n], values[n]) for n in before)
    s = quantize_model(copy.deepcopy(model), p, calibration="gptq", data=x, progress=False)
    assert s.bits_per_weight <= 3.5 + 1e-9
    with pytest.raises(PlanError, match="weight-only calibrations or 'gptq'"):
        plan(model, 4.0, ["q4_0"], data=x, calibration="awq", progress=False)


def test_choose_finds_the_least_error_within_the_budget():
    import itertools
    import random

    from t2n_quant.plan import _greedy, choose

    rng = random.Random(0)
    beat_greedy = 0
    for _ in range(40):
        names = [f"l{i}" for i in range(5)]
        sizes = {n: rng.choice([64, 128, 256]) for n in names}
        options = {}
        for n in names:
            bits = sorted(rng.sample([2.5, 3.0, 3.5, 4.0, 4.5, 8.5], 3))
            errs = sorted((rng.random() for _ in bits), reverse=True)
            options[n] = [(b, e, f"{n}:{b}") for b, e in zip(bits, errs)]
        total = sum(sizes.values())
        low = sum(options[n][0][0] * sizes[n] for n in names)
        budget = low + rng.random() * (8.5 * total - low)

        def cost(pick, field, options=options, sizes=sizes):
            return sum(options[n][i][field] * (sizes[n] if field == 0 else 1)
                       for n, i in pick.items())  # fmt: skip

        best = min((dict(zip(names, combo)) for combo in itertools.product(range(3), repeat=5)
                    if cost(dict(zip(names, combo)), 0) <= budget),
                   key=lambda p: cost(p, 1))  # fmt: skip
        pick = choose(options, sizes, budget)
        assert cost(pick, 0) <= budget
        greedy = cost(_greedy(options, sizes, budget), 1)
        assert cost(pick, 1) <= greedy + 1e-12
        assert cost(pick, 1) <= cost(best, 1) + 1e-9
        beat_greedy += cost(pick, 1) < greedy - 1e-9
    assert beat_greedy > 0  # the greedy upgrade alone misses some optima

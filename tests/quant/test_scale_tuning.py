"""End-to-end scale tuning (``tune_steps``): the codes stay, the scales learn the float
model's outputs; lower error than GPTQ alone (and plain rounding) on text it did not see,
the format untouched, and the tuned model exported and checked in tract."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from t2n_quant import quantize_model
from t2n_quant.qtensor import QTensor
from tests.core.test_hf_llama import VOCAB, export_llama, tiny_llama
from tests.quant.test_gptq import correlated_inputs


def _kl(model, qmodel, ids) -> float:
    with torch.no_grad():
        lp, lq = model(ids).logits.log_softmax(-1), qmodel(ids).logits.log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def _qtensors(model) -> dict[str, QTensor]:
    return {n: p for n, p in model.named_parameters() if isinstance(p, QTensor)}


@pytest.mark.parametrize("spec", ["q4_0", "minmax:3:g32"])
def test_tuning_lowers_kl_on_unseen_tokens_and_keeps_the_codes(spec):
    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    data = [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(8)]
    test_ids = torch.randint(0, VOCAB, (4, 16), generator=g)
    plain, gq, tuned = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, spec, progress=False)
    quantize_model(gq, spec, calibration="gptq", data=data, progress=False)
    s = quantize_model(tuned, spec, calibration="gptq", data=data, progress=False,
                       calibration_options={"tune_steps": 40, "tune_lr": 0.003})  # fmt: skip
    note = next(n for n in s.notes if n.startswith("scale tuning"))
    assert "15 weights' scales, 40 steps" in note  # 2 blocks x 7 Linears, lm_head
    assert _kl(model, tuned, test_ids) < _kl(model, gq, test_ids) < _kl(model, plain, test_ids)
    before, after = _qtensors(gq), _qtensors(tuned)
    assert before.keys() == after.keys() and len(after) == 16  # the embedding too, weight-only
    moved = 0
    for name, q in after.items():
        assert torch.equal(q.packed, before[name].packed)  # the same codes
        assert q.scale.dtype == before[name].scale.dtype and q.codec == before[name].codec
        moved += not torch.equal(q.scale, before[name].scale)
    assert moved == 15  # the embedding is not GPTQ's: its scales stay


def test_tuning_a_model_whose_output_is_not_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    data = list(correlated_inputs(512, 32).split(64))
    fresh = correlated_inputs(256, 32, seed=5)
    errors = []
    for options in (None, {"tune_steps": 60, "tune_lr": 0.003}):
        q = copy.deepcopy(model)
        s = quantize_model(q, "minmax:2:g16", calibration="gptq", data=data, progress=False,
                           calibration_options=options)  # fmt: skip
        with torch.no_grad():
            errors.append(float((q(fresh) - model(fresh)).square().mean()))
    assert any("all at once" in n for n in s.notes)
    assert errors[1] < 0.95 * errors[0]


@pytest.mark.slow  # exports and runs in tract
def test_tuned_tiny_llama_in_tract(tmp_path):
    model = tiny_llama()
    g = torch.Generator().manual_seed(4)
    data = [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(4)]
    s = quantize_model(model, "q4_0", calibration="gptq", data=data, progress=False,
                       calibration_options={"tune_steps": 10})  # fmt: skip
    assert s.provenance["calibration_options"] == "tune_steps=10"
    export_llama(model, tmp_path)  # compared with the quantized model in tract


def test_cli_takes_tune_steps(tmp_path, capsys):
    from t2n_core.cli import main
    from tests.quant.test_compare_lm import compare_on_text

    common = compare_on_text(tmp_path, "the quick brown fox jumps over the lazy dog. " * 40)
    assert main([*common, "--max-sequences", "4", "--codecs", "q4_0", "--calibrations", "gptq",
                 "--calibration-option", "tune_steps=3"]) == 0  # fmt: skip
    assert "gptq" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export-llm", "--help"])
    assert "tune_steps" in capsys.readouterr().out

"""Calibration data in the forms users pass it, and what happens when it is wrong: every
accepted form gives the same batches (and hash), bad data and bad options fail clearly,
and a failed calibration leaves the model as it was."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn

from t2n_quant import quantize_model, quantize_tensor
from t2n_quant.calibration_data import batches, fingerprint, text_batches
from t2n_quant.errors import (
    CalibrationDataError,
    CalibrationOptionError,
    ConfigSpecError,
    NonFiniteWeightError,
    PlanError,
    UnknownCodecError,
)


def _chars(s: str) -> list[int]:
    return [ord(c) % 97 for c in s]


def test_a_batch_encoding_is_a_batch_of_keyword_arguments():
    from transformers import BatchEncoding

    ids = torch.randint(0, 50, (2, 8))
    enc = BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    for data in (enc, [enc, enc]):
        found = batches(data)
        assert found[0][0] == () and torch.equal(found[0][1]["input_ids"], ids)
    assert fingerprint(batches(enc)) == fingerprint(batches(dict(enc)))


def test_calibration_text_from_a_file_named_by_a_string_or_path(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("hello world " * 40, encoding="utf-8")
    by_str = text_batches(_chars, str(f), seq_len=16)
    by_path = text_batches(_chars, f, seq_len=16)
    by_text = text_batches(_chars, "hello world " * 40, seq_len=16)
    assert all(torch.equal(a, b) for a, b in zip(by_str, by_text))
    assert all(torch.equal(a, b) for a, b in zip(by_path, by_text))


def test_unreadable_calibration_text_is_our_error(tmp_path):
    with pytest.raises(CalibrationDataError, match=r"missing\.txt"):
        text_batches(_chars, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(CalibrationDataError, match="empty"):
        text_batches(_chars, tmp_path / "empty.txt")
    with pytest.raises(CalibrationDataError, match="list of strings"):
        text_batches(_chars, [torch.zeros(3)])  # type: ignore[list-item]


def _two_linears() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))


@pytest.mark.parametrize(
    ("calibration", "options", "named"),
    [
        ("gptq", {"tune_steps": "abc"}, "tune_steps='abc'"),
        ("gptq", {"damp": -1.0}, "damp=-1.0"),
        ("gptq", {"block": "x"}, "block='x'"),
        ("gptq", {"act_order": "yes"}, "act_order='yes'"),
        ("gptq", {"inner": "gptq"}, "inner='gptq'"),
        ("awq", {"grid": 0}, "grid=0"),
        ("awq", {"damp": 0.1}, "unknown option 'damp'"),
        ("gptq:mse", {"tune_lr": 0}, "tune_lr=0"),
    ],
)
def test_a_bad_calibration_option_is_named_before_anything_runs(calibration, options, named):
    model = _two_linears()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CalibrationOptionError, match=re.escape(named)):
        quantize_model(model, "q4_0", calibration=calibration, data=torch.randn(8, 32),
                       calibration_options=options, progress=False)  # fmt: skip
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_plan_checks_the_same_options_and_says_which_it_ignores(caplog):
    from t2n_quant.plan import plan

    with pytest.raises(CalibrationOptionError, match="damp"):
        plan(_two_linears(), 4.5, ["q4_0"], data=torch.randn(8, 32), calibration="gptq",
             calibration_options={"damp": "high"}, progress=False)  # fmt: skip
    with caplog.at_level("WARNING"):
        plan(_two_linears(), 4.5, ["q4_0"], data=torch.randn(8, 32), calibration="gptq",
             calibration_options={"tune_steps": 5}, progress=False)  # fmt: skip
    assert "tune_steps" in caplog.text


def test_a_data_aware_name_given_where_no_data_can_go_says_so():
    with pytest.raises(UnknownCodecError, match="needs calibration data"):
        quantize_tensor(torch.randn(4, 32), "q4_0", calibration="gptq")
    with pytest.raises(UnknownCodecError, match=r"data-aware.*gptq"):
        quantize_model(_two_linears(), "q4_0", calibration="gptqq", progress=False)


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(32, 64), nn.Dropout(0.5), nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(self.a(x)))


def test_a_model_in_training_mode_calibrates_without_dropout_and_keeps_its_modes():
    torch.manual_seed(0)
    model = _WithDropout().train()
    model.a.eval()  # a mix of modes, each to be kept
    x = torch.randn(64, 32)
    got = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # dropout masks would differ
        m = copy.deepcopy(model)
        s = quantize_model(m, "q4_0", calibration="gptq", data=x, progress=False)
        got.append(m.b.weight.dequantize())
        assert (m.training, m.a.training, m.drop.training) == (True, False, True)
        assert any("training mode" in n for n in s.notes)
    assert torch.equal(got[0], got[1])


def test_device_without_a_data_aware_calibration_is_reported():
    s = quantize_model(_two_linears(), "q4_0", device="cpu", progress=False)
    assert any(n.startswith("device ignored") for n in s.notes)


def test_compare_reads_a_one_shot_iterator_once_for_every_configuration():
    from t2n_quant.compare import compare

    model = _two_linears()
    data = (torch.randn(16, 32) for _ in range(3))
    result = compare(model, torch.randn(8, 32), ["q4_0", "minmax:4:g32"], calibrations=["gptq"],
                     data=data, progress=False)  # fmt: skip
    hashes = {r.summary.data_hash for r in result.results}
    assert len(result.results) == 2 and len(hashes) == 1 and None not in hashes


@pytest.mark.parametrize("calibration", ["awq", "gptq"])
def test_a_failure_after_awq_folded_its_scales_leaves_the_model_bit_for_bit(calibration):
    from tests.core.test_hf_llama import VOCAB, tiny_llama

    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    data = [torch.randint(0, VOCAB - 1, (2, 16), generator=g) for _ in range(2)]
    with torch.no_grad():  # a row no calibration token reads: fails when quantized, last
        model.model.embed_tokens.weight[VOCAB - 1, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteWeightError, match="embed_tokens"):
        quantize_model(model, "q4_0", calibration=calibration, data=data, progress=False)
    after = {k: v.nan_to_num() for k, v in model.state_dict().items()}
    changed = [k for k, v in before.items() if not torch.equal(v.nan_to_num(), after[k])]
    assert changed == []
    assert all(type(p) is nn.Parameter for p in model.parameters())


@pytest.mark.parametrize(
    ("model_dtype", "data_dtype"), [(torch.float32, torch.float16), (torch.bfloat16, torch.float32)]
)
def test_float_data_of_another_dtype_is_converted_and_said(model_dtype, data_dtype):
    x = torch.randn(32, 32)
    model = _two_linears().to(model_dtype)
    s = quantize_model(model, "q4_0", calibration="gptq", data=x.to(data_dtype), progress=False)
    assert len(s.quantized) == 2
    assert any("calibration data converted" in n for n in s.notes)
    assert s.data_hash == fingerprint(batches(x.to(data_dtype)))  # the data as given


@pytest.mark.parametrize("extra", [{"bits": 3}, {"group_size": 64}, {"fallback": "minmax:4:pc"}])
def test_codec_overrides_given_with_a_plan_are_refused_not_ignored(extra):
    model = _two_linears()
    with pytest.raises(ConfigSpecError, match=next(iter(extra))):
        quantize_model(model, {"0": "q4_0", "2": "minmax:4:g32"}, progress=False, **extra)
    assert all(type(p) is nn.Parameter for p in model.parameters())


def test_export_llm_takes_device_and_records_awq_provenance(tmp_path, capsys):
    from transformers import AutoTokenizer

    from t2n_core.cli import main
    from t2n_core.inspect import inspect_archive
    from tests.llm.checkpoints import WORDS, save_tiny_llama

    save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(reversed(WORDS * 30)))
    rc = main(["export-llm", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out"), "--codec",
               "q4_0", "--calibration", "awq", "--calibration-text", str(calib), "--seq-len",
               "16", "--max-sequences", "4", "--calibration-option", "grid=5", "--device", "cpu",
               "--no-check", "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    ids = text_batches(tokenizer, calib, seq_len=16, n_sequences=4)
    props = inspect_archive(tmp_path / "out" / "model.nnef.tgz").properties
    assert props["quantization.calibration"] == "awq"
    assert props["quantization.calibration_options"] == "grid=5"
    assert props["quantization.calibration_data_sha256"] == fingerprint(batches(ids))
    other = text_batches(tokenizer, " ".join(WORDS * 30), seq_len=16, n_sequences=4)
    assert fingerprint(batches(other)) != fingerprint(batches(ids))


def test_compare_cli_names_a_missing_text_and_an_ignored_calibration_text(
    tmp_path, capsys, caplog
):
    from t2n_core.cli import main
    from tests.llm.checkpoints import WORDS, save_tiny_llama

    save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(WORDS * 10))
    rc = main(["compare", str(tmp_path / "ckpt"), "--text", str(tmp_path / "nope.txt")])
    assert rc == 2 and "--text" in capsys.readouterr().err
    rc = main(["compare", str(tmp_path / "ckpt"), "--text", str(text), "--codecs", "q4_0",
               "--calibration-text", str(text), "--seq-len", "16", "--max-sequences", "2"])
    assert rc == 0
    assert "--calibration-text ignored" in caplog.text
    out = capsys.readouterr().out
    assert out.index("KL (nats)") < out.index("SQNR (dB)")  # end-to-end LM figures first


@pytest.mark.parametrize("bad", [{"seq_len": 0}, {"n_sequences": 0}, {"batch_size": -1}])
def test_text_batches_refuses_sizes_below_one(bad):
    with pytest.raises(CalibrationDataError, match=next(iter(bad))):
        text_batches(_chars, "hello world " * 40, **bad)


def test_plan_converts_float_data_to_the_model_dtype(caplog):
    from t2n_quant.plan import plan

    model = _two_linears().to(torch.bfloat16)
    with caplog.at_level("WARNING"):
        p = plan(model, 4.5, ["q4_0"], data=torch.randn(8, 32), progress=False)
    assert set(p.values()) == {"q4_0"} and "converted from float32" in caplog.text


def test_plan_reads_no_more_batches_than_it_uses(tmp_path):
    from t2n_quant.plan import plan

    def loader():
        for _ in range(2):
            yield torch.randn(8, 32)
        raise AssertionError("read past max_batches")

    p = plan(_two_linears(), 4.5, ["q4_0"], data=loader(), max_batches=2, progress=False)
    assert p.save(tmp_path / "p.json").read_text().startswith("{")
    assert [f.name for f in tmp_path.iterdir()] == ["p.json"]  # no leftover part file


def test_compare_cli_takes_a_plan_file_and_module_selection(tmp_path, capsys):
    from t2n_core.cli import main
    from tests.llm.checkpoints import WORDS, save_tiny_llama

    save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(WORDS * 10))
    (tmp_path / "mixed.json").write_text('{"model.layers.0.*": "minmax:3:g32", "*": "q4_0"}')
    rc = main(["compare", str(tmp_path / "ckpt"), "--text", str(text), "--codecs", "q4_0",
               str(tmp_path / "mixed.json"), "--exclude", "lm_head", "model.embed_tokens",
               "--seq-len", "16", "--max-sequences", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "\n  mixed " in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    bits = {r[0]: float(r[2]) for r in rows if r[0] in ("q4_0", "mixed")}
    assert bits["q4_0"] == 4.5 and bits["mixed"] < 4.5  # lm_head, embeddings left out of both


def test_two_different_inner_calibrations_are_refused():
    with pytest.raises(CalibrationOptionError, match="give one"):
        quantize_model(_two_linears(), "q4_0", calibration="gptq:mse", data=torch.randn(8, 32),
                       calibration_options={"inner": "hqq"}, progress=False)  # fmt: skip


def test_a_list_of_strings_as_data_says_to_tokenize_it():
    with pytest.raises(CalibrationDataError, match="text_batches"):
        batches(["some text", "more text"])


def test_every_form_of_the_same_batches_gives_the_same_hash_and_weights():
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(24, 32)
    forms = {
        "list": list(x.split(8)),
        "generator": (b for b in x.split(8)),
        "loader of tensors": DataLoader(x, batch_size=8),
        "loader of tuples": DataLoader(TensorDataset(x), batch_size=8),
        "list of dicts": [{"input": b} for b in x.split(8)],
    }
    got = {}
    for name, data in forms.items():
        model = _two_linears()
        s = quantize_model(model, "q4_0", calibration="gptq", data=data, progress=False)
        got[name] = (s.data_hash if name != "list of dicts" else None, model[2].weight.dequantize())
    ref_hash, ref_w = got["list"]
    for name, (h, w) in got.items():
        assert h in (ref_hash, None), name
        assert torch.equal(w, ref_w), name


class _NeedsKeywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
        return self.b(self.a(x) * scale)


def test_a_forward_taking_keywords_calibrates_on_dicts_and_names_its_error():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    s = quantize_model(_NeedsKeywords(), "q4_0", calibration="gptq",
                       data=[{"x": x, "scale": 2.0}], progress=False)  # fmt: skip
    assert len(s.quantized) == 2
    model = _NeedsKeywords()
    with pytest.raises(CalibrationDataError, match=r"batch 0.*gptq for q4_0 of a\.weight.*scale"):
        quantize_model(model, "q4_0", calibration="gptq", data=x, progress=False)
    assert all(type(p) is nn.Parameter for p in model.parameters())


def test_a_device_this_machine_lacks_is_named_before_calibrating():
    model = _two_linears()
    with pytest.raises(CalibrationOptionError, match="device='gpu'"):
        quantize_model(model, "q4_0", calibration="gptq", data=torch.randn(8, 32), device="gpu",
                       progress=False)  # fmt: skip


def test_a_plan_key_that_is_not_a_glob_is_listed_with_the_other_problems():
    with pytest.raises(PlanError, match=r"2 problem.*\n.*0: a plan's keys.*\n.*'x' matches no"):
        quantize_model(_two_linears(), {0: "q4_0", "x": "q4_0"}, progress=False)


def test_the_recorded_default_parameters_are_those_the_methods_run_with():
    import inspect

    from t2n_quant.calibration.awq import search_scales
    from t2n_quant.calibration.gptq import gptq
    from t2n_quant.calibration.scale_tuning import tune_scales
    from t2n_quant.data_aware_options import DEFAULTS

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    for key in ("inner", "damp", "block", "act_order"):
        assert DEFAULTS["gptq"][key] == defaults(gptq)[key], key
    assert DEFAULTS["awq"]["inner"] == defaults(search_scales)["inner"]
    assert DEFAULTS["awq"]["grid"] == defaults(search_scales)["grid"]
    assert DEFAULTS["gptq"]["tune_lr"] == defaults(tune_scales)["lr"]
    s = quantize_model(_two_linears(), "q4_0", calibration="gptq", data=torch.randn(8, 32),
                       calibration_options={"damp": 0.02}, progress=False)  # fmt: skip
    assert s.provenance["calibration_options"] == "damp=0.02"
    assert s.provenance["calibration_parameters"] == (
        "act_order=False,block=128,damp=0.02,float_target=True,inner=minmax,sequential=True,"
        "tune_steps=0")


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100, n_positions=32,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def test_a_refused_plan_leaves_a_gpt2_with_its_conv1d_layers():
    model = _tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(PlanError, match="'nope' matches no"):
        quantize_model(model, {"transformer.h.*.attn.c_attn": "q4_0", "nope": "q4_0"},
                       progress=False)  # fmt: skip
    after = model.state_dict()
    assert [type(m) for m in model.modules()] == kinds  # Conv1D, not Linear
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_plan_covers_gpt2_conv1d_layers_and_leaves_the_model_as_it_was():
    from t2n_quant.compare import compare
    from t2n_quant.plan import plan

    model = _tiny_gpt2()
    kinds = [type(m) for m in model.modules()]
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    mixed = plan(model, 4.0, ["q4_0", "minmax:3:g32"], data=ids, progress=False)
    assert "transformer.h.0.attn.c_attn" in mixed and "transformer.h.0.mlp.c_proj" in mixed
    assert [type(m) for m in model.modules()] == kinds
    result = compare(model, ids, [mixed], progress=False)  # checks the plan up front
    assert not [k.name for k in result.results[0].summary.skipped if "plan" in k.reason]


def test_compare_takes_a_padded_batch_encoding_and_leaves_padding_out_of_the_lm_metrics():
    from transformers import BatchEncoding

    from t2n_quant.compare import compare, perplexity
    from tests.core.test_hf_llama import VOCAB, tiny_llama

    model = tiny_llama().eval()
    g = torch.Generator().manual_seed(5)
    long = torch.randint(1, VOCAB, (1, 12), generator=g)
    short = torch.randint(1, VOCAB, (1, 5), generator=g)
    ids = torch.zeros(2, 12, dtype=torch.long)
    ids[0], ids[1, :5] = long[0], short[0]
    mask = (torch.arange(12) < torch.tensor([[12], [5]])).long()
    enc = BatchEncoding({"input_ids": ids, "attention_mask": mask})
    result = compare(model, enc, ["q4_0"], batch_size=1, progress=False)
    with torch.no_grad():
        nll = [math.log(perplexity(model(s).logits, s)) * (s.shape[1] - 1) for s in (long, short)]
    assert result.results[0].lm is not None
    assert result.reference_perplexity == pytest.approx(math.exp(sum(nll) / (11 + 4)), rel=1e-4)


def test_export_llm_says_which_calibration_flags_it_ignores_without_a_codec(tmp_path, caplog):
    from t2n_core.cli import main
    from tests.llm.checkpoints import save_tiny_llama

    save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    (tmp_path / "calib.txt").write_text("some text " * 20)
    rc = main(["export-llm", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out"),
               "--calibration", "gptq", "--calibration-text", str(tmp_path / "calib.txt"),
               "--device", "cpu", "--no-check", "--quiet"])  # fmt: skip
    assert rc == 0
    for name in ("calibration", "calibration_text", "device"):
        assert f"{name} ignored: nothing is quantized here (no codec)" in caplog.text


def test_the_data_hash_does_not_depend_on_object_addresses():
    class Flag:
        pass

    x = torch.randn(2, 3)
    assert fingerprint(batches({"x": x, "cfg": Flag()})) == fingerprint(
        batches({"x": x.clone(), "cfg": Flag()}))
    assert fingerprint(batches({"x": x, "scale": 2.0})) != fingerprint(
        batches({"x": x, "scale": 3.0}))


def test_compare_on_one_token_says_there_is_nothing_to_measure():
    from t2n_quant.compare import compare
    from tests.core.test_hf_llama import tiny_llama

    with pytest.raises(CalibrationDataError, match="at least 2 real tokens"):
        compare(tiny_llama().eval(), torch.tensor([[5]]), ["q4_0"], progress=False)


def test_calibration_options_that_are_not_a_dict_are_named():
    with pytest.raises(CalibrationOptionError, match="must be a dict"):
        quantize_model(_two_linears(), "q4_0", calibration="gptq", data=torch.randn(8, 32),
                       calibration_options="damp=0.1", progress=False)  # fmt: skip


def test_plan_on_data_the_model_rejects_names_the_batch_and_layer():
    from t2n_quant.plan import plan
    from tests.core.test_hf_llama import tiny_llama

    with pytest.raises(CalibrationDataError, match=r"batch 0.*plan, measuring"):
        plan(tiny_llama(), 4.5, ["q4_0"], data=[torch.randn(2, 8)], progress=False)


@pytest.mark.parametrize("command", [
    ["compare", "{d}", "--text", "{d}/t.txt", "--calibrations", "minmax", "gptq"],
    ["plan", "{d}", "--budget", "4", "-o", "{t}/p.json", "--calibration", "gptq"],
    ["export-llm", "{d}", "-o", "{d}/out", "--codec", "q4_0", "--calibration", "awq"],
])  # fmt: skip
def test_cli_checks_calibration_options_before_loading_anything(tmp_path, capsys, command):
    from t2n_core.cli import main

    args = [a.format(d=tmp_path / "no_checkpoint", t=tmp_path) for a in command]
    rc = main([*args, "--calibration-option", "damp=-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "calibration_options for" in err and "damp" in err, err

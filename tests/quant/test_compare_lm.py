"""compare on a causal LM: KL / top-1 / perplexity per codec x calibration, GPTQ included."""

from __future__ import annotations

import math

import pytest
import torch

from t2n_quant.compare import compare, lm_metrics
from t2n_quant.errors import CalibrationDataError
from tests.core.test_hf_llama import VOCAB, tiny_llama


def test_lm_metrics_of_known_distributions():
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    got = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]))
    m = lm_metrics(ref, got, torch.tensor([[0, 1]]))
    want_kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert m.kl == pytest.approx(want_kl, rel=1e-5)
    assert m.perplexity == pytest.approx(1 / 0.1, rel=1e-5)  # token 1 had p = 0.1


def test_compare_causal_lm_with_gptq():
    model = tiny_llama()
    g = torch.Generator().manual_seed(5)
    calib = [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(2)]
    ids = torch.randint(0, VOCAB, (2, 16), generator=g)
    c = compare(model, ids, ["q4_0", "minmax:2:g32"], calibrations=["minmax", "gptq"],
                data=calib, metric="kl", progress=False)  # fmt: skip
    assert c.reference_perplexity is not None and c.reference_perplexity > 1
    assert [(r.spec, r.calibration) for r in c.results] == [
        ("q4_0", "minmax"), ("q4_0", "gptq"), ("minmax:2:g32", "minmax"), ("minmax:2:g32", "gptq")
    ]
    for r in c.results:
        assert r.lm is not None and r.lm.kl > 0 and 0 <= r.lm.top1 <= 1
    q4, q2 = c.results[0].lm, c.results[2].lm
    assert q4.kl < q2.kl and q4.top1 > q2.top1
    assert c.table().heads[4:7] == ["KL (nats)", "top-1", "perplexity"]
    assert c.best().spec == "q4_0"
    assert "float perplexity" in str(c)


def test_gptq_in_compare_needs_data():
    with pytest.raises(CalibrationDataError, match="need data"):
        compare(tiny_llama(), torch.zeros(1, 4, dtype=torch.long), ["q4_0"],
                calibrations=["gptq"], progress=False)  # fmt: skip


def char_tokenizer(text: str):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0} | {c: i + 1 for i, c in enumerate(sorted(set(text)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def compare_on_text(tmp_path, text: str) -> list[str]:
    """A tiny Llama checkpoint with a character tokenizer, an eval text and a calibration text
    (the eval text reversed) under tmp_path: `t2n compare`'s arguments up to `--seq-len 32`."""
    ckpt = tmp_path / "ckpt"
    tiny_llama().save_pretrained(ckpt)
    char_tokenizer(text).save_pretrained(ckpt)
    (tmp_path / "eval.txt").write_text(text)
    (tmp_path / "calib.txt").write_text(text[::-1])
    return ["compare", str(ckpt), "--text", str(tmp_path / "eval.txt"), "--calibration-text",
            str(tmp_path / "calib.txt"), "--seq-len", "32"]  # fmt: skip


def test_cli_compare_on_a_checkpoint_with_text(tmp_path, capsys):
    from t2n_core.cli import main

    common = compare_on_text(tmp_path, "the quick brown fox jumps over the lazy dog; " * 40)
    rc = main([*common, "--max-sequences", "4", "--codecs", "q4_0", "--calibrations", "minmax",
               "gptq", "--batch-size", "3"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "KL (nats)" in out and "float perplexity" in out and "gptq" in out
    assert "4 sequence(s) of 32 tokens" in out


def test_cli_compare_passes_calibration_options(tmp_path, capsys):
    """--calibration-option reaches the data-aware calibration (provenance shows it), and an
    option the method does not know is an error naming it."""
    from t2n_core.cli import main

    common = [*compare_on_text(tmp_path, "the quick brown fox jumps over the lazy dog. " * 40),
              "--max-sequences", "2", "--codecs", "q4_0", "--calibrations", "gptq"]  # fmt: skip
    assert main([*common, "--calibration-option", "act_order=true", "damp=0.05"]) == 0
    assert main([*common, "--calibration-option", "no_such=1"]) != 0
    assert "no_such" in capsys.readouterr().err


def test_cli_compare_checkpoint_needs_text(tmp_path, capsys):
    from t2n_core.cli import main

    ckpt = tmp_path / "ckpt"
    tiny_llama().save_pretrained(ckpt)
    assert main(["compare", str(ckpt)]) != 0
    assert "--text FILE" in capsys.readouterr().err

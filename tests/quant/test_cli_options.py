"""The parsing of options shared by several ``t2n`` sub-commands."""

import pytest

from t2n_quant.cli_options import calibration_options
from t2n_quant.errors import ConfigSpecError


def test_calibration_options_read_booleans_numbers_and_words():
    got = calibration_options(["act_order=True", "sequential=false", "block=64", "damp=1e-2",
                               "inner=mse"])  # fmt: skip
    assert got == {"act_order": True, "sequential": False, "block": 64, "damp": 0.01,
                   "inner": "mse"}  # fmt: skip
    assert isinstance(got["block"], int)


@pytest.mark.parametrize("pair", ["act_order", "=true", "damp=", " = "])
def test_a_malformed_calibration_option_names_itself(pair):
    with pytest.raises(ConfigSpecError, match="KEY=VALUE"):
        calibration_options([pair])


def _subcommand_parsers():
    import argparse

    from t2n_core.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command, defaults", [("export-llm", (128, 512)), ("plan", (32, 256)),
                                               ("compare", (32, 256))])  # fmt: skip
def test_every_text_command_cuts_sequences_with_the_same_options(command, defaults):
    parser = _subcommand_parsers()[command]
    base = ["ckpt", "-o", "out"] if command == "export-llm" else ["ckpt"]
    if command == "plan":
        base += ["--budget", "4", "-o", "plan.json"]
    args = parser.parse_args(base)
    assert (args.max_sequences, args.seq_len) == defaults
    args = parser.parse_args([*base, "--max-sequences", "3", "--seq-len", "17"])
    assert (args.max_sequences, args.seq_len) == (3, 17)
    text = parser.format_help()
    assert "tokens per sequence cut from" in text and "sequences taken from" in text


def test_old_calibration_tokens_still_works_and_warns(caplog):
    parser = _subcommand_parsers()["export-llm"]
    with caplog.at_level("WARNING"):
        args = parser.parse_args(["ckpt", "-o", "out", "--calibration-tokens", "4", "16"])
    assert (args.max_sequences, args.seq_len) == (4, 16)
    assert "--calibration-tokens N LEN is deprecated; use --max-sequences 4 --seq-len 16" in (
        caplog.text
    )
    assert "deprecated spelling of --max-sequences N --seq-len LEN" in parser.format_help()

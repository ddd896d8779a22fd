"""Argument groups that several ``t2n`` sub-commands share, written once so that their names,
defaults and help stay the same everywhere."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)

CALIBRATIONS = "minmax, mse or hqq"


def add_selection(parser: argparse.ArgumentParser, what: str) -> None:
    """``--include`` / ``--exclude``: fnmatch globs over ``what`` (module paths, tensor names)."""
    parser.add_argument(
        "--include", nargs="+", metavar="GLOB",
        help=f"quantize only the {what} matching one of these globs",
    )  # fmt: skip
    parser.add_argument(
        "--exclude", nargs="+", default=[], metavar="GLOB",
        help=f"keep the {what} matching these globs float (e.g. 'lm_head*')",
    )  # fmt: skip


def add_codec(
    parser: argparse.ArgumentParser, default: str | None, help_: str,
    calibrations: str = CALIBRATIONS,
) -> None:  # fmt: skip
    """``--codec SPEC`` and ``--calibration`` (how its scales are chosen, among
    ``calibrations``)."""
    parser.add_argument("--codec", default=default, metavar="SPEC", help=help_)
    parser.add_argument(
        "--calibration", default="minmax",
        help=f"how the scales are chosen: {calibrations} (default minmax)",
    )  # fmt: skip


def add_lm_texts(parser: argparse.ArgumentParser, measured: str, calibration: str) -> None:
    """``--text`` / ``--calibration-text`` and how they are cut (``--seq-len``,
    ``--max-sequences``): the texts a command reads with a checkpoint's tokenizer."""
    parser.add_argument("--text", metavar="FILE", help=measured)
    parser.add_argument("--calibration-text", metavar="FILE", help=calibration)
    add_sequences(parser, "each of --text and --calibration-text", seq_len=256, max_sequences=32)


def add_sequences(
    parser: argparse.ArgumentParser, of: str, *, seq_len: int, max_sequences: int
) -> None:
    """``--seq-len`` / ``--max-sequences``: how a text is cut into token-id sequences (the same
    spelling in every command that reads text; each command keeps its own defaults)."""
    parser.add_argument(
        "--seq-len", type=int, default=seq_len, metavar="LEN",
        help=f"tokens per sequence cut from {of} (default {seq_len}); a text shorter than one "
        "sequence gives one sequence of its length",
    )  # fmt: skip
    parser.add_argument(
        "--max-sequences", type=int, default=max_sequences, metavar="N",
        help=f"sequences taken from {of} at most, from its start (default {max_sequences}; "
        "fewer when the text is shorter)",
    )  # fmt: skip


class _CalibrationTokens(argparse.Action):
    """The old ``--calibration-tokens N LEN``: sets ``--max-sequences N --seq-len LEN``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        n, length = values
        logger.warning("%s N LEN is deprecated; use --max-sequences %d --seq-len %d",
                       option_string, n, length)  # fmt: skip
        namespace.max_sequences, namespace.seq_len = n, length


def add_deprecated_calibration_tokens(parser: argparse.ArgumentParser) -> None:
    """``--calibration-tokens N LEN``, kept working (with a warning) for ``--max-sequences N
    --seq-len LEN``."""
    parser.add_argument(
        "--calibration-tokens", type=int, nargs=2, metavar=("N", "LEN"),
        action=_CalibrationTokens, default=argparse.SUPPRESS,
        help="deprecated spelling of --max-sequences N --seq-len LEN",
    )  # fmt: skip


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    """``--calibration-option KEY=VALUE``: the options of a data-aware calibration."""
    parser.add_argument(
        "--calibration-option", nargs="+", default=[], metavar="KEY=VALUE",
        help="options of a data-aware calibration, e.g. act_order=true. gptq: act_order "
        "(columns by decreasing activation, default false), sequential (layers of a block one "
        "after the other, default true), float_target (round each layer towards the float "
        "model's output, compensating the layers quantized before it, default true), damp "
        "(0.01), block (128), inner (minmax or mse); "
        "awq: grid (20), inner; both: tune_steps (end-to-end tuning of the scales towards "
        "the float model's outputs afterwards, default 0 = off) and tune_lr (0.001). "
        "true/false and numbers are read as such",
    )  # fmt: skip


def calibration_options(pairs: list[str], *calibrations: str) -> dict[str, object]:
    """``["act_order=true", "damp=0.02"]`` -> ``{"act_order": True, "damp": 0.02}``, checked
    against each data-aware method among ``calibrations`` (before any model is loaded).

    >>> calibration_options(["act_order=true", "block=64", "damp=0.02", "inner=mse"])
    {'act_order': True, 'block': 64, 'damp': 0.02, 'inner': 'mse'}
    """
    from t2n_quant.errors import ConfigSpecError

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigSpecError(
                f"--calibration-option {pair!r}: expected KEY=VALUE, e.g. act_order=true"
            )
        value: object = text.strip()
        if text.strip().lower() in ("true", "false"):
            value = text.strip().lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    pass
        options[key.strip()] = value
    from t2n_quant.data_aware_options import TAKEN_BY, check_options

    for method in sorted({c.split(":")[0] for c in calibrations} & set(TAKEN_BY)):
        check_options(method, options)
    return options


def add_converted_output(parser: argparse.ArgumentParser) -> None:
    """``-o/--output`` and ``--max-shard-size`` of a command that writes quantized
    safetensors."""
    parser.add_argument("-o", "--output", required=True, help="output .safetensors path")
    parser.add_argument(
        "--max-shard-size", metavar="SIZE",
        help="write shards of at most this size (bytes, or with KB/MB/GB) and an index",
    )  # fmt: skip


def add_archive_writing(parser: argparse.ArgumentParser, checked: str) -> None:
    """The options of a command that writes an NNEF archive and checks ``checked`` in tract:
    ``--no-check``, ``--atol``, ``--rtol``, ``--overwrite``, ``--no-fragments``,
    ``--compresslevel``, ``--property``."""
    parser.add_argument("--no-check", action="store_true", help=f"skip running {checked} in tract")
    parser.add_argument("--atol", type=float, default=1e-4, help="check tolerance (1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="check tolerance (1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    parser.add_argument(
        "--no-fragments", action="store_true",
        help="write repeated blocks inline (default: each distinct block once, as an NNEF "
        "fragment called per instance)",
    )  # fmt: skip
    parser.add_argument(
        "--compresslevel", type=int, default=0, metavar="0-9",
        help="gzip level of a .tgz (default 0: stored uncompressed inside gzip)",
    )  # fmt: skip
    parser.add_argument(
        "--property", nargs="+", default=[], metavar="KEY=VALUE",
        help="extra properties written into graph.nnef",
    )  # fmt: skip

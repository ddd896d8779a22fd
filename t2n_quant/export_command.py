"""``t2n export MODULE:FUNCTION OUT``: export (optionally quantize first) the user's own model.

``FUNCTION`` (in an importable module, or in a ``.py`` file given by its path) takes no
argument and returns ``(model, example_inputs)``: the ``nn.Module`` and one tensor or a
tuple of its positional inputs, like the entry points of other Python tools.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t2n_core.errors import ExportInputError
from t2n_quant import cli_options
from t2n_quant.calibration.registry import is_data_aware
from t2n_quant.cli_options import add_archive_writing, add_codec, add_selection
from t2n_quant.errors import ConfigSpecError


def spec_help() -> str:
    """The quantization spec grammar, with the codec names the registry knows."""
    from t2n_quant.codecs import Codec

    names = ", ".join(sorted(Codec.registry))
    aliases = ", ".join(f"{a}={n}" for a, n in sorted(Codec.alias_of.items()))
    return (
        "SPEC grammar: codec[:bits[:group]]\n"
        f"  codec: one of {names}" + (f" (aliases: {aliases})" if aliases else "") + "\n"
        "  bits:  2, 3, 4, 5, 6 or 8 where the codec has a choice\n"
        "  group: g32 / 32 (values per scale), pc / per-channel / -1 (one group per row)\n"
        "  examples: q4_0, minmax:4:g32, minmax:3:g128, symmetric:8:pc, sym:4"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export your own model (MODULE:FUNCTION returning (model, example inputs)), "
        "optionally quantized, and check it in tract",
        description=__doc__,
        epilog=spec_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "entry", metavar="MODULE:FUNCTION",
        help="e.g. mypkg.models:build or path/to/file.py:build; FUNCTION() returns "
        "(model, example_inputs)",
    )  # fmt: skip
    p.add_argument("out", help="archive path: a .tgz / .tar.gz / .tar file, else a folder")
    add_codec(p, None, "quantize with this spec first (see below)",
              "minmax, mse, hqq; with --calibration-data also gptq, gptq:mse, awq, awq:mse")
    p.add_argument(
        "--plan", metavar="JSON",
        help="quantize with a mixed-precision plan instead of --codec ({module glob: spec}, "
        "from t2n_quant.plan(...).save(...) or written by hand)",
    )  # fmt: skip
    p.add_argument("--fallback", metavar="SPEC", help="codec for weights --codec cannot take")
    p.add_argument(
        "--calibration-data", metavar="MODULE:FUNCTION",
        help="FUNCTION() returns the calibration data of a data-aware --calibration (gptq, "
        "awq): a tensor, a tuple of inputs, a dict of keyword inputs, or a list / DataLoader "
        "of those; keep the example inputs out of it",
    )  # fmt: skip
    cli_options.add_calibration_options(p)
    p.add_argument(
        "--device", default=None,
        help="device for data-aware calibration, block by block (e.g. cuda; default: where "
        "the model is)",
    )  # fmt: skip
    p.add_argument(
        "--min-numel", type=int, default=0, metavar="N",
        help="keep weights of fewer values float (default 0)",
    )  # fmt: skip
    add_selection(p, "modules")
    p.add_argument(
        "--dynamic", nargs="+", default=[], metavar="INPUT:AXIS:SYMBOL",
        help="dynamic axes, e.g. audio:2:T input_ids:1:S (the symbol names the size in tract)",
    )  # fmt: skip
    p.add_argument(
        "--streaming", nargs="+", default=[], metavar="INPUT:AXIS",
        help="the time axis to stream, e.g. wave:1 (dynamic, recorded for t2n check --pulse N)",
    )  # fmt: skip
    p.add_argument("--input-names", nargs="+", metavar="NAME", help="default: forward's names")
    p.add_argument("--output-names", nargs="+", metavar="NAME", help="default: output, ...")
    add_archive_writing(p, "the archive")
    _add_lora(p, "the base weights quantized by --codec; 'merged' folds W + s*B*A into one "
              "weight before quantizing")  # fmt: skip
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "export-many",
        help="export several graphs (MODULE:FUNCTION returning {name: (model, example "
        "inputs[, options])}) into one archive that stores each shared tensor once",
        description=EXPORT_MANY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "entry", metavar="MODULE:FUNCTION",
        help="FUNCTION() returns {graph name: (model, example_inputs)} or "
        "{graph name: (model, example_inputs, {options})}",
    )  # fmt: skip
    p.add_argument("out", help="archive path: a .tgz / .tar.gz / .tar file, else a folder")
    add_archive_writing(p, "each graph")
    _add_lora(p, "a layer several graphs use is one adapter, stored once; 'merged' folds "
              "W + s*B*A into one weight")  # fmt: skip
    p.set_defaults(func=run_export_many)


def _add_lora(parser: argparse.ArgumentParser, more: str) -> None:
    parser.add_argument(
        "--lora", choices=["separate", "merged"], default=None,
        help="LoRA adapters (PEFT or lora_A / lora_B layers): 'separate' (default) keeps them "
        f"float in their own files, swappable with `t2n adapter swap`, {more}",
    )  # fmt: skip


EXPORT_MANY_HELP = """\
``t2n export-many MODULE:FUNCTION OUT``: several graphs in one archive, each shared tensor
(the same Parameter, or equal contents) stored once; every graph is checked in tract.

FUNCTION takes no argument and returns a dict {graph name: (model, example_inputs)}; a
third item may give that graph's options: {"input_names": [...], "output_names": [...],
"dynamic_axes": {input: {axis: symbol}}, "kwargs": {...}}. Quantize the models inside
FUNCTION (t2n_quant.quantize_model) if you want them quantized. In the archive, each
graph's inputs and outputs are named <graph>_<name>; run one graph with
`t2n check OUT --graph NAME --inputs in.npz`, or t2n_core.load_graph(OUT, NAME) in Python.
"""


def load_entry(entry: str) -> Callable[[], Any]:
    """The function ``MODULE:FUNCTION`` names (``MODULE`` a module or a ``.py`` path)."""
    module_name, _, attr = entry.rpartition(":")
    if not module_name or not attr:
        raise ExportInputError(f"{entry!r}: expected MODULE:FUNCTION, e.g. mypkg.models:build")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ExportInputError(f"{entry!r}: no Python file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder imports
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportInputError(f"{entry!r}: cannot import {module_name}: {exc}") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ExportInputError(f"{entry!r}: {module_name} has no function {attr!r}")
    return function


def _dynamic_axes(items: list[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for item in items:
        parts = item.split(":")
        if len(parts) != 3 or not parts[1].lstrip("-").isdigit():
            raise ExportInputError(f"--dynamic {item!r}: expected INPUT:AXIS:SYMBOL, e.g. x:0:B")
        axes.setdefault(parts[0], {})[int(parts[1])] = parts[2]
    return axes


def _streaming_axis(items: list[str]) -> dict[str, int]:
    axes: dict[str, int] = {}
    for item in items:
        name, _, axis = item.rpartition(":")
        if not name or not axis.isdigit():
            raise ExportInputError(f"--streaming {item!r}: expected INPUT:AXIS, e.g. wave:1")
        axes[name] = int(axis)
    return axes


def _properties(items: list[str]) -> dict[str, str]:
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ExportInputError(f"--property {bad}: expected KEY=VALUE")
    return dict(i.split("=", 1) for i in items)


def run_export_many(args: argparse.Namespace) -> int:
    import t2n_core

    built = load_entry(args.entry)()
    if not isinstance(built, dict):
        raise ExportInputError(
            f"{args.entry} returned {type(built).__name__}; it must return "
            "{graph name: (model, example_inputs)}"
        )
    graphs = {
        name: (item[0], item[1] if isinstance(item[1], tuple) else (item[1],), *item[2:])
        if isinstance(item, tuple) and len(item) >= 2 else item
        for name, item in built.items()
    }  # fmt: skip
    result = t2n_core.export_many(
        graphs, args.out, check=not args.no_check, atol=args.atol, rtol=args.rtol,
        overwrite=args.overwrite, compresslevel=args.compresslevel,
        properties=_properties(args.property) or None, fragments=not args.no_fragments,
        lora=args.lora,
    )  # fmt: skip
    print(result)
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    import t2n_core
    from t2n_quant import quantize_model

    built = load_entry(args.entry)()
    if not (isinstance(built, tuple) and len(built) == 2):
        raise ExportInputError(
            f"{args.entry} returned {type(built).__name__}; it must return (model, example_inputs)"
        )
    model, example = built
    inputs = example if isinstance(example, tuple) else (example,)
    if not isinstance(model, torch.nn.Module):
        raise ExportInputError(f"{args.entry} returned {type(model).__name__} as the model")
    quantize = args.plan or args.codec
    if args.plan and args.codec:
        raise ConfigSpecError("give --codec or --plan, not both")
    for flag, given in (("--calibration-data", args.calibration_data),
                        ("--calibration-option", args.calibration_option),
                        ("--device", args.device), ("--fallback", args.fallback)):  # fmt: skip
        if given and not quantize:
            raise ConfigSpecError(f"{flag} needs --codec or --plan (nothing is quantized)")
    if quantize and not args.calibration_data and is_data_aware(args.calibration):
        raise ConfigSpecError(
            f"--calibration {args.calibration} needs --calibration-data MODULE:FUNCTION (the "
            "function returning the batches it calibrates on)"
        )
    if quantize:
        from t2n_quant.plan import Plan

        codec = Plan.load(args.plan) if args.plan else args.codec
        data = load_entry(args.calibration_data)() if args.calibration_data else None
        model = copy.deepcopy(model)  # the function's model object stays float
        summary = quantize_model(
            model, codec, fallback=args.fallback, calibration=args.calibration,
            include=args.include, exclude=args.exclude, lora=args.lora, data=data,
            calibration_options=cli_options.calibration_options(
                args.calibration_option, args.calibration) or None,
            device=args.device, min_numel=args.min_numel,
        )  # fmt: skip
        print(summary)
    result = t2n_core.export(
        model, inputs, args.out, input_names=args.input_names, output_names=args.output_names,
        dynamic_axes=_dynamic_axes(args.dynamic) or None,
        streaming_axis=_streaming_axis(args.streaming) or None, check=not args.no_check,
        atol=args.atol, rtol=args.rtol, overwrite=args.overwrite,
        compresslevel=args.compresslevel, properties=_properties(args.property) or None,
        fragments=not args.no_fragments,
        lora=None if quantize and args.lora == "merged" else args.lora,  # merged already
    )  # fmt: skip
    print(result)
    return 0

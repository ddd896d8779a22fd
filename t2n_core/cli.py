"""The ``t2n`` command line.

Core sub-commands live here (``inspect``, ``check``); other packages add theirs through the
``t2n.commands`` entry-point group: each entry is a function ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
import zipfile
from collections.abc import Sequence
from importlib.metadata import entry_points

import numpy as np

from t2n_core import __version__
from t2n_core.errors import T2NError
from t2n_core.gc_freeze import own_process, skip_exit_collections


def _cmd_inspect(args: argparse.Namespace) -> int:
    from t2n_core.inspect import inspect_archive

    print(inspect_archive(args.archive))
    return 0


def _load_npz(path: str, names: Sequence[str] = ()) -> list[np.ndarray]:
    """The arrays of ``path``: in the order of ``names`` when its keys are exactly those
    names (io samples written by export-llm), otherwise in the order they were saved."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if names and sorted(data.files) == sorted(names):
                return [data[k] for k in names]
            return [data[k] for k in data.files]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise T2NError(
            f"cannot read {path} as .npz ({reason}); write one with numpy.savez(path, x, ...)"
        ) from None


def _check_inputs(path: str, inputs: list[np.ndarray], specs: list) -> None:
    """Refuse inputs whose count, dtype or fixed dims differ from what the archive takes."""
    if len(inputs) != len(specs):
        raise T2NError(
            f"{path} holds {len(inputs)} arrays; the archive takes "
            f"{len(specs)} inputs: {[str(i) for i in specs]}"
        )
    for array, spec in zip(inputs, specs):
        want = _NUMPY_NAMES.get(spec.dtype, spec.dtype)
        if want in np.sctypeDict and array.dtype != np.dtype(want):
            raise T2NError(
                f"input {spec.name!r} in {path} is {array.dtype}, the archive expects {spec}; "
                f"convert it (e.g. x.astype(np.{want}))"
            )
        fixed_ok = len(array.shape) == len(spec.shape) and all(
            not isinstance(d, int) or d == n for d, n in zip(spec.shape, array.shape)
        )
        if not fixed_ok:
            raise T2NError(
                f"input {spec.name!r} in {path} has shape {list(array.shape)}, the archive "
                f"expects {spec}"
            )


_NUMPY_NAMES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64",
                "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8"}  # fmt: skip


def _cmd_check(args: argparse.Namespace) -> int:
    from t2n_core.check import compare, run_tract
    from t2n_core.inspect import inspect_archive

    if args.inputs is None:  # a directory of export-llm: replay its io samples
        from t2n_core.llm.ship import check_directory

        options = ("outputs", "save", "pulse", "graph", "allow_nan")
        given = [f"--{k.replace('_', '-')}" for k in options if getattr(args, k)]
        if given:
            raise T2NError(f"{', '.join(given)} need --inputs (an archive and its inputs)")
        report = check_directory(args.archive, atol=args.atol, rtol=args.rtol)
        print(report)
        return 0 if report.passed else 1
    args.atol = 1e-4 if args.atol is None else args.atol
    args.rtol = 1e-4 if args.rtol is None else args.rtol
    info = inspect_archive(args.archive)
    in_specs, out_specs = info.inputs, info.outputs
    if args.graph is not None:
        from t2n_core.graph_select import graph_io

        if args.pulse is not None:
            raise T2NError("--pulse runs a whole archive; it cannot be combined with --graph")
        io = graph_io(args.archive, args.graph)
        in_specs = [s for n in io["inputs"] for s in info.inputs if s.name == n]
        out_specs = [s for n in io["outputs"] for s in info.outputs if s.name == n]
    inputs = _load_npz(args.inputs, [i.name for i in in_specs])
    _check_inputs(args.inputs, inputs, in_specs)
    names = [o.name for o in out_specs]
    if args.pulse is not None:
        from t2n_core.pulse import check_pulsed

        expected = _load_npz(args.outputs, names) if args.outputs else None
        pulsed = check_pulsed(
            args.archive, inputs, expected, pulse=args.pulse, symbol=args.symbol, names=names,
            atol=args.atol, rtol=args.rtol, raise_on_mismatch=False,
        )  # fmt: skip
        print(pulsed)
        return 0 if pulsed.passed else 1
    expected = _load_npz(args.outputs, names) if args.outputs else None
    outputs = run_tract(args.archive, inputs, graph=args.graph)
    for name, out in zip(names, outputs):
        stats = ""
        if out.dtype.kind == "f" and out.size:
            stats = f" min={out.min():.4g} max={out.max():.4g} mean={out.mean():.4g}"
        print(f"{name}: {out.dtype}{list(out.shape)}{stats}")
    if args.save:
        np.savez(args.save, **dict(zip(names, outputs)))
        print(f"outputs saved to {args.save}")
    if expected is not None:
        report = compare(
            names, outputs, expected, atol=args.atol, rtol=args.rtol, allow_nan=args.allow_nan
        )
        print(report)
        return 0 if report.passed else 1
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from t2n_core.llm.generate import generate_text

    ids = None
    if args.prompt_ids:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError as exc:
            raise T2NError(f"--prompt-ids must be comma-separated integers: {exc}") from exc
    if args.prompt is None and ids is None:
        raise T2NError("give --prompt TEXT or --prompt-ids 1,2,3")
    gen = generate_text(
        args.directory, args.prompt, prompt_ids=ids, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        in_process=args.in_process,
    )  # fmt: skip
    if gen.text is not None:
        print(f"{args.prompt or ''}{gen.text}")
    print(f"tokens: {gen.tokens}")
    if gen.stopped_at_eos:
        print("stopped at the EOS token")
    print(gen.speed())
    return 0


def _cmd_adapter_swap(args: argparse.Namespace) -> int:
    from t2n_core.lora_swap import swap_adapter

    print(swap_adapter(args.base, args.adapter, args.output, overwrite=args.overwrite,
                       compresslevel=args.compresslevel))  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2n", description="Quantize PyTorch models and export them to NNEF for tract."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"t2n {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="summarise an NNEF archive (io, ops, tensor bytes)")
    p.add_argument("archive", help="directory or .tgz")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("check", help="run an archive in tract, optionally compare outputs")
    p.add_argument(
        "archive",
        help="directory or .tgz; or, without --inputs, a directory written by export-llm: "
        "its io samples are replayed (its manifest's tolerance unless --atol / --rtol)",
    )
    p.add_argument(
        "--inputs",
        help=".npz with one array per input: keyed by the input names, or in input order",
    )
    p.add_argument("--outputs", help=".npz of reference outputs (keyed by name, or in order)")
    p.add_argument("--save", help="write tract's outputs to this .npz (with --outputs too)")
    p.add_argument("--atol", type=float, help="absolute tolerance (1e-4)")
    p.add_argument("--rtol", type=float, help="tolerance relative to max|reference| (1e-4)")
    p.add_argument(
        "--allow-nan", action="store_true",
        help="NaN passes where both tract and the reference have NaN (else any NaN fails)",
    )  # fmt: skip
    p.add_argument(
        "--pulse", type=int, metavar="N",
        help="stream the archive in tract in chunks of N frames of its streaming axis and "
        "compare with the whole-sequence output (--outputs, or tract's whole run) shifted by "
        "the pulse delay",
    )  # fmt: skip
    p.add_argument(
        "--symbol",
        help="with --pulse: the symbol of the streaming axis (default: the one recorded by "
        "export(streaming_axis=...))",
    )
    p.add_argument(
        "--graph", metavar="NAME",
        help="run this graph of an archive of several (written by export-many); --inputs "
        "and --outputs then hold that graph's arrays only",
    )  # fmt: skip
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "generate", help="generate text in tract from a directory written by export-llm"
    )
    p.add_argument("directory", help="output directory of `t2n export-llm`")
    p.add_argument("--prompt", help="prompt text (tokenized with the directory's tokenizer)")
    p.add_argument(
        "--prompt-ids", help="prompt as comma-separated token ids (when there is no tokenizer)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most")
    p.add_argument(
        "--temperature", type=float, default=0.0,
        help="sampling temperature; 0 (default) picks the most likely token (greedy)",
    )  # fmt: skip
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    p.add_argument(
        "--top-p", type=float, default=1.0,
        help="sample among the most likely tokens whose probabilities add up to p (1: all)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help="random seed for sampling (reproducible output)")
    p.add_argument(
        "--in-process", action="store_true",
        help="run tract in this process (default: in a worker process, so that a tract crash "
        "is reported instead of ending t2n)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("adapter", help="LoRA adapters of archives exported with --lora separate")
    adapter = p.add_subparsers(dest="adapter_command", required=True)
    p = adapter.add_parser(
        "swap",
        help="write a copy of an archive with another LoRA adapter (same layers and ranks), "
        "without re-exporting: only the adapter files change",
    )
    p.add_argument("base", help="archive exported with --lora separate (directory or .tgz)")
    p.add_argument(
        "adapter",
        help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors), or a "
        ".safetensors file of <layer path>.lora_A / .lora_B (/ .lora_scale) tensors",
    )
    p.add_argument("-o", "--output", required=True, help="new archive (never the base itself)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--compresslevel", type=int, default=0, metavar="0-9",
        help="gzip level of a .tgz output (default 0: stored uncompressed inside gzip)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_adapter_swap)

    for entry in sorted(entry_points(group="t2n.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # torch.export's own deprecation chatter is not the user's business on the command line
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # the process is the t2n command (console script, python -m)
        own_process()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except T2NError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if argv is None:
            skip_exit_collections()


if __name__ == "__main__":
    sys.exit(main())

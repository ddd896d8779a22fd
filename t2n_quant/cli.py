"""``t2n`` sub-commands of t2n_quant (registered through the ``t2n.commands`` entry point)."""

from __future__ import annotations

import argparse
import copy
import fnmatch
import logging
import math
from pathlib import Path

import torch

from t2n_quant import cli_options
from t2n_quant.calibration.registry import DATA_AWARE, is_data_aware
from t2n_quant.cli_options import add_codec, add_converted_output, add_selection
from t2n_quant.errors import CalibrationDataError, ConfigSpecError

logger = logging.getLogger(__name__)

DEMO_SPECS = ("q4_0", "minmax:4:g32", "symmetric:8:g32", "minmax:3:g64")
COMPARE_SPECS = ("q4_0", "minmax:4:g32", "symmetric:4:g32", "minmax:3:g64", "minmax:8:g32")


def register(subparsers: argparse._SubParsersAction) -> None:
    from t2n_quant import export_command

    export_command.register(subparsers)
    p = subparsers.add_parser(
        "demo",
        help="export the included example, quantize it, export again, check all in tract",
    )
    p.add_argument("out", nargs="?", default="out/demo", help="output folder (default out/demo)")
    p.add_argument(
        "--codecs", nargs="+", default=list(DEMO_SPECS), metavar="SPEC",
        help=f"quantization specs to try (default: {' '.join(DEMO_SPECS)})",
    )  # fmt: skip
    p.add_argument(
        "--fallback", metavar="SPEC",
        help="codec for weights a spec cannot take (e.g. minmax:4:pc for q4_0's odd row sizes)",
    )  # fmt: skip
    p.set_defaults(func=run_demo)

    p = subparsers.add_parser(
        "compare",
        help="compare codecs and calibrations on a causal LM checkpoint (with --text) or on "
        "the included example, end to end and per layer",
        epilog=export_command.spec_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint", nargs="?", default=None,
        help="a Hugging Face causal LM checkpoint folder (config, weights, tokenizer); "
        "default: the included keyword-spotter example",
    )  # fmt: skip
    cli_options.add_lm_texts(
        p, "text the LM metrics (KL, top-1, perplexity) are measured on (with a checkpoint)",
        "text for data-aware calibrations (gptq, awq); keep it apart from --text",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="device for data-aware calibration (e.g. cuda)")
    cli_options.add_calibration_options(p)
    p.add_argument(
        "--codecs", nargs="+", default=list(COMPARE_SPECS), metavar="SPEC",
        help=f"quantization specs to compare, or plan .json files (from t2n plan) (default: "
        f"{' '.join(COMPARE_SPECS)})",
    )  # fmt: skip
    add_selection(p, "modules")
    p.add_argument(
        "--calibrations", nargs="+", default=["minmax"], metavar="NAME",
        help="calibrations to try with each spec (minmax, mse, hqq; with --calibration-text "
        "gptq, gptq:mse = GPTQ with mse group scales, awq, awq:mse; default: minmax)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=8, metavar="N",
        help="sequences of --text run at once (default 8): the float and quantized logits and "
        "layer outputs held are one batch's",
    )  # fmt: skip
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument("--plot", metavar="PNG", help="save a figure (needs matplotlib)")
    p.add_argument(
        "--plot-kind", choices=["tradeoff", "layers"], default="tradeoff",
        help="figure for --plot: bits/weight vs SQNR (default) or per-layer SQNR",
    )  # fmt: skip
    p.set_defaults(func=run_compare)

    _register_plan(subparsers, export_command.spec_help())

    p = subparsers.add_parser(
        "quantize",
        help="quantize a float safetensors checkpoint into a t2n quantized safetensors file, "
        "tensor by tensor, without building the model",
        epilog=export_command.spec_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="a .safetensors file, its .index.json, or a directory of shards")
    add_converted_output(p)
    add_codec(p, "q4_0", "quantization spec, e.g. q4_0, minmax:4:g32, nf4:g64 (default q4_0)")
    add_selection(p, "tensors")
    p.add_argument(
        "--min-numel",
        type=int,
        default=0,
        help="keep tensors with fewer values as they are (default 0)",
    )
    p.set_defaults(func=run_quantize)  # fmt: skip

    p = subparsers.add_parser(
        "import-gptq",
        help="convert a GPTQ or AWQ checkpoint (layout from its config.json) into a t2n "
        "quantized safetensors file, exactly where the layout maps",
    )
    p.add_argument("src", help="checkpoint directory (config.json + safetensors) or file")
    add_converted_output(p)
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="the weights' logical dtype, the model's (default float16)",
    )
    p.add_argument(
        "--requantize",
        metavar="SPEC",
        help="re-quantize every layer with this spec (e.g. q4_0) and report the error",
    )
    p.set_defaults(func=run_import_gptq)

    p = subparsers.add_parser(
        "import-bnb",
        help="convert a checkpoint saved from a bitsandbytes 4-bit / 8-bit model into a t2n "
        "quantized safetensors file (nf4 / fp4 / int8, exactly bitsandbytes' values)",
    )
    p.add_argument("src", help="checkpoint directory or .safetensors file")
    add_converted_output(p)
    p.add_argument(
        "--dtype", choices=["float16", "float32"], default="float32",
        help="logical dtype of the 8-bit layers' weights (4-bit ones record theirs)",
    )  # fmt: skip
    p.add_argument(
        "--reencode", metavar="SPEC",
        help="re-quantize every layer with this spec (q4_0: compressed in tract) and report "
        "the added error per layer",
    )  # fmt: skip
    p.set_defaults(func=run_import_bnb)  # fmt: skip

    p = subparsers.add_parser(
        "export-llm",
        help="export a Hugging Face causal LM checkpoint directory (optionally quantized), "
        "checked in tract, with its tokenizer, manifest and io samples",
    )
    p.add_argument("checkpoint", help="local checkpoint directory (config.json, *.safetensors)")
    p.add_argument("-o", "--output", required=True, help="output directory (must not exist)")
    p.add_argument(
        "--dtype", choices=["f32", "f16"], default="f32",
        help="dtype of weights, activations and cache (bf16 checkpoints are converted)",
    )  # fmt: skip
    p.add_argument("--codec", help="quantize matmul weights with this spec (q4_0, minmax:4:g32)")
    p.add_argument(
        "--quantized", metavar="FILE",
        help="take the quantized weights of this file (from `t2n quantize` of the same "
        "checkpoint, or an import) instead of quantizing",
    )  # fmt: skip
    p.add_argument(
        "--plan", metavar="JSON",
        help="quantize with a mixed-precision plan instead ({module glob: spec}, from "
        "t2n_quant.plan(...).save(...) or written by hand)",
    )  # fmt: skip
    p.add_argument(
        "--calibration", default="minmax",
        choices=["minmax", "mse", "hqq", "gptq", "gptq:mse", "awq", "awq:mse"],
        help="how the codec's scales are chosen (default minmax); gptq / awq need "
        "--calibration-text",
    )  # fmt: skip
    p.add_argument(
        "--calibration-text", metavar="FILE",
        help="text for gptq / awq, tokenized with the checkpoint's tokenizer",
    )  # fmt: skip
    cli_options.add_sequences(p, "--calibration-text", seq_len=512, max_sequences=128)
    cli_options.add_deprecated_calibration_tokens(p)
    cli_options.add_calibration_options(p)
    p.add_argument(
        "--device", default=None,
        help="device for gptq / awq, one decoder layer at a time (e.g. cuda; default cpu)",
    )  # fmt: skip
    p.add_argument(
        "--exclude", nargs="+", default=[], metavar="GLOB",
        help="module paths left float (fnmatch globs, e.g. 'lm_head' 'model.embed_tokens')",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--no-check", action="store_true",
        help="do not run the io samples in tract, nor compute them (faster: a PyTorch pass "
        "fewer) unless --samples",
    )  # fmt: skip
    p.add_argument(
        "--samples", action="store_true",
        help="with --no-check: still write the io samples (for `t2n check` later)",
    )  # fmt: skip
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow modelling code shipped in the checkpoint directory to run",
    )  # fmt: skip
    p.add_argument(
        "--all-logits", action="store_true",
        help="return logits for every input position (default: the last one only)",
    )  # fmt: skip
    p.add_argument(
        "--f32-attention", action="store_true", help="with --dtype f16: attention in f32"
    )  # fmt: skip
    p.add_argument(
        "--f32-norm", action="store_true", help="with --dtype f16: normalisation layers in f32"
    )  # fmt: skip
    p.add_argument(
        "--no-fragments", action="store_true",
        help="write every decoder layer inline (default: each distinct layer once, as an NNEF "
        "fragment called per layer)",
    )  # fmt: skip
    p.add_argument(
        "--adapter", metavar="DIR",
        help="a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) "
        "loaded onto the checkpoint's model",
    )  # fmt: skip
    p.add_argument(
        "--lora", choices=["separate", "merged"], default=None,
        help="with --adapter: 'separate' (default) keeps the adapter float in its own files, "
        "swappable with `t2n adapter swap`, the base weights quantized by --codec; 'merged' "
        "folds W + s*B*A into one weight before quantizing",
    )  # fmt: skip
    p.add_argument(
        "--experts", choices=["dense", "gather"], default="dense",
        help="mixture-of-experts layers: 'dense' (default) runs every expert on every token, "
        "masked by the router (experts/top-k times the expert compute, memory independent of "
        "the prompt); 'gather' runs only the top-k experts per token by gathering their "
        "weight rows (less compute, but tract 0.23.9 gathers q4_0 rows slowly: slower than "
        "dense at the sizes measured, see benchmarks/bench_moe_experts.py; a prompt of T "
        "tokens holds T*top-k float expert matrices)",
    )  # fmt: skip
    p.add_argument(
        "--graphs", choices=["step", "prefill-decode"], default="step",
        help="'step' (default): one graph runs the prompt and every later token; "
        "'prefill-decode': two graphs sharing the weights, prefill for the prompt and decode "
        "for one token at a time (a fixed size there: tract plans matrix-vector products; "
        "each graph loaded holds its own copy of the weights in memory); logits of the last "
        "position only. A model with a recurrent state (Mamba, hybrids) has one graph of one "
        "token per step: 'step' only",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_export_llm)


def _register_plan(subparsers: argparse._SubParsersAction, spec_help: str) -> None:
    from t2n_quant.plan import CANDIDATES

    p = subparsers.add_parser(
        "plan",
        help="choose a codec per layer of a causal LM checkpoint within a bits-per-weight "
        "budget, measured end to end on text; writes the JSON `t2n export-llm --plan` takes",
        epilog=spec_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a Hugging Face causal LM checkpoint folder (config, "
                   "weights, tokenizer)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="JSON",
                   help="the plan file to write ({module glob: spec})")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--budget", type=float, required=True, metavar="BITS",
        help="stored bits per weight at most, over the planned weights (codes, scales, zeros; "
        "q4_0 is 4.5)",
    )  # fmt: skip
    p.add_argument(
        "--candidates", nargs="+", default=list(CANDIDATES), metavar="SPEC",
        help=f"codecs each layer may get (default: {' '.join(CANDIDATES)})",
    )  # fmt: skip
    p.add_argument(
        "--calibration", default="mse", choices=["minmax", "mse", "hqq", "gptq", "gptq:mse"],
        help="how each trial layer is rounded, as export-llm will round it (default mse); "
        "gptq needs --calibration-text",
    )  # fmt: skip
    cli_options.add_calibration_options(p)
    cli_options.add_lm_texts(
        p, "text each layer's sensitivity (KL of next-token distributions) is measured on",
        "text gptq takes its layer inputs from (give export-llm the same)",
    )  # fmt: skip
    add_selection(p, "module paths")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_plan)


def run_demo(args: argparse.Namespace) -> int:
    import t2n_core
    from t2n_core.examples import keyword_spotter
    from t2n_quant import quantize_model
    from t2n_quant.compare import sqnr as compare_sqnr

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, audio = keyword_spotter()
    longer = torch.randn(1, 40, 80, generator=torch.Generator().manual_seed(1))
    export_kw = dict(
        input_names=["audio"], output_names=["logits"], dynamic_axes={"audio": {2: "T"}},
        check=True, overwrite=True,
    )  # fmt: skip
    with torch.no_grad():
        reference = model(audio)

    print(f"example: {type(model).__name__}, input audio {list(audio.shape)} (T dynamic)")
    result = t2n_core.export(model, (audio,), out / "f32.nnef.tgz", **export_kw)
    _second_length(result.path, model, longer)
    rows = [_row("f32", 32.0, result, math.inf)]
    print(result)
    for spec in args.codecs:
        qmodel = copy.deepcopy(model)
        summary = quantize_model(qmodel, spec, fallback=args.fallback)
        print(f"\n{summary}")
        path = out / f"{spec.replace(':', '_')}.nnef.tgz"
        result = t2n_core.export(qmodel, (audio,), path, **export_kw)
        _second_length(result.path, qmodel, longer)
        with torch.no_grad():
            sqnr = compare_sqnr(reference, qmodel(audio))
        bits = 8 * summary.bytes_after / max(sum(math.prod(q.shape) for q in summary.quantized), 1)
        rows.append(_row(spec, bits, result, sqnr))

    print("\n| archive | bits/weight (quantized) | size | tract vs PyTorch max abs | "
          "SQNR vs f32 output (dB) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nall archives checked in tract at T=50 and T=80; written to {out}/")
    return 0


def run_export_llm(args: argparse.Namespace) -> int:
    from t2n_quant.llm import export_checkpoint

    if args.plan and args.codec:
        raise ConfigSpecError("give --codec or --plan, not both")
    text = Path(args.calibration_text) if args.calibration_text else None
    shipped = export_checkpoint(
        args.checkpoint, args.output, dtype=args.dtype, codec=args.plan or args.codec,
        quantized=args.quantized, calibration=args.calibration, exclude=args.exclude or None,
        overwrite=args.overwrite, calibration_text=text, n_sequences=args.max_sequences,
        seq_len=args.seq_len,
        check=not args.no_check, samples=args.samples or None,
        trust_remote_code=args.trust_remote_code,
        all_logits=args.all_logits, f32_attention=args.f32_attention, f32_norm=args.f32_norm,
        fragments=not args.no_fragments, progress=not args.quiet, adapter=args.adapter,
        lora=args.lora, experts=args.experts, graphs=args.graphs,
        calibration_options=cli_options.calibration_options(
            args.calibration_option, args.calibration) or None,
        device=args.device,
    )  # fmt: skip
    print(shipped)
    return 0 if shipped.check is None or shipped.check.passed else 1


def run_compare(args: argparse.Namespace) -> int:
    from t2n_quant.compare import compare

    options = cli_options.calibration_options(args.calibration_option, *args.calibrations) or None
    if args.checkpoint is None:
        from t2n_core.examples import keyword_spotter

        if args.text or args.calibration_text:
            raise CalibrationDataError("--text / --calibration-text need a checkpoint folder")
        model, inputs = keyword_spotter()
        data = None
        print(f"example: {type(model).__name__}, input audio {list(inputs.shape)}")
    else:
        model, texts, data = _lm_inputs(args, any(is_data_aware(c) for c in args.calibrations))
        inputs = torch.cat(texts)
    metric = "kl" if args.checkpoint else "sqnr"
    from t2n_quant.plan import Plan

    specs = [Plan.load(s) if s.endswith(".json") else s for s in args.codecs]
    for spec, name in zip(specs, args.codecs):
        if isinstance(spec, Plan):
            spec.label = Path(name).stem
    comparison = compare(model, inputs, specs, calibrations=args.calibrations, data=data,
                         device=args.device, metric=metric, batch_size=args.batch_size,
                         calibration_options=options, include=args.include,
                         exclude=args.exclude or None)  # fmt: skip
    print(comparison)
    if args.layers:
        print("\nper-layer output SQNR (dB) vs the float model, errors accumulated:")
        print(comparison.layer_table())
    if args.plot:
        comparison.plot(args.plot_kind).savefig(args.plot, dpi=120)
        print(f"\n{args.plot_kind} figure written to {args.plot}")
    return 0


def _lm_inputs(
    args: argparse.Namespace, data_aware: bool
) -> tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor] | None]:
    """The checkpoint's model, the token-id batches of ``--text`` and, when ``data_aware``,
    those of ``--calibration-text``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t2n_quant.calibration_data import text_batches

    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file():
        raise CalibrationDataError(f"{folder} is not a checkpoint folder (no config.json)")
    if not args.text:
        raise CalibrationDataError(
            f"t2n {args.command} on a checkpoint needs --text FILE (the text the model is "
            "measured on)"
        )
    if data_aware and not args.calibration_text:
        raise CalibrationDataError(
            f"calibrations {', '.join(DATA_AWARE)} need --calibration-text FILE"
        )
    if args.calibration_text and not data_aware:
        logger.warning("--calibration-text ignored: no data-aware calibration (%s) asked for",
                       ", ".join(DATA_AWARE))  # fmt: skip
    for flag, name in (("--text", args.text), ("--calibration-text", args.calibration_text)):
        if name and not Path(name).is_file():  # before the model is loaded
            raise CalibrationDataError(f"{flag} {name}: no such file")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    texts = text_batches(tokenizer, Path(args.text), seq_len=args.seq_len,
                         n_sequences=args.max_sequences)  # fmt: skip
    data = None
    if data_aware:
        data = text_batches(tokenizer, Path(args.calibration_text), seq_len=args.seq_len,
                            n_sequences=args.max_sequences)  # fmt: skip
    print(f"{folder.name}: {type(model).__name__}, {sum(len(b) for b in texts)} sequence(s) "
          f"of {texts[0].shape[1]} tokens from {args.text}")  # fmt: skip
    return model, texts, data


def run_plan(args: argparse.Namespace) -> int:
    from t2n_quant.config import resolve
    from t2n_quant.errors import PlanError
    from t2n_quant.plan import bits_per_weight, check_plan, plan, quantize_layout
    from t2n_quant.weights import collect_weights

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise PlanError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise PlanError(f"cannot write {out}: folder {out.parent} does not exist")
    for spec in args.candidates:
        resolve(spec)  # a bad spec fails before the model is loaded
    options = cli_options.calibration_options(args.calibration_option, args.calibration) or None
    model, texts, data = _lm_inputs(args, is_data_aware(args.calibration))
    mixed = plan(
        model, args.budget, args.candidates, data=texts, calibration_data=data,
        calibration=args.calibration, calibration_options=options, include=args.include,
        exclude=args.exclude or None, max_batches=len(texts), progress=not args.quiet,
    )  # fmt: skip
    with quantize_layout(model):  # the weights as quantize_model will see them
        weights = collect_weights(model)
        chosen = check_plan(mixed, weights)
        stored = values = 0.0
        print("\n| module glob | codec | weight | bits/weight |\n|---|---|---|---|")
        for w in weights:
            codec = chosen.get(w.name)
            if codec is None:
                continue
            glob = next(g for g in mixed if any(fnmatch.fnmatchcase(p, g) for p, _ in w.users))
            bits = bits_per_weight(codec, w.param.shape)
            stored += bits * w.param.numel()
            values += w.param.numel()
            print(f"| {glob} | {codec.spec} | {w.name} {list(w.param.shape)} | {bits:.3f} |")
    left = [w.name for w in weights if chosen.get(w.name) is None]
    print(f"\n{len(mixed)} entries: {stored / max(values, 1):.3f} bits per planned weight "
          f"(budget {args.budget:g}); left float: {', '.join(left) or 'none'}")  # fmt: skip
    mixed.save(out)
    print(f"plan written to {out}; use it with t2n export-llm {args.checkpoint} -o OUT "
          f"--plan {out} --calibration {args.calibration}")  # fmt: skip
    return 0


def _second_length(path: Path, model: torch.nn.Module, audio: torch.Tensor) -> None:
    import t2n_core

    with torch.no_grad():
        expected = model(audio).numpy()
    t2n_core.check_archive(path, [audio.numpy()], [expected], names=["logits"])


def _row(name: str, bits: float, result, sqnr: float) -> list[str]:
    size = result.path.stat().st_size
    err = max(o.max_abs_error for o in result.check.outputs)
    return [name, f"{bits:.2f}", f"{size / 1024:.0f} KiB", f"{err:.2e}",
            "exact" if math.isinf(sqnr) else f"{sqnr:.1f}"]  # fmt: skip


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for unit, mult in units.items():
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * mult)
    if not t.isdigit():
        from t2n_quant.errors import ConfigSpecError

        raise ConfigSpecError(f"--max-shard-size {text!r}: expected bytes, e.g. 2GB or 500MB")
    return int(t)


def run_quantize(args: argparse.Namespace) -> int:
    from t2n_quant.interop.safetensors import quantize_safetensors

    summary = quantize_safetensors(
        args.src, args.output, args.codec, calibration=args.calibration, include=args.include,
        exclude=args.exclude, min_numel=args.min_numel,
        max_shard_size=_size(args.max_shard_size),
    )  # fmt: skip
    print(summary)
    return 0


def run_import_gptq(args: argparse.Namespace) -> int:
    from t2n_quant.interop.gptq import import_gptq_checkpoint

    result = import_gptq_checkpoint(
        args.src, args.output, dtype=getattr(torch, args.dtype), requantize=args.requantize,
        max_shard_size=_size(args.max_shard_size),
    )  # fmt: skip
    print(result)
    return 0


def run_import_bnb(args: argparse.Namespace) -> int:
    from t2n_quant.interop.bitsandbytes import import_bnb_checkpoint

    result = import_bnb_checkpoint(
        args.src, args.output, dtype=getattr(torch, args.dtype), reencode=args.reencode,
        max_shard_size=_size(args.max_shard_size),
    )  # fmt: skip
    print(result)
    return 0

"""``export_checkpoint``: a Hugging Face checkpoint directory -> a checked, tract-ready directory.

The output directory holds ``model.nnef.tgz`` (one generation step with KV cache), the config,
generation config and tokenizer files, ``manifest.json`` and io samples
(``prompt_inputs.npz`` / ``prompt_outputs.npz``: a prompt with an empty cache;
``step_*.npz``: one token with the prompt's cache; ``chunk_*.npz``: two tokens with that
cache), keyed by the graph's io names, that ``t2n check`` replays (:mod:`t2n_core.llm.samples`).
The samples cost a PyTorch pass over the streamed weights, so without the check they are
written only when asked (``samples=True``). That pass runs in a thread beside the writer and
takes each slab of rows as the writer reads and converts or quantizes it
(:mod:`t2n_core.slab_exchange`): every weight is read from the checkpoint once.

Weights are streamed: the model is built on the meta device from config.json and every weight
is read from the shards (converted to the requested dtype, or quantized) only when written, so
memory does not grow with the model. The directory is assembled under a hidden temporary name
beside the target (``.<name>.t2n-tmp-<pid>-...``, removed by the next export once its process
is gone) and renamed at the end: an interrupted export leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from t2n_core.check import CheckReport, TractLoad
from t2n_core.errors import (
    CheckpointError,
    CheckpointLayoutError,
    ExportInputError,
    T2NError,
    UnsupportedOpsError,
)
from t2n_core.export import ExportResult
from t2n_core.llm.checkpoint import Checkpoint, open_checkpoint, streamed_model
from t2n_core.llm.experts import DEFAULT_EXPERTS, check_experts
from t2n_core.llm.export import DEFAULT_TOLERANCE, export_causal_lm, export_prefill_decode
from t2n_core.llm.precision import f32_attention as use_f32_attention
from t2n_core.llm.precision import f32_norms, is_norm
from t2n_core.llm.samples import (
    PREFILL_DECODE_SAMPLES,
    IoSample,
    check_samples,
    load_samples,
    on_graphs,
    reference_samples,
    sample_tokens,
    save_samples,
)
from t2n_core.llm.support import KNOWN_TO_WORK
from t2n_core.llm.wrapper import is_stateful, num_layers_of, past_shapes_of
from t2n_core.lora import with_peft_adapter
from t2n_core.many import ManyExportResult
from t2n_core.nnef.archive import (
    TMP_MARK,
    check_target,
    remove_stale_temporaries,
    replace_target,
)
from t2n_core.progress import progress_bar
from t2n_core.slab_exchange import SlabExchange
from t2n_core.summary import human_bytes
from t2n_core.version import __version__

logger = logging.getLogger(__name__)

ARCHIVE_NAME = "model.nnef.tgz"
MANIFEST_NAME = "manifest.json"
#: files copied from the checkpoint beside the archive (tokenizer files are added)
CONFIG_FILES = ("config.json", "generation_config.json")
DTYPES = {"f32": torch.float32, "f16": torch.float16}
#: ``graphs=``: one graph for every step, or prefill and decode graphs sharing the weights
GRAPHS = ("step", "prefill-decode")

#: ``quantize(model) -> summary``: replaces weights in place (t2n_quant.quantize_model)
Quantizer = Callable[[nn.Module], Any]


@dataclass
class ShippedModel:
    """What :func:`export_checkpoint` wrote (``print()`` it for the summary table)."""

    directory: Path
    manifest: dict[str, Any]
    export: ExportResult | ManyExportResult
    check: CheckReport | None = None
    quantization: Any = None
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    warnings: list[str] = field(default_factory=list)
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds (all threads)

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE_NAME

    def __str__(self) -> str:
        m = self.manifest
        rows = [
            ("output", str(self.directory)),
            ("model", f"{m['architecture']} ({m['parameters'] / 1e6:.1f}M parameters, "
                      f"{m['num_layers']} layers)"),
            ("dtype", m["dtype"] + "".join(
                f" +{k}" for k in ("f32_attention", "f32_norm") if m[k])),
            ("codec", f"{m['codec'] or 'none'}" + (
                f" ({m['calibration']}, {m['quantized_weights']} weights, "
                f"{m['bits_per_weight']:.2f} bits/weight)" if m["codec"] else "")),
            ("left float", f"{len(m['skipped'])} weight(s)" + "".join(
                f"\n  {s['name']}: {s['reason']}" for s in m["skipped"])),
            ("archive", f"{human_bytes(m['archive_bytes'])}, tensors "
                        + ", ".join(f"{k} {human_bytes(v)}" for k, v in m["tensor_bytes"].items())),
            *([("graphs", "prefill (T tokens) + decode (1 token), sharing the weights")]
              if m.get("graphs") else []),
            ("logits", "all positions" if m["all_logits"] else "last position only"),
            *([("experts", m["experts"])] if m.get("experts") else []),
            ("tokenizer", "copied" if m["tokenizer"] else "MISSING (generate needs --prompt-ids)"),
            ("check", f"skipped (--no-check), io samples: {', '.join(m['samples']) or 'none'}"
                      if self.check is None else
                      ("passed" if self.check.passed else "FAILED") +
                      f" on {', '.join(m['samples'])} (max abs error "
                      f"{max(o.max_abs_error for o in self.check.outputs):.3g})"),
            ("time", ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())),
        ]  # fmt: skip
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "f32",
    quantize: Quantizer | None = None,
    quantization: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    check: bool = True,
    samples: bool | None = None,
    trust_remote_code: bool = False,
    all_logits: bool = False,
    graphs: str = "step",
    f32_attention: bool = False,
    f32_norm: bool = False,
    fragments: bool = True,
    experts: str = DEFAULT_EXPERTS,
    progress: bool = True,
    adapter: str | os.PathLike | None = None,
    lora: str | None = None,
) -> ShippedModel:
    """Export the causal LM of a local checkpoint directory to ``out`` (a new directory).

    ``dtype`` (``"f32"``/``"f16"``) is what the weights (bf16, f16 or f32 in the checkpoint)
    are converted to and what tract computes in; ``f32_attention`` / ``f32_norm`` keep those
    parts in f32 in an f16 export. ``fragments=False`` writes every decoder layer inline
    instead of one NNEF fragment per distinct layer. ``adapter``: a PEFT LoRA adapter folder
    loaded onto the checkpoint's model (``save_pretrained`` output); ``lora`` writes it
    ``"separate"`` (default: base weights and adapter apart, swappable with
    ``t2n adapter swap``) or ``"merged"`` (see :mod:`t2n_core.lora`). ``experts``
    (``"dense"``, ``"gather"``): how mixture-of-experts layers are written, see
    :func:`~t2n_core.llm.export_causal_lm`. ``graphs="prefill-decode"`` writes two graphs
    sharing the weights (:func:`~t2n_core.llm.export_prefill_decode`: ``prefill`` for the
    prompt, ``decode`` for one token at a time, where tract plans matrix-vector products)
    instead of one ``"step"`` graph for both; the io samples then run on the graph each
    belongs to (the prompt and chunk on prefill, the step on decode). ``quantize`` (see
    :func:`t2n_quant.export_checkpoint`, which passes ``quantize_model`` with its codec)
    replaces weights before export; ``quantization``
    is recorded in the manifest. ``check`` runs the io samples in tract against PyTorch;
    ``samples`` (default: ``check``) writes them (PyTorch's outputs, for ``t2n check`` later)
    without running tract when ``check`` is False.
    Raises :class:`~t2n_core.errors.CheckpointError` naming the file for a missing config or
    weights, a truncated or corrupted shard; nothing is written then.

    >>> shipped = export_checkpoint("llama-dir", "out/llama", dtype="f16")  # doctest: +SKIP
    >>> print(shipped)                                                     # doctest: +SKIP
    """
    clock = _PhaseClock()
    timings = clock.wall
    target = check_target(out, overwrite=overwrite, foreign=_not_ours)
    torch_dtype = _torch_dtype(dtype)
    check_experts(experts)
    if graphs not in GRAPHS:
        raise ExportInputError(f"graphs must be one of {list(GRAPHS)}, got {graphs!r}")
    if graphs == "prefill-decode" and all_logits:
        raise ExportInputError(
            "graphs='prefill-decode' returns the logits of the last position only (what "
            "generation needs): all_logits needs graphs='step'"
        )
    if (f32_attention or f32_norm) and torch_dtype != torch.float16:
        raise ExportInputError("f32_attention / f32_norm only apply to an f16 export (dtype='f16')")
    with progress_bar(total=2, desc="load", unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("config and shard headers", refresh=False)
        ckpt = open_checkpoint(checkpoint, trust_remote_code=trust_remote_code)
        bar.update(1)
        notes: list[str] = []
        if not ckpt.has_tokenizer:
            notes.append(
                f"no tokenizer in {ckpt.directory} (none of tokenizer.json, tokenizer.model, "
                "vocab.json, vocab.txt): exported without one; `t2n generate` will need token ids"
            )
            logger.warning("%s", notes[-1])
        bar.set_postfix_str(f"{ckpt.architecture} with streamed weights", refresh=False)
        model = _load(ckpt, torch_dtype, f32_norm, notes)
        if adapter is not None:
            model = with_peft_adapter(model, adapter)
        bar.update(1)
    clock.stop("load")

    clock.start()
    summary = quantize(model) if quantize is not None else None
    clock.stop("quantize plan")
    if f32_attention:
        use_f32_attention(model)
    if f32_norm:
        f32_norms(model)

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARK}{os.getpid()}-", dir=target.parent)
    )
    staging = tmp / "staging"
    staging.mkdir()
    loading: TractLoad | None = None
    reference: SlabExchange[dict[str, IoSample]] | None = None
    try:
        # PyTorch's io samples are computed beside the writer, from the slabs it reads
        if check or samples:
            vocab = int(model.config.get_text_config(decoder=True).vocab_size)
            ids = sample_tokens(ckpt.directory if ckpt.has_tokenizer else None, vocab)
            reference = SlabExchange(
                lambda: reference_samples(
                    model, ids, torch_dtype, all_logits=all_logits, progress=progress
                )
            )
        clock.start()
        archive = staging / ARCHIVE_NAME
        try:
            with reference.beside_writer() if reference else contextlib.nullcontext():
                result = _export_graphs(
                    graphs, model, archive, dtype=torch_dtype, check=False, progress=progress,
                    properties={"source_architecture": ckpt.architecture}, fragments=fragments,
                    lora=lora, experts=experts, all_logits=all_logits,
                )  # fmt: skip
        except UnsupportedOpsError as exc:
            raise UnsupportedOpsError(
                [*exc.problems, f"{ckpt.architecture} is not among the architectures known to "
                 f"export: {', '.join(KNOWN_TO_WORK)}"]
            ) from exc  # fmt: skip
        clock.stop("capture + write")

        io_samples: dict[str, IoSample] = {}
        sample_graphs = PREFILL_DECODE_SAMPLES if graphs == "prefill-decode" else None
        if check:  # tract loads the archive (another process) while PyTorch computes samples
            loading = TractLoad(  # written just now, by us: not read once more to validate
                archive, graph=sample_graphs and sample_graphs["prompt"], validate=False
            )
        if reference is not None:
            clock.start()
            io_samples = reference.result()  # what the pass has left after the writing
            if sample_graphs is not None:
                io_samples = on_graphs(io_samples, sample_graphs)
            save_samples(io_samples, staging)
            clock.stop("reference")
        report = None
        tol = DEFAULT_TOLERANCE[torch_dtype]
        if check:
            clock.start()
            with progress_bar(total=1, desc="check", unit="archive", disable=not progress,
                              leave=False):  # fmt: skip
                report = check_samples(archive, io_samples, atol=tol, rtol=tol, loaded=loading,
                                       graphs=sample_graphs)  # fmt: skip
            clock.stop("check")
        for name in (*CONFIG_FILES, *ckpt.tokenizer_files):
            if (ckpt.directory / name).is_file():
                shutil.copyfile(ckpt.directory / name, staging / name)
        manifest = _manifest(
            ckpt, model, result, archive, torch_dtype, summary, quantization, all_logits,
            f32_attention, f32_norm, list(io_samples), tol, report, experts, sample_graphs,
        )  # fmt: skip
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        check_target(target, overwrite=overwrite, foreign=_not_ours)  # it may have appeared
        replace_target(staging, target, tmp)  # an old output ends up in tmp, removed below
    finally:
        if reference is not None:
            reference.cancel()  # no-op once its result is in
        if loading is not None:
            loading.close()
        shutil.rmtree(tmp, ignore_errors=True)
    result.path = target / ARCHIVE_NAME
    shipped = ShippedModel(
        target, manifest, result, report, summary, timings, notes, cpu_timings=clock.cpu
    )
    logger.info("exported %s to %s", ckpt.architecture, target)
    return shipped


class _PhaseClock:
    """Wall and CPU seconds (the process's, all threads) of each phase, by name."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, name: str) -> None:
        self.wall[name] = time.perf_counter() - self._wall
        self.cpu[name] = time.process_time() - self._cpu


def check_directory(
    directory: str | Path, *, atol: float | None = None, rtol: float | None = None
) -> CheckReport:
    """Replay in tract the io samples a directory of ``export_checkpoint`` holds (the names
    and tolerance its ``manifest.json`` lists, unless ``atol`` / ``rtol`` are given), the
    archive loaded once; the report of the comparison (no exception on a mismatch)."""
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).is_file():
        raise T2NError(
            f"{directory} is not a directory written by export-llm (no {MANIFEST_NAME}): "
            "check an archive with --inputs (and --outputs)"
        )
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        names, archive = list(manifest["samples"]), directory / manifest["archive"]
        tolerance = manifest["tolerance"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise T2NError(
            f"{directory / MANIFEST_NAME} is not the manifest of a directory written by "
            f"export-llm ({exc}); check an archive with --inputs instead"
        ) from None
    if not names:
        raise T2NError(
            f"{directory} holds no io samples (exported with --no-check): export it again "
            "with --samples, or check the archive with --inputs"
        )
    missing = [f"{n}_{io}.npz" for n in names for io in ("inputs", "outputs")
               if not (directory / f"{n}_{io}.npz").is_file()]  # fmt: skip
    if missing:
        raise T2NError(f"{directory} lacks the io samples {missing} its manifest lists")
    return check_samples(
        archive, load_samples(directory, names), raise_on_mismatch=False,
        graphs=manifest.get("sample_graphs"),
        atol=tolerance["atol"] if atol is None else atol,
        rtol=tolerance["rtol"] if rtol is None else rtol,
    )  # fmt: skip


def _export_graphs(
    graphs: str, model: nn.Module, archive: Path, *, all_logits: bool, **options: Any
) -> ExportResult | ManyExportResult:
    if graphs == "prefill-decode":
        return export_prefill_decode(model, archive, **options)
    return export_causal_lm(model, archive, all_logits=all_logits, **options)


def _not_ours(target: Path) -> str | None:
    """Why ``target`` is not an output ``export_checkpoint`` may replace (None: an empty
    directory, or one it wrote): any other files would be lost."""
    if target.is_dir() and not any(target.iterdir()):
        return None
    manifest = target / MANIFEST_NAME
    try:
        ours = json.loads(manifest.read_text()).get("format", "").startswith("t2n-llm/")
    except (OSError, ValueError, AttributeError):
        ours = False
    if ours:
        return None
    return (
        f"{target} exists and is not a directory written by export-llm (no {MANIFEST_NAME} "
        "of format t2n-llm): not replacing it; choose another output"
    )


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ExportInputError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")


def _load(ckpt: Checkpoint, dtype: torch.dtype, f32_norm: bool, notes: list[str]) -> nn.Module:
    """The streamed model; a checkpoint whose names need transformers' conversions (fused
    experts, renamed keys) is loaded whole instead, with a warning."""
    keep = is_norm if f32_norm else None
    try:
        return streamed_model(ckpt, dtype, keep_f32=keep)
    except CheckpointLayoutError as exc:
        notes.append(
            f"{exc}; loading the checkpoint whole with transformers instead (memory grows "
            "with the model)"
        )
        logger.warning("%s", notes[-1])
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        ckpt.directory, dtype=dtype, local_files_only=True, output_loading_info=True,
        trust_remote_code=ckpt.trust_remote_code,
    )  # fmt: skip
    if info.get("missing_keys"):
        raise CheckpointError(
            f"{ckpt.directory} lacks weights for {sorted(info['missing_keys'])[:8]}: the "
            "checkpoint is incomplete or for another architecture"
        )
    if f32_norm:
        for module in model.modules():
            if is_norm(module):
                module.float()
    return model.eval()


def _manifest(
    ckpt: Checkpoint,
    model: nn.Module,
    result: ExportResult | ManyExportResult,
    archive: Path,
    dtype: torch.dtype,
    summary: Any,
    quantization: Mapping[str, Any] | None,
    all_logits: bool,
    f32_attention: bool,
    f32_norm: bool,
    samples: list[str],
    tol: float,
    report: CheckReport | None,
    experts: str,
    sample_graphs: Mapping[str, str] | None,
) -> dict[str, Any]:
    tensors = {}
    for name, header in sorted(result.dat_headers.items()):  # those written, not read back
        shape = [int(d) for d in header.shape]
        numel = max(int(np.prod(shape)), 1)
        tensors[name.removesuffix(".dat")] = {
            "type": header.type_name(), "shape": shape, "bytes": header.data_length,
            "bits_per_weight": round(8 * header.data_length / numel, 4),
        }  # fmt: skip
    text = model.config.get_text_config(decoder=True)
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None) or getattr(text, "eos_token_id", None)
    kv_heads, head_dim = (past_shapes_of(model) or [(None, None)])[0]  # None: no attention
    quantized = list(getattr(summary, "quantized", []))
    before = sum(q.bytes_before for q in quantized)
    after = sum(q.bytes_after for q in quantized)
    numel = sum(int(np.prod(q.shape)) for q in quantized)
    parts = result.graphs if isinstance(result, ManyExportResult) else {"": result}
    return {
        "format": "t2n-llm/1",
        "archive": ARCHIVE_NAME,
        "architecture": ckpt.architecture,
        "model_type": getattr(text, "model_type", None),
        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "num_layers": num_layers_of(model),
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "one_token_per_step": is_stateful(model),
        "vocab_size": int(text.vocab_size),
        "eos_token_id": eos,
        "dtype": {torch.float32: "f32", torch.float16: "f16"}[dtype],
        "f32_attention": f32_attention,
        "f32_norm": f32_norm,
        "all_logits": all_logits,
        "experts": experts if any(hasattr(m, "has_gate") for m in model.modules()) else None,
        "codec": getattr(summary, "codec", None),
        "calibration": getattr(summary, "calibration", None),
        "calibration_options": dict(getattr(summary, "calibration_options", None) or {}) or None,
        "calibration_data_sha256": getattr(summary, "data_hash", None),
        **{k: v for k, v in (quantization or {}).items() if k not in ("codec", "calibration")},
        "quantized_weights": len(quantized),
        "bits_per_weight": 8 * after / numel if numel else None,
        "bytes_before_quantization": before,
        "quantized": {q.name: q.codec for q in quantized},
        "skipped": [{"name": s.name, "reason": s.reason} for s in getattr(summary, "skipped", [])],
        "graphs": list(parts) if isinstance(result, ManyExportResult) else None,
        "inputs": [str(s) for r in parts.values() for s in r.inputs],
        "outputs": [str(s) for r in parts.values() for s in r.outputs],
        "tensor_bytes": result.tensor_bytes,
        "archive_bytes": archive.stat().st_size,
        "tensors": tensors,
        "tokenizer": ckpt.has_tokenizer,
        "samples": samples,
        "sample_graphs": dict(sample_graphs) if sample_graphs and samples else None,
        "tolerance": {"atol": tol, "rtol": tol},
        "checked": None if report is None else report.passed,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"t2n": __version__, "torch": torch.__version__.split("+")[0]}
    for package in ("transformers", "tract"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out

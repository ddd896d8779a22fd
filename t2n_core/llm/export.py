"""``export_causal_lm``: a Hugging Face causal LM -> an NNEF archive of one step with KV cache."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from t2n_core.check import check_archive
from t2n_core.errors import ExportInputError
from t2n_core.export import ExportResult, export
from t2n_core.llm.experts import DEFAULT_EXPERTS, check_experts, experts_implementation
from t2n_core.llm.wrapper import (
    CausalLMWithCache,
    cache_fields_of,
    input_names_of,
    is_stateful,
    output_names_of,
)
from t2n_core.many import ManyExportResult, export_many

logger = logging.getLogger(__name__)

#: default agreement of tract with PyTorch, per dtype: ``max|a-b| <= tol + tol * max|b|``
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}

#: example sizes for torch.export: past length P and new tokens T (both >= 2, see capture)
EXAMPLE_PAST = 5
EXAMPLE_NEW = 3


def export_causal_lm(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    check: bool = True,
    dynamic_batch: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    overwrite: bool = False,
    properties: Mapping[str, str] | None = None,
    progress: bool = True,
    all_logits: bool = True,
    fragments: bool = True,
    lora: str | None = None,
    experts: str = DEFAULT_EXPERTS,
) -> ExportResult:
    """Export one generation step of a Hugging Face causal LM, with its KV cache, to NNEF.

    The graph takes ``input_ids [B, T]`` (the T new tokens) and, per decoder layer ``i``,
    ``past_key_i`` / ``past_value_i`` ``[B, kv_heads, P, head_dim]``; it returns
    ``logits [B, T, vocab]`` and ``present_key_i`` / ``present_value_i``
    ``[B, kv_heads, P + T, head_dim]``. ``T`` and ``P`` are symbols (P may be 0 in tract: the
    first call, the prompt, passes empty past tensors); ``B`` too unless
    ``dynamic_batch=False`` (then B = 1). With ``all_logits=False`` the logits are those of
    the last position only, ``[B, 1, vocab]`` (what generation needs: a long prompt with a
    large vocabulary otherwise returns T x vocab values). Feed the present tensors back as
    the next past.

    A model whose cache holds a recurrent or convolution state (Mamba, hybrids: see
    :func:`~t2n_core.llm.wrapper.cache_fields_of`) also takes and returns each such state
    (``past_conv_state_i`` / ``past_recurrent_state_i``, fixed sizes) and one token per call
    (``input_ids [B, 1]``, transformers' decode path); the first call passes zero states.
    The check then runs a step on random states and one on zero states.

    ``dtype`` is the dtype of the cache and activations (``torch.float32`` or
    ``torch.float16``); by default the model's own. A dtype other than the model's exports a
    converted copy (the model itself is not changed; the copy costs memory). ``check=True``
    runs the archive in tract on an example step (P=5, T=3) and on a prompt (P=0) and raises
    :class:`~t2n_core.errors.CheckMismatchError` if it disagrees with PyTorch beyond
    ``atol + rtol * max|reference|`` (defaults: :data:`DEFAULT_TOLERANCE`).

    ``fragments`` (default): the decoder layers are captured once per distinct layer and
    written as one NNEF fragment called per layer (see :func:`t2n_core.export`). ``lora``:
    how LoRA adapters are written, ``"separate"`` (default) or ``"merged"`` (see
    :mod:`t2n_core.lora`).

    ``experts`` is how mixture-of-experts layers are written (:mod:`t2n_core.llm.experts`):
    ``"dense"`` (default) runs every expert on every token, masked by the router's weights
    (experts / top-k times the expert compute, memory independent of the prompt);
    ``"gather"`` runs only the top-k experts per token, gathering their weights (less
    compute, but a prompt of T tokens holds T * top-k float expert matrices, and tract
    0.23.9's gather of q4_0 rows makes it slower than dense at the sizes measured by
    ``benchmarks/bench_moe_experts.py``).

    >>> result = export_causal_lm(LlamaForCausalLM(config), "llm.nnef.tgz")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ExportInputError(
            "export_causal_lm needs a Hugging Face causal LM (an nn.Module with a .config), "
            f"got {type(model).__name__}"
        )
    model_dtype = _float_dtype(model)
    dtype = dtype or model_dtype
    if dtype not in DEFAULT_TOLERANCE:
        raise ExportInputError(
            f"dtype must be torch.float32 or torch.float16, got {dtype}; convert the model "
            "first for other dtypes"
        )
    if dtype != model_dtype:
        logger.info("exporting a %s copy of the %s model", dtype, model_dtype)
        model = copy.deepcopy(model).to(dtype)
    check_experts(experts)
    tol = DEFAULT_TOLERANCE[dtype]
    atol = tol if atol is None else atol
    rtol = tol if rtol is None else rtol

    step = CausalLMWithCache(model, all_logits=all_logits).eval()
    input_names, output_names = input_names_of(model), output_names_of(model)
    batch = 2 if dynamic_batch else 1  # torch.export specialises a size-1 example axis
    new = 1 if step.stateful else EXAMPLE_NEW  # a recurrent state: one token per step
    args = example_inputs(model, batch=batch, past=EXAMPLE_PAST, new=new, dtype=dtype)
    dynamic_axes = step_axes(model, dynamic_batch=dynamic_batch, new=not step.stateful)
    with experts_implementation(model, experts):  # MoE layers in a form tract runs
        result = export(
            step, args, path, input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, check=check, atol=atol, rtol=rtol, overwrite=overwrite,
            properties=properties, progress=progress, fragments=fragments, lora=lora,
        )  # fmt: skip
        prompt = example_inputs(model, batch=batch, past=0, new=1 if step.stateful else
                                EXAMPLE_NEW + 1, dtype=dtype)  # fmt: skip
        with torch.no_grad():
            expected = step(*prompt) if check and result.check is not None else None
    if expected is not None:
        report = check_archive(
            result.path, [a.numpy() for a in prompt], [e.numpy() for e in expected],
            names=[f"{n}@P=0" for n in output_names], atol=atol, rtol=rtol,
        )  # fmt: skip
        result.check.outputs += report.outputs
    return result


def export_prefill_decode(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    check: bool = True,
    dynamic_batch: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    overwrite: bool = False,
    properties: Mapping[str, str] | None = None,
    progress: bool = True,
    fragments: bool = True,
    lora: str | None = None,
    experts: str = DEFAULT_EXPERTS,
) -> ManyExportResult:
    """Export a causal LM as two graphs of one archive sharing every weight
    (:func:`t2n_core.export_many`): ``prefill`` (T new tokens, logits of the last position,
    as ``export_causal_lm(all_logits=False)``) and ``decode`` (one new token: T = 1 is a
    fixed size there, so tract plans matrix-vector products). Inputs and outputs are those of
    :func:`export_causal_lm`, prefixed ``prefill_`` / ``decode_``. :func:`greedy_generate`
    runs such an archive with prefill for the prompt and decode after it. Each graph loaded
    in tract holds its own copy of the weights in memory: the archive is stored once, not
    the loaded weights. ``check`` runs both graphs in tract (prefill on P=5 and on an empty
    cache) and compares with PyTorch. ``lora``, ``experts``: as in :func:`export_causal_lm`.

    >>> result = export_prefill_decode(llm, "llm.nnef.tgz")   # doctest: +SKIP
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ExportInputError(
            "export_prefill_decode needs a Hugging Face causal LM (an nn.Module with a "
            f".config), got {type(model).__name__}"
        )
    dtype = dtype or _float_dtype(model)
    if dtype not in DEFAULT_TOLERANCE:
        raise ExportInputError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if dtype != _float_dtype(model):
        model = copy.deepcopy(model).to(dtype)
    tol = DEFAULT_TOLERANCE[dtype]
    atol = tol if atol is None else atol
    rtol = tol if rtol is None else rtol
    if is_stateful(model):
        raise ExportInputError(
            f"{type(model).__name__} keeps a recurrent state: its step takes one token per call "
            "(export_causal_lm), so prefill and decode graphs would be the same graph; export "
            "it as one step graph (graphs='step')"
        )
    graphs = prefill_decode_graphs(model, dtype=dtype, dynamic_batch=dynamic_batch)
    step = graphs["prefill"][0]
    batch = 2 if dynamic_batch else 1
    check_experts(experts)
    with experts_implementation(model, experts):
        result = export_many(
            graphs, path, check=check, atol=atol, rtol=rtol, overwrite=overwrite,
            properties=properties, progress=progress, fragments=fragments, lora=lora,
        )  # fmt: skip
        prompt = example_inputs(model, batch=batch, past=0, new=EXAMPLE_NEW + 1, dtype=dtype)
        with torch.no_grad():
            expected = step(*prompt) if check else None
    if expected is not None:
        prefill = result.graphs["prefill"]
        report = check_archive(
            result.path, [a.numpy() for a in prompt], [e.numpy() for e in expected],
            names=[f"{o.name}@P=0" for o in prefill.outputs], atol=atol, rtol=rtol,
            graph="prefill",
        )  # fmt: skip
        assert prefill.check is not None
        prefill.check.outputs += report.outputs
    return result


def prefill_decode_graphs(
    model: nn.Module, *, dtype: torch.dtype, dynamic_batch: bool = True
) -> dict[str, tuple]:
    """The graphs of :func:`export_prefill_decode`, for :func:`t2n_core.export_many`:
    ``{"prefill": (step, example inputs, options), "decode": (...)}``; both wrap ``model``,
    so they hold the same parameter objects."""
    step = CausalLMWithCache(model, all_logits=False).eval()
    names = {"input_names": input_names_of(model), "output_names": output_names_of(model)}
    batch = 2 if dynamic_batch else 1  # torch.export specialises a size-1 example axis
    batch_axis = {0: "B"} if dynamic_batch else {}
    past_axes = step_axes(model, dynamic_batch=dynamic_batch, new=False)
    del past_axes["input_ids"]
    return {
        "prefill": (
            step, example_inputs(model, batch=batch, past=EXAMPLE_PAST, new=EXAMPLE_NEW,
                                 dtype=dtype),
            {**names, "dynamic_axes": {"input_ids": {**batch_axis, 1: "T"}, **past_axes}},
        ),
        "decode": (  # an example of one new token: torch.export keeps that size fixed
            step, example_inputs(model, batch=batch, past=EXAMPLE_PAST, new=1, dtype=dtype),
            {**names, "dynamic_axes": {"input_ids": batch_axis, **past_axes}},
        ),
    }  # fmt: skip


def step_axes(model: nn.Module, *, dynamic_batch: bool, new: bool) -> dict[str, dict[int, str]]:
    """The dynamic axes of the step's inputs: ``B`` (batch, with ``dynamic_batch``), ``T``
    (new tokens, with ``new``) of ``input_ids``, ``P`` (past length) of each growing cache
    tensor; a fixed-size state has its batch axis only."""
    batch_axis = {0: "B"} if dynamic_batch else {}
    axes: dict[str, dict[int, str]] = {"input_ids": {**batch_axis, **({1: "T"} if new else {})}}
    for field in cache_fields_of(model):
        seq = {} if field.seq_axis is None else {field.seq_axis: "P"}
        axes[field.input_name()] = {**batch_axis, **seq}
    return axes


def example_inputs(
    model: nn.Module, *, batch: int, past: int, new: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """``(input_ids [batch, new], past_key_0 [batch, kv_heads, past, head_dim], ...)``, the
    cache shapes read from the model (:func:`~t2n_core.llm.wrapper.cache_fields_of`). A
    fixed-size state (convolution, recurrent) is random, or zeros (a fresh start) when
    ``past`` is 0."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(model.config.get_text_config(decoder=True).vocab_size)
    ids = torch.randint(0, vocab, (batch, new), generator=gen)
    tensors = []
    for field in cache_fields_of(model):
        shape = [batch, *field.shape[1:]]
        if field.seq_axis is not None:
            shape[field.seq_axis] = past
        tensor = torch.randn(*shape, generator=gen)
        tensors.append((tensor if past or field.seq_axis is not None else tensor * 0).to(dtype))
    return (ids, *tensors)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32

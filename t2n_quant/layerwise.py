"""Data-aware quantization, block by block: what each weight's module sees on calibration data.

A data-aware calibration (``"gptq"``) needs, per weight, ``H = X^T X`` over the inputs its
module sees: the rows fed to a Linear, the patches a Conv1d / Conv2d multiplies, the query /
key / value fed to an ``nn.MultiheadAttention``'s q/k/v projections (one Hessian per third
of the packed projection when they differ), and the heads' outputs its ``out_proj``
multiplies (recomputed by :func:`attention_output`, as the attention reads ``out_proj``'s
weight without calling it). How they are gathered:

- **block by block** when the model keeps its repeated blocks in an ``nn.ModuleList``
  (``model.layers``, ``encoder.layer``, ...) and consecutive blocks chain (each block's
  first input is the previous block's first output, the other arguments equal): the inputs
  of the first block are captured once (the model stops there), then each block in turn is
  run on them to gather the Hessians of its weights, its weights are quantized, and the
  quantized block is run again to give the next block its inputs (so each block is
  calibrated on the activations of the already quantized blocks before it, as in GPTQ).
  Within a block, GPTQ goes stage by stage (``sequential=True``, the default): the Linears
  reading the first input reached (``q``/``k``/``v``) are quantized, then the block is run
  again to gather the next stage's inputs (``o``, then ``gate``/``up``, then ``down``)
  through the quantized ones, so each Linear compensates the error of those before it.
  With ``float_target=True`` (the default) a float copy of the block is run alongside on
  the float model's own block inputs, and each weight is first fitted
  (:func:`~t2n_quant.calibration.gptq.float_target_weight`) so that its output on the
  quantized model's inputs comes closest to the float model's output, before GPTQ rounds
  it: the rounding then aims at the float model, not at the layer's float weight on
  inputs already off (weights whose float inputs cannot be paired call for call keep
  plain GPTQ, with a note).
  Only the block at hand needs to be on ``device``; the weights outside the blocks (an LM
  head) are calibrated last, with the blocks replaced by their recorded outputs.
- **all at once** otherwise: one pass of the float model with every Hessian gathered.

Padding does not count: when a batch carries a 2-D ``attention_mask`` (Hugging Face
tokenizers' ``padding=True``), the rows of a layer input shaped ``(batch, tokens, k)`` at
padded positions (mask 0) are left out of its Hessian and activation statistics.

Weights no data-aware method applies to (see :func:`not_applicable`; shared by several
modules; never reached by the data) get the weight-only ``inner`` calibration and a note
saying so.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from t2n_core.progress import progress_bar
from t2n_quant.awq_fold import awq_stage, norm_weight, producer_of
from t2n_quant.block_calls import first_tensor, out_with_first, with_first
from t2n_quant.calibration.gptq import float_target_weight, gptq
from t2n_quant.calibration.scale_tuning import tune_scales
from t2n_quant.calibration_data import Batch
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.data_aware_options import TUNING, check_options
from t2n_quant.errors import CalibrationDataError
from t2n_quant.qtensor import QTensor

logger = logging.getLogger(__name__)

#: ``nn.MultiheadAttention`` weights and the forward arguments (query, key, value) they read
ATTENTION_INPUTS = {"in_proj_weight": (0, 1, 2), "q_proj_weight": (0,), "k_proj_weight": (1,),
                    "v_proj_weight": (2,)}  # fmt: skip

class _Stop(Exception):
    pass


@dataclass
class Target:
    """One weight to calibrate with data: its Linear module and the Hessian of its inputs."""

    weight: Any  # t2n_quant.weights.Weight
    codec: Codec | None  # None: only the Hessian is wanted (plan)
    path: str
    module: nn.Module  # a Linear, or a Conv1d / Conv2d (gptq)
    hessian: torch.Tensor | None = None
    rows: int = 0
    act: torch.Tensor | None = None  # sum of |x| per input channel
    first_input: torch.Tensor | None = None  # the input tensor object of the first call
    seq: int = -1  # when the first input arrived, in the order of the block's calls
    #: attention's packed q/k/v projection fed different query / key / value tensors: one
    #: Hessian per third of the rows (None while they are all the same tensor)
    parts: list[Target] | None = None
    #: float_target: the float model's inputs of this module in the batch at hand (one per
    #: call, taken in order), and ``X_float^T X`` over the rows gathered so far
    floats: list[torch.Tensor] | None = None
    cross: torch.Tensor | None = None
    cross_lost: str | None = None  # why the float inputs could not be paired

    def reset(self) -> None:
        self.hessian, self.rows, self.act, self.first_input, self.seq = None, 0, None, None, -1
        self.parts, self.floats, self.cross, self.cross_lost = None, None, None, None

    def add_inputs(self, xs: list[torch.Tensor], mask: torch.Tensor | None,
                   shared: dict[str, Any] | None = None) -> None:  # fmt: skip
        """One call's inputs: one tensor, or attention's (query, key, value) for the packed
        projection, whose thirds each take their own input's Hessian once they differ."""
        if self.parts is None and all(x is xs[0] for x in xs):
            self.add(xs[0], mask, shared)
            return
        if self.parts is None:  # split what was gathered while they were the same
            self.cross_lost = "its query, key and value differ"
            self.parts = [Target(self.weight, self.codec, self.path, self.module)
                          for _ in xs]  # fmt: skip
            for part in self.parts:
                part.hessian = None if self.hessian is None else self.hessian.clone()
                part.rows = self.rows
        if self.first_input is None:
            self.first_input = xs[0]
        for part, x in zip(self.parts, xs):
            part.add(x, mask, shared)
        self.hessian = self.parts[0].hessian

    def add(self, x: torch.Tensor, mask: torch.Tensor | None = None,
            shared: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Accumulate the input ``x``; ``mask`` (the batch's tokens, False on padding)
        drops a Linear's padded rows when ``x`` is shaped ``(*mask.shape, k)``. ``shared``
        keeps the last input's statistics, so the Linears reading one tensor (q/k/v) take
        its ``x^T x`` once."""
        if self.first_input is None:
            self.first_input = x
        conv = isinstance(self.module, (nn.Conv1d, nn.Conv2d))
        rows = None
        if shared is not None and shared.get("x") is x and shared.get("mask") is mask \
                and not conv and shared.get("conv") is False:  # fmt: skip
            h, a, n = shared["stats"]
        else:
            rows = self._rows(x, mask)
            h, a, n = rows.T @ rows, rows.abs().sum(0), rows.shape[0]
            if shared is not None:
                shared.update(x=x, mask=mask, conv=conv, stats=(h, a, n))
        self.hessian = h.clone() if self.hessian is None else self.hessian.add_(h)
        self.act = a.clone() if self.act is None else self.act.add_(a)
        self.rows += n
        if self.floats is not None and self.cross_lost is None:
            self._add_cross(x, mask, rows, shared)

    def _rows(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The rows ``x`` gives the weight to multiply (padded tokens left out), float32."""
        rows = x.detach()
        if isinstance(self.module, (nn.Conv1d, nn.Conv2d)):
            return conv_columns(self.module, rows).float()
        if mask is not None and tuple(rows.shape[:-1]) == tuple(mask.shape):
            rows = rows[mask.to(rows.device)]
        return rows.reshape(-1, rows.shape[-1]).float()

    def _add_cross(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None,
                   shared: dict[str, Any] | None) -> None:  # fmt: skip
        """Pair this call's input ``x`` with the float model's (the next of ``floats``);
        ``shared`` keeps the last pair's ``X_float^T X`` (q/k/v read the same pair)."""
        assert self.floats is not None
        xf = self.floats.pop(0) if self.floats else None
        if xf is None or xf.shape != x.shape:
            self.cross_lost = "the float model did not call it alike"
            self.cross = None
            return
        linear = not isinstance(self.module, (nn.Conv1d, nn.Conv2d))
        last = shared.get("cross") if shared is not None and linear else None
        if last is not None and last[0] is x and last[1] is xf and last[2] is mask:
            c = last[3]
        else:
            rows = self._rows(x, mask) if rows is None else rows
            c = self._rows(xf.to(x.device), mask).T @ rows
            if shared is not None and linear:
                shared["cross"] = (x, xf, mask, c)
        self.cross = c.clone() if self.cross is None else self.cross.add_(c)


@dataclass
class Job:
    """What to do with the gathered inputs: the method, its options, where, and callbacks."""

    method: str
    options: dict[str, Any]
    device: torch.device | None
    assign: Callable[[Target, torch.Tensor, QParams | None], None]
    note: Callable[[str], None]
    sequential: bool = False
    float_target: bool = False
    #: what puts the model's float tensors back as they were (awq's folds), latest last
    undos: list[Callable[[], None]] = field(default_factory=list)


def conv_columns(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input patches of a Conv1d / Conv2d as rows ``(n, in_channels * kernel)``, in the
    order of the weight's ``rows x k`` view (what each output value is a dot product of).

    >>> conv = nn.Conv1d(2, 4, 3, padding=1)
    >>> conv_columns(conv, torch.randn(5, 2, 7)).shape
    torch.Size([35, 6])
    """
    assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
    one_d = isinstance(conv, nn.Conv1d)
    if x.dim() == (2 if one_d else 3):  # unbatched
        x = x.unsqueeze(0)
    if one_d:
        x = x.unsqueeze(-2)
    pair = (lambda v: (1, v[0])) if one_d else (lambda v: tuple(v))
    pad = (0, conv.padding[0]) if one_d else tuple(conv.padding)  # type: ignore[index]
    cols = torch.nn.functional.unfold(x, pair(conv.kernel_size), dilation=pair(conv.dilation),
                                      padding=pad, stride=pair(conv.stride))  # fmt: skip
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def token_mask(batch: Batch) -> torch.Tensor | None:
    """The real (not padded) tokens of ``batch``: its 2-D ``attention_mask`` keyword as
    booleans, or None when it has none or pads nothing.

    >>> token_mask(((), {"attention_mask": torch.tensor([[1, 1, 0]])})).tolist()
    [[True, True, False]]
    """
    mask = batch[1].get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    real = mask != 0
    return None if bool(real.all()) else real


class _Tokens:
    """The token mask of the batch being run (see :func:`token_mask`), for the hooks."""

    def __init__(self, data: list[Batch]) -> None:
        self.masks = [token_mask(b) for b in data]
        self.now: torch.Tensor | None = None
        self.muted = False

    def at(self, i: int) -> None:
        self.now = self.masks[i] if i < len(self.masks) else None




def find_blocks(model: nn.Module, paths: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ``nn.ModuleList`` whose children hold the most of ``paths`` (at least two)."""
    found = block_lists(model, paths)
    return found[0] if found else None


def block_lists(model: nn.Module, paths: list[str]) -> list[tuple[str, nn.ModuleList]]:
    """Every ``nn.ModuleList`` of which at least two children hold some of ``paths``, those
    holding the most first (a vision tower's layers and a text decoder's: the data may run
    only one)."""
    found: list[tuple[int, int, str, nn.ModuleList]] = []
    for i, (name, module) in enumerate(model.named_modules()):
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        prefix = f"{name}." if name else ""
        holders = {p[len(prefix) :].split(".")[0] for p in paths if p.startswith(prefix)}
        if len(holders) >= 2:
            found.append((-len(holders), i, name, module))
    return [(name, module) for _, _, name, module in sorted(found, key=lambda f: f[:2])]


class _Unreached(Exception):
    """No calibration batch reached the first block of a block list."""


class _Standin(nn.Module):
    """Takes a block's place: records its inputs and stops the model, or replays an output."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.__dict__["_block"] = block  # not a submodule: moving the model leaves it be
        self.mode = "stop"
        self.seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.replay: Any = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "replay":
            return self.replay
        self.seen.append((args, kwargs))
        if self.mode == "pass":  # the block's output as ``replay`` has it, its input first
            return out_with_first(self.replay, args[0])
        raise _Stop

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


@contextlib.contextmanager
def _standins(blocks: nn.ModuleList) -> Iterator[list[_Standin]]:
    original = list(blocks)
    stand = [_Standin(b) for b in original]
    for i, s in enumerate(stand):
        blocks[i] = s
    try:
        yield stand
    finally:
        for i, b in enumerate(original):
            blocks[i] = b


@contextlib.contextmanager
def _on(module: nn.Module, device: torch.device | None) -> Iterator[None]:
    """``module`` moved to ``device`` for the duration (back where it was after)."""
    home = next((p.device for p in module.parameters()), None)
    if device is None or home is None or home == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face models: no KV cache while calibrating (blocks are run several times),
    in the model's config and its sub-configs (a multimodal model's ``text_config``, which
    its language model reads)."""
    configs = {id(c): c for m in model.modules()
               for c in _configs(getattr(m, "config", None))}  # fmt: skip
    before = {k: c.use_cache for k, c in configs.items()
              if isinstance(getattr(c, "use_cache", None), bool)}  # fmt: skip
    for k in before:
        configs[k].use_cache = False
    try:
        yield
    finally:
        for k, value in before.items():
            configs[k].use_cache = value


def _configs(config: Any, depth: int = 0) -> list[Any]:
    """``config`` and the configs among its attributes (nested two deep at most)."""
    if config is None or not hasattr(config, "to_dict") or depth > 2:
        return []
    subs = [v for v in vars(config).values() if hasattr(v, "to_dict") and hasattr(v, "use_cache")]
    return [config, *(c for v in subs for c in _configs(v, depth + 1))]


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """PyTorch's fused transformer fast path skips submodule hooks (and a quantized model
    never takes it): turn it off so hooks see every Linear's input."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    return torch.utils._pytree.tree_map(
        lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value
    )


def _rejected(stage: str, i: int, err: Exception, what: str) -> CalibrationDataError:
    return CalibrationDataError(
        f"the model rejected calibration batch {i} while {stage} ({what}): "
        f"{type(err).__name__}: {err}"
    )


def attention_output(mha: nn.MultiheadAttention, args: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The input of ``mha.out_proj`` on the call ``mha(*args, **kwargs)``: the heads'
    outputs, concatenated (batch first). ``nn.MultiheadAttention`` multiplies them by
    ``out_proj.weight`` inside ``F.multi_head_attention_forward`` without calling
    ``out_proj``; they are its output with an identity projection (``x @ I + 0`` is exact),
    computed with the module's own settings and arguments (hooks not run).

    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
    >>> x = torch.randn(3, 5, 8)
    >>> y = attention_output(mha, (x, x, x), {})
    >>> torch.allclose(mha.out_proj(y), mha(x, x, x)[0], atol=1e-6)
    True
    """
    proj = mha.out_proj
    weight, bias = proj._parameters["weight"], proj._parameters.get("bias")
    assert weight is not None
    eye = torch.eye(mha.embed_dim, dtype=weight.dtype, device=weight.device)
    proj._parameters["weight"] = nn.Parameter(eye, requires_grad=False)
    if bias is not None:
        proj._parameters["bias"] = nn.Parameter(torch.zeros_like(eye[0]), requires_grad=False)
    try:
        out = mha.forward(*args, **kwargs)[0]
    finally:
        proj._parameters["weight"], proj._parameters["bias"] = weight, bias
    if not mha.batch_first and out.dim() == 3:  # (tokens, batch, E): as a token mask reads
        out = out.transpose(0, 1)
    return out


@contextlib.contextmanager
def _gathering(
    targets: list[Target], scope: nn.Module, tokens: _Tokens, prefix: str = "",
    first_stage_only: bool = False,
) -> Iterator[dict[int, Any]]:  # fmt: skip
    """Feed each target its inputs; yields ``{id(tensor): (path, module, tensor)}``: the
    first output of every module of ``scope`` (to find the op producing a Linear's input).
    ``first_stage_only``: only the targets reading the first input reached (on the first
    batch) gather; the others only note when they were reached (``seq``)."""
    produced: dict[int, Any] = {}
    recorded: set[str] = set()
    calls = iter(range(1 << 62))
    first: list[torch.Tensor] = []
    shared: dict[str, Any] = {}
    gathers: dict[int, bool] = {}

    def hook(t: Target) -> Callable[..., None]:
        wanted = ATTENTION_INPUTS.get(t.weight.attr, (0,))

        def fn(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            names = ("query", "key", "value")
            xs = [args[i] if i < len(args) else kwargs[names[i]] for i in wanted]
            take(xs)

        def after(module: nn.Module, args: Any, kwargs: dict[str, Any], out: Any) -> None:
            assert isinstance(module, nn.MultiheadAttention)
            take([attention_output(module, args, kwargs)])

        def take(xs: list[torch.Tensor]) -> None:
            if tokens.muted:  # the float model's pass (float_target)
                return
            if t.seq < 0:
                t.seq = next(calls)
                if not first:
                    first.append(xs[0])
                gathers[id(t)] = not first_stage_only or xs[0] is first[0]
            if gathers[id(t)]:
                t.add_inputs(xs, tokens.now, shared)

        return after if id(t.module) in owners else fn

    def record(path: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, kwargs: dict[str, Any], out: Any) -> None:
            if isinstance(module, _Standin):  # a block's recorded output, replayed
                return
            if path not in recorded and isinstance(out, torch.Tensor):
                recorded.add(path)
                # a norm's call kept: AWQ reads how its output depends on its weight
                call = (args, kwargs) if norm_weight(module) is not None else None
                produced.setdefault(id(out), (path, module, out, call, {}))
            x = args[0] if args else next(iter(kwargs.values()), None)
            entry = producer_of(produced, x) if isinstance(x, torch.Tensor) else None
            if entry is not None and entry[1] is not module:  # a reader of that output
                entry[4].setdefault(id(module), (path, module, args, kwargs))

        return fn

    # an attention's out_proj is read, not called: its input is taken after the attention ran
    owners = {id(m.out_proj): m for m in scope.modules() if isinstance(m, nn.MultiheadAttention)}
    handles = [
        owners[id(t.module)].register_forward_hook(hook(t), with_kwargs=True)
        if id(t.module) in owners
        else t.module.register_forward_pre_hook(hook(t), with_kwargs=True)
        for t in targets
    ]
    handles += [m.register_forward_hook(record(prefix + p), with_kwargs=True)
                for p, m in scope.named_modules()]  # fmt: skip
    try:
        yield produced
    finally:
        for h in handles:
            h.remove()
        shared.clear()


def _what(targets: list[Target], method: str) -> str:
    names = ", ".join(t.weight.name for t in targets[:4]) + (", ..." if len(targets) > 4 else "")
    codecs = ", ".join(sorted({t.codec.spec for t in targets if t.codec is not None}))
    return f"{method} for {codecs or 'plan'} of {names}" if targets else method


def _run_model(
    model: nn.Module, data: list[Batch], device: torch.device | None, stage: str, what: str,
    before: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    for i, (args, kwargs) in enumerate(data):
        if before is not None:
            before(i)
        try:
            model(*_to(args, device), **_to(kwargs, device))
        except _Stop:
            pass
        except Exception as err:
            raise _rejected(stage, i, err, what) from err


def _run_block(
    block: nn.Module, inputs: list[tuple[tuple[Any, ...], dict[str, Any]]], stage: str, what: str,
    before: Callable[[int], None] | None = None,
) -> list[Any]:  # fmt: skip
    outs = []
    for i, (args, kwargs) in enumerate(inputs):
        if before is not None:
            before(i)
        try:
            outs.append(block(*args, **kwargs))
        except Exception as err:
            raise _rejected(stage, i, err, what) from err
    return outs


def _chains(block0: nn.Module, inputs0: tuple[tuple[Any, ...], dict[str, Any]],
            seen1: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:  # fmt: skip
    """Whether block 1 was called with block 0's first output first (and as many
    arguments, with the same names)."""
    args0, kwargs0 = inputs0
    args1, kwargs1 = seen1
    if not args0 or not args1 or len(args0) != len(args1) or kwargs0.keys() != kwargs1.keys():
        return False
    out0 = first_tensor(block0(*args0, **kwargs0))
    if not isinstance(args1[0], torch.Tensor) or args1[0].shape != out0.shape:
        return False
    return torch.allclose(args1[0], out0, rtol=1e-4, atol=1e-5)


def _same_others(inputs0: tuple[tuple[Any, ...], dict[str, Any]],
                 seen1: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:  # fmt: skip
    """Whether two calls have equal arguments after the first."""
    args0, kwargs0 = inputs0
    args1, kwargs1 = seen1
    leaves0, spec0 = torch.utils._pytree.tree_flatten((args0[1:], kwargs0))
    leaves1, spec1 = torch.utils._pytree.tree_flatten((args1[1:], kwargs1))
    if spec0 != spec1:
        return False
    for a, b in zip(leaves0, leaves1):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape or not torch.equal(a, b):
                return False
        elif a is not b and (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or a != b):
            return False
    return True


def calibrate_with_data(
    model: nn.Module,
    targets: list[Target],
    data: list[Batch],
    job: Job,
    progress: bool,
) -> str:
    """Gather each target's inputs on ``data``, run ``job.method`` and ``job.assign`` the
    results; returns how the inputs were gathered (``"block by block (model.layers)"``)."""
    paths = [t.path for t in targets]
    mode = "all at once"
    device = job.device
    tokens = _Tokens(data)
    with torch.no_grad(), no_kv_cache(model), no_fastpath():
        for name, blocks in block_lists(model, paths):
            try:
                captured = _capture_first_block(model, blocks, data, device,
                                                _what(targets, job.method))  # fmt: skip
            except _Unreached:
                logger.info("the data does not run %s: its layers are not reached", name)
                continue
            if captured is not None:
                inputs, others = captured
                mode = f"block by block ({name}, {len(blocks)} blocks)"
                _sequential(model, name, blocks, targets, data, inputs, job, progress, tokens,
                            others)  # fmt: skip
                return mode
            break
        what = _what(targets, job.method)
        job.float_target = False  # every input comes from the float model already
        with _on(model, device):
            with _gathering(targets, model, tokens) as produced:
                _run_model(model, data, device, "running the model", what, tokens.at)

            def probe() -> torch.Tensor:
                args, kwargs = data[0]
                return _main_output(model(*_to(args, device), **_to(kwargs, device)))

            _solve(targets, job, progress, "all layers", produced, probe)
    return mode


def _main_output(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise CalibrationDataError(f"the model returned no tensor ({type(out).__name__})")
    return leaves[0]


#: per block (from block 1 on), per batch: the block's arguments other than its first input
Others = list[list[tuple[tuple[Any, ...], dict[str, Any]]]]


def _capture_first_block(
    model: nn.Module, blocks: nn.ModuleList, data: list[Batch], device: torch.device | None,
    what: str,
) -> tuple[list[tuple[tuple[Any, ...], dict[str, Any]]], Others | None] | None:  # fmt: skip
    """The inputs of ``blocks[0]`` for every batch, and the other arguments of each later
    block when they differ from block 0's (None when they do not: one set serves all); None
    when the blocks do not chain."""
    with _standins(blocks) as stand, _on(model, device):
        _run_model(model, data, device, "capturing the inputs of the first block", what)
        inputs = stand[0].seen
        if not inputs:
            raise _Unreached
        if len(inputs) != len(data):
            raise CalibrationDataError(
                f"the model did not reach its first block on {len(data) - len(inputs)} of "
                f"{len(data)} calibration batch(es)"
            )
        # does block 1 take block 0's output? run block 0 for real on the first batch
        stand[0].mode, stand[0].replay = "replay", None
        first_args, first_kwargs = inputs[0]
        with _on(stand[0]._block, device):
            stand[0].replay = stand[0]._block(*first_args, **first_kwargs)
            stand[1].seen.clear()
            _run_model(model, data[:1], device, "checking how the blocks chain", what)
            chains = bool(stand[1].seen) and _chains(stand[0]._block, inputs[0], stand[1].seen[0])
        if not chains:
            logger.info("blocks do not chain (block 1 is not fed block 0's output): all at once")
            return None
        if _same_others(inputs[0], stand[1].seen[0]):
            return inputs, None
        # blocks of different kinds (sliding / full attention, ...) take their own masks or
        # position embeddings: each block's, recorded with the blocks passing their input on
        checked = stand[1].seen[0]
        template = stand[0].replay
        for s in stand:
            s.mode, s.replay = "pass", template
            s.seen.clear()
        try:
            _run_model(model, data, device, "capturing the arguments of every block", what)
        except CalibrationDataError as err:
            logger.info("blocks take other arguments than block 0, not recorded (%s): all at "
                        "once", err)  # fmt: skip
            return None
        others = [[((None, *a[1:]), k) for a, k in s.seen] for s in stand[1:]]
        if any(len(o) != len(data) for o in others) or not _same_others(checked, stand[1].seen[0]):
            logger.info("blocks take arguments that depend on the blocks before: all at once")
            return None
    return inputs, others


def float_twin(module: nn.Module) -> nn.Module:
    """A copy of ``module`` and its submodules that shares their tensors: quantizing
    ``module`` (which puts new parameters in its modules) leaves the copy float, at no
    memory cost and whatever the tensors' types. Its dicts (parameters, buffers, hooks) are
    its own, so hooks registered on it do not reach ``module``.

    >>> lin = nn.Linear(2, 2)
    >>> twin = float_twin(lin)
    >>> lin._parameters["weight"] = nn.Parameter(torch.zeros(2, 2))
    >>> bool(twin.weight.abs().sum() > 0), twin.bias is lin.bias
    (True, True)
    """
    clones: dict[int, nn.Module] = {}

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in clones:
            return clones[id(m)]
        c = type(m).__new__(type(m))  # not copy.copy: a parametrized module refuses it
        c.__dict__.update(m.__dict__)
        clones[id(m)] = c
        for key, value in list(vars(c).items()):
            if isinstance(value, (dict, set)):
                object.__setattr__(c, key, copy.copy(value))
        c._modules = {k: None if v is None else clone(v) for k, v in m._modules.items()}
        return c

    return clone(module)


def _capture_floats(targets: list[Target], modules: dict[int, nn.Module],
                    run: Callable[[], Any]) -> None:  # fmt: skip
    """float_target: give each target (by id) the inputs its module of the float model,
    ``modules[id(target)]``, receives while ``run()`` runs the float model on one batch."""
    handles = []
    for t in targets:
        module = modules.get(id(t))
        if module is None or t.cross_lost is not None:
            continue
        t.floats = []

        def keep(m: nn.Module, args: Any, kwargs: dict[str, Any], t: Target = t) -> None:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and t.floats is not None:
                t.floats.append(x)  # no grad here; the very tensor, so q/k/v share it

        handles.append(module.register_forward_pre_hook(keep, with_kwargs=True))
    try:
        run()
    finally:
        for h in handles:
            h.remove()


def _feeding(
    tokens: _Tokens, pending: list[Target], twin: nn.Module | None,
    twin_of: dict[int, nn.Module], float_inputs: list[Any] | None, stage: str, what: str,
) -> Callable[[int], None]:  # fmt: skip
    """What to do before the quantized block runs batch ``b``: set the token mask and, for
    float_target, run the float block (``twin``) on the batch's float inputs first."""

    def before(b: int) -> None:
        tokens.at(b)
        if twin is not None and float_inputs is not None:
            a, k = float_inputs[b]
            _capture_floats(pending, twin_of, lambda: _run_block(twin, [(a, k)], stage, what))

    return before


def _sequential(
    model: nn.Module, name: str, blocks: nn.ModuleList, targets: list[Target],
    data: list[Batch], inputs: list[tuple[tuple[Any, ...], dict[str, Any]]], job: Job,
    progress: bool, tokens: _Tokens, others: Others | None = None,
) -> None:  # fmt: skip
    """Calibrate block after block (see the module docstring); ``others``: each later
    block's own arguments after the first, when they differ from block 0's."""
    method, device = job.method, job.device

    def own(i: int, batches: list[Any]) -> list[Any]:  # block i's arguments, its input first
        if others is None or i == 0:
            return batches
        return [(with_first(o[0], a[0]), o[1]) for (a, _), o in zip(batches, others[i - 1])]

    prefix = f"{name}." if name else ""
    in_block: dict[int, list[Target]] = {}
    rest = []
    for t in targets:
        head = t.path[len(prefix) :].split(".")[0] if t.path.startswith(prefix) else ""
        if head.isdigit() and int(head) < len(blocks):
            in_block.setdefault(int(head), []).append(t)
        else:
            rest.append(t)
    outs: list[Any] = []
    # float_target: the float model's stream of block inputs, run alongside
    float_inputs, float_outs = (inputs, outs) if job.float_target else (None, None)
    bar = progress_bar(range(len(blocks)), desc=f"{method} block by block", unit="block",
               disable=not progress)  # fmt: skip
    for i in bar:
        block = blocks[i]
        inputs = own(i, inputs)
        if float_inputs is not None:
            float_inputs = own(i, float_inputs)
        mine = in_block.get(i, [])
        what = _what(mine, method)
        with _on(block, device):
            twin = float_twin(block) if float_inputs is not None else None
            here = f"{prefix}{i}."
            twin_of = {} if twin is None else {
                id(t): twin.get_submodule(t.path[len(here) :]) for t in mine}  # fmt: skip
            pending = mine
            while pending:
                for t in pending:
                    t.reset()
                before = _feeding(tokens, pending, twin, twin_of, float_inputs,
                                  f"running block '{prefix}{i}' (float)", what)  # fmt: skip
                with _gathering(pending, block, tokens, here, job.sequential) as produced:
                    _run_block(block, inputs, f"running block '{prefix}{i}'", what, before)

                def probe(block: nn.Module = block, first: Any = inputs[0]) -> torch.Tensor:
                    return first_tensor(block(*first[0], **first[1]))

                # sequential: the targets that gathered (those reading the first input
                # reached) now; the others reached, next; those never reached: weight-only
                stage = [t for t in pending if t.hessian is not None or not job.sequential]
                _solve(stage, job, False, f"block {i}", produced, probe)
                pending = [t for t in pending if t.seq >= 0 and all(t is not u for u in stage)]
            outs = _run_block(block, inputs, f"running block '{prefix}{i}' quantized", what)
            inputs = [(with_first(a, first_tensor(o)), k) for (a, k), o in zip(inputs, outs)]
            if twin is not None and float_inputs is not None:
                float_outs = _run_block(twin, float_inputs, f"running block '{prefix}{i}' (float)",
                                        what)  # fmt: skip
                float_inputs = [(with_first(a, first_tensor(o)), k)
                                for (a, k), o in zip(float_inputs, float_outs)]  # fmt: skip
                del twin, twin_of
    if not rest:
        return
    what = _what(rest, method)
    with _standins(blocks) as stand, _on(model, device):
        for s in stand:
            s.mode = "replay"

        def replay(b: int) -> None:
            tokens.at(b)
            if float_outs is not None:  # float_target: the float model's inputs first
                for s in stand:
                    s.replay = float_outs[b]
                args, kwargs = data[b]
                tokens.muted = True
                try:
                    _capture_floats(rest, {id(t): t.module for t in rest},
                                    lambda: model(*_to(args, device), **_to(kwargs, device)))
                finally:
                    tokens.muted = False
            for s in stand:
                s.replay = outs[b]

        with _gathering(rest, model, tokens) as produced:
            _run_model(model, data, device, "running the layers outside the blocks", what,
                       replay)  # fmt: skip

        def probe() -> torch.Tensor:
            replay(0)
            args, kwargs = data[0]
            return _main_output(model(*_to(args, device), **_to(kwargs, device)))

        _solve(rest, job, progress, "outside the blocks", produced, probe)


def _solve(
    targets: list[Target], job: Job, progress: bool, where: str, produced: dict[int, Any],
    probe: Callable[[], torch.Tensor],
) -> None:  # fmt: skip
    reached = [t for t in targets if t.hessian is not None]  # the others: weight-only
    if job.method == "awq":
        awq_stage(reached, job, produced, probe)
        return
    desc = f"{job.method} ({where})"
    for t in progress_bar(reached, desc=desc, unit="layer", disable=not progress):
        w = t.weight.param.detach()
        dev = job.device or w.device
        assert t.hessian is not None
        assert t.codec is not None
        if job.float_target and t.cross is not None:
            w = float_target_weight(w.to(dev), t.hessian.to(dev), t.cross.to(dev),
                                    job.options.get("damp", 0.01))  # fmt: skip
        elif job.float_target:
            why = t.cross_lost or "no float-model inputs paired with it"
            job.note(f"{t.weight.name}: float_target not applied ({why}); plain gptq")
        if t.parts is None:
            new_w, params = gptq(w.to(dev), t.hessian.to(dev), t.codec, **job.options)
        else:  # each third of the rows on its own input's Hessian
            pieces = [gptq(rows.to(dev), part.hessian.to(dev), t.codec, **job.options)
                      for rows, part in zip(w.chunk(len(t.parts)), t.parts)]  # type: ignore[union-attr]  # fmt: skip
            new_w = torch.cat([p[0] for p in pieces])
            zeros = [p[1].zero for p in pieces]
            params = QParams(torch.cat([p[1].scale for p in pieces]),
                             None if zeros[0] is None else torch.cat(zeros))  # type: ignore[arg-type]  # fmt: skip
        t.hessian, t.parts, t.cross, t.floats = None, None, None, None
        job.assign(t, new_w.reshape(w.shape), params)


def not_applicable(w: Any, method: str = "gptq") -> str | None:
    """Why ``method`` cannot calibrate ``w`` (a ``t2n_quant.weights.Weight``), or None: it
    needs the one module reading the inputs: a Linear, a Conv1d / Conv2d with zero padding
    given as numbers and one group, or the q/k/v projections of an
    ``nn.MultiheadAttention`` (``gptq`` and ``awq`` alike)."""
    if len(w.users) > 1:
        return "shared by several modules"
    module = w.users[0][1]
    if w.attr != "weight" and not isinstance(module, nn.MultiheadAttention):
        return f"the {w.attr} of a {w.module_type}"
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.MultiheadAttention):
        return None if w.attr in ATTENTION_INPUTS else f"the {w.attr} of a {w.module_type}"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            return f"a grouped {w.module_type} (groups={module.groups})"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"a {w.module_type} with padding {module.padding!r} ({module.padding_mode})"
        return None
    return f"a {w.module_type}"


def input_hessians(model: nn.Module, weights: list[Any], data: list[Batch],
                   device: str | torch.device | None = None) -> dict[str, Target]:  # fmt: skip
    """``{weight name: Target}`` with the Hessian of each applicable weight's inputs on
    ``data``, in one pass of the (float) model; the others are left out."""
    targets = {w.name: Target(w, None, w.users[0][0], w.users[0][1])  # type: ignore[arg-type]
               for w in weights if not_applicable(w) is None}  # fmt: skip
    dev = torch.device(device) if device is not None else None
    tokens = _Tokens(data)
    found = list(targets.values())
    with torch.no_grad(), no_kv_cache(model), no_fastpath(), _on(model, dev):
        with _gathering(found, model, tokens):
            _run_model(model, data, dev, "gathering layer inputs", _what(found, "gptq"),
                       tokens.at)  # fmt: skip
    return {name: t for name, t in targets.items() if t.hessian is not None}


def quantize_with_data(
    model: nn.Module,
    todo: list[tuple[Any, Codec]],
    data: list[Batch],
    install: Callable[[Any, Codec, Any], None],
    summary: Any,
    *,
    method: str,
    options: dict[str, Any],
    device: str | torch.device | None,
    progress: bool,
    undos: list[Callable[[], None]] | None = None,
) -> list[tuple[Any, Codec]]:
    """Quantize the weights of ``todo`` that ``method`` applies to, with ``data``; returns
    the others, for weight-only calibration, each with a note in ``summary``. ``undos``
    receives what puts back the float tensors changed other than by ``install`` (awq's
    folds into norms), for the caller to run, latest first, should quantizing fail."""
    from t2n_quant.quantize import quantize_tensor

    dev = torch.device(device) if device is not None else None
    check_options(method, options)
    targets: list[Target] = []
    left: list[tuple[Any, Codec]] = []
    inner = options.get("inner", "minmax")
    for w, codec in todo:
        why = not_applicable(w, method)
        if why is None:
            path, module = w.users[0]
            targets.append(Target(w, codec, path, module))
            continue
        summary.notes.append(f"{w.name}: {method} does not apply ({why}); "
                             f"weight-only {inner!r} calibration")  # fmt: skip
        left.append((w, codec))
    done: set[int] = set()
    desc = f"{method} ({options.get('inner', 'minmax')} scales)"
    bar = progress_bar(total=len(targets), desc=desc, unit="layer", disable=not progress)

    def assign(t: Target, new_w: torch.Tensor, params: QParams | None) -> None:
        qt = quantize_tensor(new_w.float(), t.codec, calibration=inner, params=params,
                             name=t.weight.name)  # fmt: skip
        if qt.dtype != t.weight.param.dtype:
            qt = qt.with_inner(lambda x: x, dtype=t.weight.param.dtype)
        install(t.weight, t.codec, qt)
        done.add(id(t))
        bar.set_postfix_str(t.weight.name, refresh=False)
        bar.update(1)

    tune_steps = int(options.get("tune_steps", 0))
    refs = _float_outputs(model, data, dev) if tune_steps > 0 and targets else None
    if targets:
        sequential = bool(options.get("sequential", True)) and method == "gptq"
        float_target = bool(options.get("float_target", True)) and method == "gptq"
        solver = {k: v for k, v in options.items()
                  if (k != "inner" or method == "gptq")
                  and k not in ("sequential", "float_target", *TUNING)}  # fmt: skip
        job = Job(method, solver, dev, assign, summary.notes.append, sequential, float_target,
                  [] if undos is None else undos)  # fmt: skip
        if method == "awq":
            job.options["inner"] = inner
        with bar:
            mode = calibrate_with_data(model, targets, data, job, False)
        logger.info("%s: inputs gathered %s", method, mode)
        if float_target and not mode.startswith("block by block"):
            summary.notes.append(f"{method}: float_target has no effect when the inputs are "
                                 f"gathered {mode} (no quantized layer feeds another)")  # fmt: skip
        summary.notes.append(f"{method}: layer inputs gathered {mode} on {len(data)} batch(es)")
    if refs is not None:
        tuned = [t for t in targets if id(t) in done and isinstance(t.weight.param, QTensor)]
        summary.notes.append(_tune(model, tuned, data, refs, dev, tune_steps,
                                   float(options.get("tune_lr", 1e-3))))  # fmt: skip
    for t in targets:
        if id(t) not in done:
            summary.notes.append(f"{t.weight.name}: never reached by the calibration data; "
                                 f"weight-only {inner!r} calibration")  # fmt: skip
            left.append((t.weight, t.codec))
    return left


def _float_outputs(model: nn.Module, data: list[Batch],
                   device: torch.device | None) -> list[torch.Tensor]:  # fmt: skip
    """The float model's main output (logits) on each calibration batch, for scale tuning."""
    outs = []
    with torch.no_grad(), no_kv_cache(model), no_fastpath(), _on(model, device):
        for i, (args, kwargs) in enumerate(data):
            try:
                out = _main_output(model(*_to(args, device), **_to(kwargs, device)))
                outs.append(out.cpu())  # the logits of every batch: kept in host memory
            except Exception as err:
                raise _rejected("running the float model", i, err, "scale tuning") from err
    return outs


def _tune(model: nn.Module, targets: list[Target], data: list[Batch], refs: list[torch.Tensor],
          device: torch.device | None, steps: int, lr: float) -> str:  # fmt: skip
    """End-to-end scale tuning of the weights of ``targets``, installed; says what it did."""
    weights = [(f"{t.path}.{t.weight.attr}", t.module, t.weight.attr) for t in targets]
    batches = [(_to(a, device), _to(k, device)) for a, k in data]
    masks = [token_mask(b) for b in data]
    with no_kv_cache(model), no_fastpath(), _on(model, device):
        before, after, tuned = tune_scales(model, weights, batches, refs, masks, _main_output,
                                           steps=steps, lr=lr)  # fmt: skip
    if tuned is None:
        return (f"scale tuning: {steps} steps did not lower the output loss ({before:.4g}) on "
                f"the held-out calibration batches; scales kept")  # fmt: skip
    for t, qt in zip(targets, tuned):
        new = nn.Parameter(qt, requires_grad=False)
        for _, module in t.weight.users:
            module._parameters[t.weight.attr] = new
        t.weight.param = new
    return (f"scale tuning: {len(tuned)} weights' scales, {steps} steps: output loss on the "
            f"held-out calibration batches {before:.4g} -> {after:.4g}")

"""Repeated blocks: capture each distinct block once, write it once as an NNEF fragment.

A model that repeats a block (transformer layers, residual blocks, a stack of identical conv
blocks) is captured in two steps:

1. :func:`find_repeated` picks the outermost submodules whose structure occurs more than once
   (same class, same parameter/buffer names, shapes, dtypes and storage, same non-tensor
   attributes; integer attributes such as a layer index may differ, see step 3).
2. While ``torch.export`` traces the whole model, each call of such a module is replaced by
   one opaque op ``t2n::block(inputs, key)`` whose inputs are the call's tensors, the state
   it updates (e.g. its layer's KV cache, through a :class:`StateAdapter`) and the module's
   own parameters. Its output shapes come from running the module on fake tensors, which is
   cheap next to tracing and decomposing it.
3. Each distinct block is then captured alone, once (``torch.export`` of the module on
   example tensors of the traced shapes, dynamic where the trace was). Members whose integer
   attributes differ are verified: a second member is captured and its graph compared; if
   they differ, every distinct attribute set is captured on its own.

Translation (:mod:`t2n_core.ops.blocks`) turns each captured block into a fragment graph
(:attr:`t2n_core.ir.Graph.blocks`) whose parameters are the block's inputs, state and
weights, and each call into an invocation with that instance's variables.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import operator
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import sympy
import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.utils import _pytree as pytree

from t2n_core.errors import CaptureError
from t2n_core.input_plan import user_input_placeholders

logger = logging.getLogger(__name__)

_SIMPLE = (type(None), bool, int, float, str, torch.dtype, torch.device)


class BlockCaptureError(CaptureError):
    """A repeated block could not be captured on its own (the model is then captured flat)."""


class StateAdapter(Protocol):
    """Mutable state that a block reads and replaces (e.g. its layer of a KV cache).

    ``tensors`` gives the block's state before the call, by name; ``view`` builds the stand-in
    object the block receives instead of ``obj`` (holding ``tensors``); ``updated`` reads the
    state back from the view after the call (same names); ``write_back`` stores it in ``obj``.
    """

    def claims(self, obj: Any) -> bool: ...

    def tensors(self, obj: Any, module: nn.Module) -> dict[str, torch.Tensor]: ...

    def view(self, obj: Any, module: nn.Module, tensors: dict[str, torch.Tensor]) -> Any: ...

    def updated(self, view: Any) -> dict[str, torch.Tensor]: ...

    def write_back(self, obj: Any, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None: ...


_STATE_ADAPTERS: list[StateAdapter] = []


def register_state_adapter(adapter: StateAdapter) -> None:
    """Let blocks take ``adapter``'s state objects as arguments (see :class:`StateAdapter`)."""
    if all(type(a) is not type(adapter) for a in _STATE_ADAPTERS):
        _STATE_ADAPTERS.append(adapter)


def _adapter_for(obj: Any) -> StateAdapter | None:
    for adapter in _STATE_ADAPTERS:
        if adapter.claims(obj):
            return adapter
    return None


# ---- which modules are blocks ---------------------------------------------------------------


def _tensor_signature(tensor: Any) -> tuple[Any, ...]:
    codec = getattr(getattr(tensor, "codec", None), "spec", None)
    return (tuple(tensor.shape), str(tensor.dtype), type(tensor).__name__, codec)


def _attributes(module: nn.Module) -> dict[str, Any]:
    """Non-tensor attributes of simple types (what may change the traced graph)."""
    out: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, _SIMPLE) or (
            isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value)
        ):
            out[key] = value if not isinstance(value, list) else tuple(value)
    return out


def signature(module: nn.Module) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``(structure, integers)``: modules with equal structure are candidates for one block;
    ``integers`` are their int attributes (a layer index differs between otherwise equal
    layers), checked by comparing captured graphs."""
    structure: list[Any] = []
    integers: list[Any] = []
    for path, sub in module.named_modules(remove_duplicate=False):
        structure.append((path, type(sub).__qualname__, type(sub).__module__))
        for store in ("_parameters", "_buffers"):
            for key, tensor in getattr(sub, store).items():
                structure.append((path, key, None if tensor is None else _tensor_signature(tensor)))
        for key, value in sorted(_attributes(sub).items()):
            if type(value) is int:
                integers.append((path, key, value))
            else:
                structure.append((path, key, repr(value)))
    return tuple(structure), tuple(integers)


def find_repeated(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost submodules (by path) whose structure occurs at least twice in ``model``.

    Leaf modules (no children) and containers without ``forward`` are not blocks.
    """
    groups: dict[Any, list[str]] = defaultdict(list)
    modules = dict(model.named_modules())
    for path, module in modules.items():
        if not path or not any(True for _ in module.children()):
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            continue
        groups[signature(module)[0]].append(path)
    repeated = {p for paths in groups.values() if len(paths) > 1 for p in paths}
    chosen: dict[str, nn.Module] = {}
    for path in sorted(repeated, key=lambda p: p.count(".")):
        parts = path.split(".")
        if any(".".join(parts[:i]) in chosen for i in range(1, len(parts))):
            continue
        chosen[path] = modules[path]
    return dict(sorted(chosen.items()))


# ---- one call of a block while the whole model is traced ------------------------------------


@dataclass
class _Slot:
    """Where a state object sat in a block's arguments."""

    index: int


@dataclass
class Site:
    """One call of a block module, recorded while the whole model was traced."""

    key: str
    path: str
    module: nn.Module
    forward: Callable[..., Any]  # the module's own forward
    in_spec: pytree.TreeSpec
    leaves: list[Any]  # constants, with None where a tensor or a state slot goes
    tensor_at: list[int]  # leaf positions of the tensor inputs
    input_names: list[str]
    states: list[tuple[Any, StateAdapter, list[str]]]  # (object, adapter, state tensor names)
    state_at: list[int]
    param_names: list[str]  # the module's parameters and buffers, relative names
    structure: tuple[Any, ...] = ()  # signature(module)[0]
    examples: list[torch.Tensor] = field(default_factory=list)  # fake tensors of the trace
    out_spec: pytree.TreeSpec | None = None
    out_leaves: list[Any] = field(default_factory=list)
    values_in: list[Any] = field(default_factory=list)  # the leaves of this call
    param_values: dict[str, torch.Tensor] = field(default_factory=dict)
    fake_cache: bool = True  # whether the fake-tensor cache was on where the call was traced

    @property
    def n_user(self) -> int:
        return len(self.tensor_at) + sum(len(names) for _, _, names in self.states)

    def const_key(self) -> str:
        leaves = [repr(v) for i, v in enumerate(self.leaves) if i not in self.tensor_at]
        return f"{self.in_spec}|{leaves}"

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The module's forward on ``inputs`` (tensors, state tensors, parameters)."""
        leaves = list(self.leaves)
        it = iter(inputs)
        for pos in self.tensor_at:
            leaves[pos] = _complex_again(next(it), self.values_in[pos])
        views = []
        for (obj, adapter, names), pos in zip(self.states, self.state_at):
            view = adapter.view(obj, self.module, {n: next(it) for n in names})
            leaves[pos] = view
            views.append(view)
        params = dict(zip(self.param_names, it))
        args, kwargs = pytree.tree_unflatten(leaves, self.in_spec)
        with torch.nn.utils.stateless._reparametrize_module(self.module, params):
            out = self.forward(*args, **kwargs)
        out_leaves, out_spec = pytree.tree_flatten(out)
        self.out_spec = out_spec
        self.out_leaves = [None if isinstance(v, torch.Tensor) else v for v in out_leaves]
        result = [v for v in out_leaves if isinstance(v, torch.Tensor)]
        for view, (_, adapter, names) in zip(views, self.states):
            new = adapter.updated(view)
            result += [new[n] for n in names]
        return [t.clone() for t in result]

    def finish(self, outputs: list[torch.Tensor]) -> Any:
        assert self.out_spec is not None
        it = iter(outputs)
        leaves = [next(it) if v is None else v for v in self.out_leaves]
        for obj, adapter, names in self.states:
            adapter.write_back(obj, self.module, {n: next(it) for n in names})
        return pytree.tree_unflatten(leaves, self.out_spec)


@torch.library.custom_op("t2n::block", mutates_args=())
def block_op(inputs: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    """One call of a repeated block (see :mod:`t2n_core.blocks`)."""
    return _ACTIVE[key].run(inputs)


@block_op.register_fake
def _block_fake(inputs: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    """Output shapes: from running the block on fake tensors once per distinct block; its later
    calls apply that call's shape rule (its output sizes as expressions of its input sizes)."""
    site = _ACTIVE[key]
    mode = torch._guards.detect_fake_mode(inputs)
    memo_key = (id(mode), site.structure, site.const_key(), _dtypes_and_ranks(inputs))
    rule = _MEMO.get(memo_key)
    if rule is not None:
        outputs = rule.apply(inputs[: site.n_user], mode)
        if outputs is not None:
            site.out_spec, site.out_leaves = rule.out_spec, rule.out_leaves
            return outputs
    with _fake_cache(mode, site.fake_cache):
        outputs = site.run(inputs)
    if memo_key not in _MEMO:  # None: no rule, every call runs the block
        _MEMO[memo_key] = _ShapeRule.of(site, inputs[: site.n_user], outputs)
    return outputs


def _real_view(tensor: torch.Tensor) -> torch.Tensor:
    """A complex block argument (Llama 4's rotary ``freqs_cis``) crosses the ``t2n::block``
    call as its real view ``[..., 2]`` (NNEF has no complex tensors); the block's capture
    takes it back with :func:`_complex_again`."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _complex_again(tensor: torch.Tensor, original: Any) -> torch.Tensor:
    if isinstance(original, torch.Tensor) and original.is_complex() and not tensor.is_complex():
        return torch.view_as_complex(tensor)
    return tensor


def _dtypes_and_ranks(tensors: list[torch.Tensor]) -> tuple[Any, ...]:
    return tuple((t.dtype, t.dim()) for t in tensors)


def _expr(size: Any) -> Any:
    if isinstance(size, torch.SymInt):
        node = size.node
        return node.shape_env.replace(node.expr)
    return sympy.Integer(int(size))


Sizes = list[tuple[Any, ...]]  # the sizes of a call's inputs
_Size = Callable[[Sizes], Any]  # one size, computed from them


@dataclass
class _ShapeRule:
    """A block call's output sizes as functions of its input sizes, read from the first call.

    Each size symbol of the first call's inputs stands for this call's size at the place where
    it first occurs. The other input sizes (a symbol seen again, an expression, a constant)
    must equal what the rule gives for them here: identical sizes need nothing, a constant that
    differs means the rule does not apply, other sizes are checked equal (``torch._check``, the
    guard the block's own ops would have recorded). Built once per distinct block; applying it
    is plain size arithmetic, no sympy.
    """

    out_spec: pytree.TreeSpec | None
    out_leaves: list[Any]
    checks: list[tuple[int, int, _Size]]  # (input, axis, size it must have)
    outputs: list[tuple[list[_Size], torch.dtype]]

    @classmethod
    def of(
        cls, site: Site, inputs: list[torch.Tensor], outputs: list[torch.Tensor]
    ) -> _ShapeRule | None:
        sources: dict[sympy.Symbol, tuple[int, int]] = {}
        later: list[tuple[int, int, Any]] = []
        for i, tensor in enumerate(inputs):
            for axis, size in enumerate(tensor.shape):
                expr = _expr(size)
                if isinstance(expr, sympy.Symbol) and expr not in sources:
                    sources[expr] = (i, axis)
                else:
                    later.append((i, axis, expr))
        try:
            checks = [(i, axis, _compile(expr, sources)) for i, axis, expr in later]
            shapes = [([_compile(_expr(d), sources) for d in o.shape], o.dtype) for o in outputs]
        except _NoRule as exc:
            logger.debug("block %s: no shape rule (%s): each call runs it", site.path, exc)
            return None
        return cls(site.out_spec, site.out_leaves, checks, shapes)

    def apply(self, inputs: list[torch.Tensor], mode: Any) -> list[torch.Tensor] | None:
        """Outputs for ``inputs`` (fake tensors), or None when the rule does not apply."""
        sizes = [tuple(t.shape) for t in inputs]
        try:
            for i, axis, size in self.checks:
                want, have = size(sizes), sizes[i][axis]
                if isinstance(want, int) and isinstance(have, int):
                    if want != have:
                        return None
                elif not _same_size(want, have):
                    torch._check(want == have)
            # fresh sizes: a fake-tensor cache entry would only be missed (and cost more)
            with _fake_cache(mode, False):
                return [
                    torch.empty(tuple(size(sizes) for size in shape), dtype=dtype)
                    for shape, dtype in self.outputs
                ]
        except RuntimeError as exc:
            logger.debug("block shape rule not applied: %s", exc)
            return None


@contextlib.contextmanager
def _fake_cache(mode: Any, enabled: bool) -> Iterator[None]:
    """The fake-tensor dispatch cache of ``mode`` (a FakeTensorMode or None) on or off."""
    if mode is None:
        yield
        return
    before, mode.cache_enabled = mode.cache_enabled, enabled
    try:
        yield
    finally:
        mode.cache_enabled = before


def _same_size(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt)):
        return False
    if a.node is b.node or a.node._expr == b.node._expr:
        return True
    return _expr(a) == _expr(b)


class _NoRule(Exception):
    pass


def _compile(expr: Any, sources: dict[sympy.Symbol, tuple[int, int]]) -> _Size:
    """``expr`` (sympy, over the first call's input symbols) as a function of the input sizes."""
    if isinstance(expr, sympy.Integer):
        value = int(expr)
        return lambda sizes: value
    if isinstance(expr, sympy.Symbol):
        if expr not in sources:
            raise _NoRule(str(expr))
        i, axis = sources[expr]
        return lambda sizes: sizes[i][axis]
    args = [_compile(a, sources) for a in expr.args]
    if isinstance(expr, (sympy.Add, sympy.Mul)):
        combine = operator.add if isinstance(expr, sympy.Add) else operator.mul
        return lambda sizes: functools.reduce(combine, (a(sizes) for a in args))
    name = type(expr).__name__
    binary = {"FloorDiv": operator.floordiv, "Mod": operator.mod, "PythonMod": operator.mod}
    if name in binary and len(args) == 2:
        fn, (a, b) = binary[name], args
        return lambda sizes: fn(a(sizes), b(sizes))
    raise _NoRule(name)


_ACTIVE: dict[str, Site] = {}
_MEMO: dict[Any, Any] = {}


@contextlib.contextmanager
def _lean_tensor_meta() -> Iterator[None]:
    """Node metadata without the memory format of tensors with symbolic sizes.

    For each traced tensor, torch records ``meta["tensor_meta"]`` and its memory format, which
    it proves with sympy: for a tensor whose sizes are fresh symbols (every KV-cache input of a
    model has its own until the trace ends) that costs tens of milliseconds, per layer the
    largest part of tracing a model whose blocks are calls. t2n reads ``meta["val"]`` only; the
    format of a symbolic tensor is left unset (torch itself leaves it unset when it cannot
    prove one), that of a static tensor kept.
    """
    from torch.fx.experimental import proxy_tensor

    original = getattr(proxy_tensor, "_extract_tensor_metadata", None)
    if original is None:
        yield
        return

    def lean(result: torch.Tensor, include_contiguity: bool = True) -> Any:
        symbolic = any(isinstance(d, torch.SymInt) for d in result.shape)
        return original(result, include_contiguity=include_contiguity and not symbolic)

    proxy_tensor._extract_tensor_metadata = lean
    try:
        yield
    finally:
        proxy_tensor._extract_tensor_metadata = original


def _is_leaf(value: Any) -> bool:
    """Only plain containers are looked into: another object (a cache...) that pytree knows
    how to flatten could be mutated by the block, which a rebuilt copy would not show."""
    if type(value) in (tuple, list, dict):
        return False
    return not (isinstance(value, tuple) and hasattr(value, "_fields"))


def _leaf_name(path: tuple[Any, ...], params: list[str]) -> str:
    parts: list[str] = []
    for i, entry in enumerate(path):
        key = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry)))
        if i == 0:
            continue  # (args, kwargs)
        if i == 1 and path[0] == pytree.SequenceKey(0) and isinstance(key, int):
            key = params[key] if key < len(params) else f"input_{key}"
        parts.append(str(key))
    from t2n_core.ir import sanitize

    return sanitize("_".join(parts) or "input")


def _positional_names(forward: Callable[..., Any]) -> list[str]:
    try:
        return [
            p.name
            for p in inspect.signature(forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return []


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(name if n == 0 else f"{name}_{n}")
    return out


class Blocks:
    """The repeated blocks of one model: their calls while tracing, and their captures."""

    def __init__(self, model: nn.Module, chosen: dict[str, nn.Module]):
        self.model = model
        self.chosen = chosen
        self.structure = {path: signature(m) for path, m in chosen.items()}
        self.sites: dict[str, Site] = {}
        self.programs: dict[str, Capture] = {}  # site key -> its block's capture
        self.originals: dict[str, Any] = {}  # state-dict name -> tensor as stored (QTensor...)
        self._counter = itertools.count()

    @classmethod
    def find(cls, model: nn.Module) -> Blocks | None:
        chosen = find_repeated(model)
        return cls(model, chosen) if chosen else None

    @contextlib.contextmanager
    def intercept(self) -> Iterator[None]:
        """Replace each block's forward by a ``t2n::block`` call while the model is traced."""
        patched = []
        for path, module in self.chosen.items():
            if "forward" in vars(module):
                continue  # the instance's forward is already replaced: leave it alone
            original = module.forward
            module.forward = self._patched(path, module, original)
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make the recorded calls resolvable by the ``t2n::block`` op (trace, decompositions),
        with lean node metadata (:func:`_lean_tensor_meta`)."""
        _ACTIVE.update(self.sites)
        _MEMO.clear()
        try:
            with _lean_tensor_meta():
                yield
        finally:
            _MEMO.clear()
            for key in self.sites:
                _ACTIVE.pop(key, None)

    def _patched(self, path: str, module: nn.Module, original: Callable[..., Any]):
        def forward(*args: Any, **kwargs: Any) -> Any:
            site = self._site(path, module, original, args, kwargs)
            if site is None:
                return original(*args, **kwargs)
            inputs = [_real_view(site.values_in[i]) for i in site.tensor_at]
            for obj, adapter, names in site.states:
                state = adapter.tensors(obj, module)
                inputs += [state[n] for n in names]
            inputs += [site.param_values[n] for n in site.param_names]
            site.examples = list(inputs)
            _ACTIVE[site.key] = site
            mode = torch._guards.detect_fake_mode(inputs)
            site.fake_cache = mode is None or mode.cache_enabled
            # a custom op's outputs never enter the fake-tensor cache: skip hashing its inputs
            with _fake_cache(mode, False):
                outputs = block_op(inputs, site.key)
            return site.finish(outputs)

        return forward

    def _site(self, path, module, original, args, kwargs) -> Site | None:
        states: list[tuple[Any, StateAdapter, list[str]]] = []

        def claim(value: Any) -> Any:
            adapter = None if isinstance(value, (torch.Tensor, *_SIMPLE)) else _adapter_for(value)
            if adapter is None:
                return value
            names = sorted(adapter.tensors(value, module))
            states.append((value, adapter, names))
            return _Slot(len(states) - 1)

        args2 = tuple(claim(a) for a in args)
        kwargs2 = {k: claim(v) for k, v in kwargs.items()}
        with_paths, spec = pytree.tree_flatten_with_path((args2, kwargs2), is_leaf=_is_leaf)
        params = _positional_names(original)
        leaves: list[Any] = []
        tensor_at: list[int] = []
        state_at = [0] * len(states)
        names: list[str] = []
        for i, (kpath, value) in enumerate(with_paths):
            if isinstance(value, torch.Tensor):
                tensor_at.append(i)
                names.append(_leaf_name(kpath, params))
                leaves.append(None)
            elif isinstance(value, _Slot):
                state_at[value.index] = i
                leaves.append(None)
            elif isinstance(value, _SIMPLE) and not isinstance(value, (torch.SymInt,)):
                leaves.append(value)
            else:
                logger.debug("block %s: argument %r kept inline", path, type(value).__name__)
                return None
        state_names: list[str] = []
        for (_, _, snames), pos in zip(states, state_at):
            base = _leaf_name(with_paths[pos][0], params)
            state_names += [f"{base}_{n}" for n in snames]
        param_values = dict(module.named_parameters(remove_duplicate=False))
        param_values.update(dict(module.named_buffers(remove_duplicate=False)))
        param_values = {k: v for k, v in param_values.items() if v is not None}
        site = Site(
            key=f"{path}#{next(self._counter)}",
            path=path,
            module=module,
            forward=original,
            in_spec=spec,
            leaves=leaves,
            tensor_at=tensor_at,
            input_names=_unique(names + state_names),
            states=states,
            state_at=state_at,
            param_names=list(param_values),
            structure=self.structure[path][0],
            values_in=[v for _, v in with_paths],
            param_values=param_values,
        )
        self.sites[site.key] = site
        return site

    # ---- capturing each distinct block once ---------------------------------------------

    def capture_all(self, export: Callable[..., ExportedProgram], progress: Any = None) -> None:
        """Capture every distinct block once (see the module docstring); ``progress``: a
        tqdm bar advanced once per distinct block."""
        groups: dict[Any, list[Site]] = defaultdict(list)
        for site in self.sites.values():
            groups[(site.structure, site.const_key(), _example_key(site))].append(site)
        if progress is not None:
            progress.total += len(groups)
        for sites in groups.values():
            if progress is not None:
                progress.set_postfix_str(f"block {type(sites[0].module).__name__}", refresh=False)
            self._capture_group(sites, export)
            if progress is not None:
                progress.update(1)

    def _capture_group(self, sites: list[Site], export: Callable[..., ExportedProgram]) -> None:
        """One capture for ``sites`` (equal structure, constants and input shapes). Integer
        attributes that differ (a layer index) are tested: the traced graphs of two members
        are compared; if they differ, each distinct set of integers gets its own capture."""
        ints = {site.key: self.structure[site.path][1] for site in sites}
        first = sites[0]
        traced = {ints[first.key]: _trace_site(first, export)}
        other = next((s for s in sites if ints[s.key] != ints[first.key]), None)
        if other is not None:
            second = _trace_site(other, export)
            if second.graph_module.code == traced[ints[first.key]].graph_module.code:
                traced = {i: traced[ints[first.key]] for i in ints.values()}
            else:
                traced[ints[other.key]] = second
                logger.info(
                    "block %s: its instances differ by integer attributes that change the "
                    "graph; capturing each distinct one",
                    type(first.module).__name__,
                )
        captures: dict[int, Capture] = {}
        for site in sites:
            program = traced.get(ints[site.key])
            if program is None:
                program = traced[ints[site.key]] = _trace_site(site, export)
            if id(program) not in captures:
                captures[id(program)] = _decompose(site, program)
            self.programs[site.key] = captures[id(program)]
        logger.debug("block %s: %d calls, %d capture(s)", first.path, len(sites), len(captures))


def _example_key(site: Site) -> tuple[Any, ...]:
    return tuple(
        (tuple(_hint(d) for d in t.shape), tuple(_is_symbolic(d) for d in t.shape), t.dtype)
        for t in site.examples[: site.n_user]
    )


def _hint(size: Any) -> int:
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        if hint is None:
            raise BlockCaptureError(f"size {size} has no example value")
        return int(hint)
    return int(size)


def _is_symbolic(size: Any) -> bool:
    return isinstance(size, torch.SymInt) and not size.node.expr.is_number


@dataclass
class Capture:
    """One block captured alone: its program and the site it was captured from."""

    program: ExportedProgram
    site: Site


class _BlockCall(nn.Module):
    """``forward(tensors) -> tensors``: one call of a block with its constants filled in."""

    def __init__(self, site: Site):
        super().__init__()
        self.add_module("_", site.module)  # "_" keeps the block's own names in the graph
        self.site = site

    def forward(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        site = self.site
        leaves = list(site.leaves)
        it = iter(tensors)
        for pos in site.tensor_at:
            leaves[pos] = _complex_again(next(it), site.values_in[pos])
        views = []
        for (obj, adapter, names), pos in zip(site.states, site.state_at):
            view = adapter.view(obj, site.module, {n: next(it) for n in names})
            leaves[pos] = view
            views.append(view)
        args, kwargs = pytree.tree_unflatten(leaves, site.in_spec)
        out = site.forward(*args, **kwargs)
        result = [v for v in pytree.tree_leaves(out) if isinstance(v, torch.Tensor)]
        for view, (_, adapter, names) in zip(views, site.states):
            new = adapter.updated(view)
            result += [new[n] for n in names]
        return result


def _example(fake: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shape = tuple(_hint(d) for d in fake.shape)
    if fake.dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(fake.dtype)
    return torch.zeros(shape, dtype=fake.dtype)


def _trace_site(site: Site, export: Callable[..., ExportedProgram]) -> ExportedProgram:
    gen = torch.Generator().manual_seed(0)
    fakes = site.examples[: site.n_user]
    examples = [_example(f, gen) for f in fakes]
    specs = [
        {axis: Dim.DYNAMIC for axis, d in enumerate(f.shape) if _is_symbolic(d)} or None
        for f in fakes
    ]
    dynamic = ([s for s in specs],) if any(specs) else None
    try:
        program = export(_BlockCall(site), (examples,), dynamic)
    except Exception as exc:  # torch raises many types
        raise BlockCaptureError(
            f"block {site.path} ({type(site.module).__name__}) could not be captured alone: {exc}"
        ) from exc
    _check_program(site, program, fakes)
    return program


def _decompose(site: Site, program: ExportedProgram) -> Capture:
    from t2n_core.decompose import decompose

    try:
        program = decompose(program)
    except Exception as exc:  # torch raises many types
        raise BlockCaptureError(
            f"block {site.path} ({type(site.module).__name__}) could not be decomposed: {exc}"
        ) from exc
    return Capture(program, site)


def _check_program(site: Site, program: ExportedProgram, fakes: list[torch.Tensor]) -> None:
    kinds = {s.kind.name for s in program.graph_signature.output_specs}
    if kinds - {"USER_OUTPUT"}:
        raise BlockCaptureError(
            f"block {site.path} mutates its inputs or buffers ({sorted(kinds)}); captured flat"
        )
    placeholders = user_input_placeholders(program)
    mapping: dict[Any, str] = {}
    for node, fake in zip(placeholders, fakes):
        meta = node.meta["val"]
        for axis, (ours, theirs) in enumerate(zip(meta.shape, fake.shape)):
            if _is_symbolic(theirs) and not _is_symbolic(ours):
                raise BlockCaptureError(
                    f"block {site.path}: input {node.name} axis {axis} is dynamic in the model "
                    f"but the block alone specialised it to {ours}"
                )
            if _is_symbolic(ours):
                expr = ours.node.expr
                outer = str(theirs.node.expr)
                if expr.is_Symbol and mapping.setdefault(expr, outer) != outer:
                    raise BlockCaptureError(
                        f"block {site.path}: size {expr} stands for both {mapping[expr]} and "
                        f"{outer} in the model"
                    )

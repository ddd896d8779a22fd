"""Decompose a captured program to the ops we translate, in one pass when that is safe.

``ExportedProgram.run_decompositions`` retraces the whole program through AOTAutograd:
functionalization, a metadata pass and a tracing pass, about as long as the capture itself.
A program without mutations, higher-order ops or tensor subclasses needs no functionalization:
one ``make_fx`` pass over it with the same decomposition table (and the same composite ops kept
whole) gives the same graph, about twice as fast. That pass uses torch internals; any program
it does not cover, and any failure inside it, goes through ``run_decompositions``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import (
    ExportGraphSignature,
    OutputKind,
    OutputSpec,
    TensorArgument,
)

from t2n_core.decompositions import decomposition_table, split_decomposition_table

logger = logging.getLogger(__name__)


def decompose(program: ExportedProgram) -> ExportedProgram:
    """``program`` decomposed with :func:`decomposition_table` (see the module docstring)."""
    reason = _not_one_pass(program)
    if reason is None:
        try:
            return _one_pass(program)
        except Exception as exc:  # torch raises many types; the public path decides
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    logger.debug("decomposing through run_decompositions: %s", reason)
    return program.run_decompositions(decomposition_table())


def _not_one_pass(program: ExportedProgram) -> str | None:
    """Why ``program`` needs ``run_decompositions`` (None if one pass gives the same)."""
    if any(s.kind != OutputKind.USER_OUTPUT for s in program.graph_signature.output_specs):
        return "it mutates inputs or buffers"
    for node in program.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            return f"{node.op} node {node.name}"
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and type(val) is not torch._subclasses.FakeTensor:
                return f"input {node.name} is a {type(val).__name__}"
            if val is not None and not isinstance(val, (torch.Tensor, torch.SymInt, int, float)):
                return f"input {node.name} is a {type(val).__name__}"
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.HigherOrderOperator):
            return f"higher-order op {target.name()}"
        if isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable:
            return f"mutating op {target}"
    return None


def _one_pass(program: ExportedProgram) -> ExportedProgram:
    from torch._dispatch.python import enable_python_dispatcher
    from torch._guards import detect_fake_mode
    from torch.export.exported_program import _override_composite_implicit_decomp
    from torch.fx.experimental.proxy_tensor import make_fx

    keep_whole, table = split_decomposition_table()
    old = program.graph_module
    placeholders = [n for n in old.graph.nodes if n.op == "placeholder"]
    values = [n.meta["val"] for n in placeholders]
    fake_mode = detect_fake_mode(values)
    if fake_mode is None:
        raise RuntimeError("no fake tensor mode on the program's inputs")

    def run(*args: Any) -> Any:
        with torch.fx.traceback.preserve_node_meta():
            return _Replay(old).run(*args)

    with (
        fake_mode,
        _override_composite_implicit_decomp(keep_whole),
        enable_python_dispatcher(),
        torch.no_grad(),
    ):
        new = make_fx(run, decomposition_table=table, pre_dispatch=False)(*values)

    graph = new.graph
    if any(n.op == "get_attr" for n in graph.nodes):
        raise RuntimeError("a decomposition created a constant")
    others = {n.name for n in graph.nodes if n.op != "placeholder"}
    for node, before in zip((n for n in graph.nodes if n.op == "placeholder"), placeholders):
        if before.name in others:
            raise RuntimeError(f"input name {before.name} is taken in the decomposed graph")
        node.name = node.target = before.name  # as torch's own placeholder naming pass does
        node.meta.update({k: v for k, v in before.meta.items() if k not in ("val", "tensor_meta")})
    graph.eliminate_dead_code()
    output = next(n for n in graph.nodes if n.op == "output")
    output.meta.update(next(n for n in old.graph.nodes if n.op == "output").meta)
    signature = program.graph_signature
    outputs = []
    for spec, arg in zip(signature.output_specs, output.args[0]):
        if isinstance(spec.arg, TensorArgument):
            if not isinstance(arg, torch.fx.Node):
                raise RuntimeError(f"output {spec.arg.name} is no longer a tensor")
            spec = OutputSpec(kind=spec.kind, arg=TensorArgument(name=arg.name), target=spec.target)
        outputs.append(spec)
    new.recompile()
    new.meta.update(old.meta)
    return ExportedProgram(
        root=new,
        graph=graph,
        graph_signature=ExportGraphSignature(list(signature.input_specs), outputs),
        state_dict=program.state_dict,
        range_constraints=program.range_constraints,
        module_call_graph=program.module_call_graph,
        example_inputs=program.example_inputs,
        constants=program.constants,
    )


class _Replay(torch.fx.Interpreter):
    """Replays the program; a ``t2n::block`` call whose inputs have the recorded shapes is copied
    with its recorded outputs instead of being run again through fake tensors (a block is opaque
    to decompositions, and its outputs' sizes are expressions of the same shape environment)."""

    def run_node(self, node: torch.fx.Node) -> Any:
        if node.op == "call_function" and node.target is _block_op():
            with self._set_current_node(node):
                args, kwargs = self.fetch_args_kwargs_from_env(node)
                copied = _copy_block(node, args, kwargs)
            if copied is not None:
                return copied
        return super().run_node(node)


def _block_op() -> Any:
    return torch.ops.t2n.block.default


def _copy_block(node: torch.fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``node``'s recorded outputs, traced as one call of it; None when that is not sound."""
    from torch.fx.experimental.proxy_tensor import (
        disable_proxy_modes_tracing,
        get_proxy_mode,
        get_proxy_slot,
        track_tensor_tree,
    )

    mode = get_proxy_mode()
    recorded = node.meta.get("val")
    if mode is None or kwargs or len(args) != 2 or not isinstance(recorded, (list, tuple)):
        return None
    inputs, key = args
    before = [a.meta.get("val") if isinstance(a, torch.fx.Node) else None for a in node.args[0]]
    if len(before) != len(inputs):
        return None
    for new, old in zip(inputs, before):
        if not (isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor)):
            return None
        if new.dtype != old.dtype or new.device != old.device or not _same_sizes(new, old):
            return None
    tracer = mode.tracer
    proxies = [get_proxy_slot(t, tracer, None) for t in inputs]
    if any(p is None or p.constant is not None for p in proxies):
        return None
    target = _block_op()
    proxy = tracer.create_proxy(
        "call_function",
        target,
        ([p.proxy for p in proxies], key),
        {},
        name=tracer.graph._target_to_str(target.overloadpacket.__name__),
    )
    outputs = list(recorded)
    with disable_proxy_modes_tracing():
        for output in outputs:
            # tracking reads each output's element count: computed here, its size products
            # are not traced into the graph (each a node, later dropped as dead code)
            output.numel()
    track_tensor_tree(outputs, proxy, constant=None, tracer=tracer)
    return outputs


def _same_sizes(new: torch.Tensor, old: torch.Tensor) -> bool:
    if new.dim() != old.dim():
        return False
    for a, b in zip(new.shape, old.shape):
        if isinstance(a, torch.SymInt) != isinstance(b, torch.SymInt):
            return False
        if isinstance(a, torch.SymInt):
            env = a.node.shape_env
            if env is not b.node.shape_env or env.replace(a.node.expr) != env.replace(b.node.expr):
                return False
        elif a != b:
            return False
    return True

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

from t2n_core.decompositions import decomposition_table

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
    from torch.export.exported_program import (
        _override_composite_implicit_decomp,
        _split_decomp_table_to_cia_and_python_decomp,
    )
    from torch.fx.experimental.proxy_tensor import make_fx

    keep_whole, table = _split_decomp_table_to_cia_and_python_decomp(decomposition_table())
    old = program.graph_module
    placeholders = [n for n in old.graph.nodes if n.op == "placeholder"]
    values = [n.meta["val"] for n in placeholders]
    fake_mode = detect_fake_mode(values)
    if fake_mode is None:
        raise RuntimeError("no fake tensor mode on the program's inputs")

    def run(*args: Any) -> Any:
        with torch.fx.traceback.preserve_node_meta():
            return torch.fx.Interpreter(old).run(*args)

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

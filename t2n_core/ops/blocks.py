"""``t2n::block``: one call of a repeated block -> an invocation of the block's fragment.

The block's captured program is translated once per distinct input shapes into a fragment
graph (``graph.blocks``). Its parameters are the block's tensor inputs, its state, then its
weights; a weight becomes the calling instance's own variable, a constant of the block (same
in every instance) one shared variable of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.errors import TranslationError
from t2n_core.input_plan import user_input_placeholders
from t2n_core.ir import Graph, Ref, Value, Variable, sanitize
from t2n_core.ops.registry import register
from t2n_core.symbolic import SymbolTable

if TYPE_CHECKING:
    from t2n_core.blocks import Capture


@register(torch.ops.t2n.block.default)
def block_call(ctx: EmitContext, node: torch.fx.Node):
    """t2n::block(Tensor[] inputs, str key) -> Tensor[]"""
    blocks = ctx.blocks
    if blocks is None:
        raise ctx.error("a t2n::block call without the blocks it was captured with")
    key = ctx.raw(1)
    capture = blocks.programs[key]
    site = blocks.sites[key]
    refs = ctx.arg(0)
    input_nodes = ctx.raw(0)
    n_user = site.n_user
    for name, ref in zip(site.input_names, refs[:n_user]):
        if _from_concat(ctx.graph, ref):
            # a matmul / conv over a concatenation is split at translation (tract cannot load
            # some, see ops.linear.split_concat_product), which needs both in one graph
            raise ctx.error(
                f"input {name!r} of block {site.path} is a concatenation; the block cannot be "
                "a fragment"
            )
    shapes = tuple(
        (ctx.symbols.shape(n.meta["val"].shape), n.meta["val"].dtype) for n in input_nodes[:n_user]
    )
    cache = ctx.fragment_cache
    variant = (id(capture), shapes)
    if variant not in cache:
        cache[variant] = _build(ctx, capture, input_nodes[:n_user], blocks.originals)
    name, params = cache[variant]
    args: list[Any] = list(refs[:n_user])
    index = {p: i for i, p in enumerate(site.param_names)}
    for kind, what in params:
        args.append(refs[n_user + index[what]] if kind == "weight" else Ref(what))
    outs = ctx.meta()
    return ctx.emit_multi(name, args, None, [(o.dtype, ctx.out_shape(o)) for o in outs], hint=name)


def _build(
    ctx: EmitContext, capture: Capture, inputs: list[torch.fx.Node], originals: dict[str, Any]
) -> tuple[str, list[tuple[str, str]]]:
    """Translate the block once; returns its fragment name and its weight parameters."""
    site = capture.site
    program = capture.program
    symbols = SymbolTable()
    symbols.assume(*ctx.symbols.facts)
    user = user_input_placeholders(program)
    for node, outer in zip(user, inputs):
        for ours, theirs in zip(node.meta["val"].shape, outer.meta["val"].shape):
            if isinstance(ours, torch.SymInt) and ours.node.expr.is_Symbol:
                symbols.bind(ours.node.expr, str(ctx.symbols.dim(theirs)), ours.node.shape_env)
    tensors = {}
    for spec in program.graph_signature.input_specs:
        if spec.target is None:
            continue
        if spec.target.startswith("_."):
            tensors[spec.target] = originals[f"{site.path}.{spec.target[2:]}"]
        elif spec.target in program.constants:
            tensors[spec.target] = program.constants[spec.target]
        else:
            tensors[spec.target] = program.state_dict[spec.target]
    n_out = sum(1 for s in program.graph_signature.output_specs)
    output_names = _output_names(site, n_out)
    assert ctx.translate_program is not None
    body = ctx.translate_program(
        program, tensors=tensors, inputs=dict(zip((n.name for n in user), site.input_names)),
        output_names=output_names,
        symbols=symbols,
    )  # fmt: skip
    body.remove_dead_code()
    graph = ctx.graph
    name = _fresh_fragment_name(graph, type(site.module).__name__)
    body.name = name
    params: list[tuple[str, str]] = []
    weights = set(site.param_names)
    for vname, var in list(body.variables.items()):
        rel = var.label[2:] if var.label.startswith("_.") else None
        if rel in weights:
            params.append(("weight", rel))
        else:
            shared = graph.fresh_name(f"{name}_{vname}")
            graph.variables[shared] = Variable(shared, f"{name}.{var.label}", var.tensor)
            value = body.values[vname]
            graph.add_value(Value(shared, value.dtype, value.shape))
            params.append(("shared", shared))
        body.inputs.append(body.values[vname])
        del body.variables[vname]
    graph.blocks[name] = body
    graph.fragments.update(body.fragments)
    graph.extensions.update(body.extensions)
    body.fragments = {}
    return name, params


def _from_concat(graph: Graph, ref: Any) -> bool:
    while isinstance(ref, Ref):
        producer = graph.producer(ref.name)
        if producer is None:
            return False
        if producer.op == "concat":
            return True
        if producer.op not in ("reshape", "squeeze", "unsqueeze", "transpose", "copy"):
            return False
        ref = producer.args[0]
    return False


def _output_names(site, n_out: int) -> list[str]:
    n_state = sum(len(names) for _, _, names in site.states)
    n_plain = n_out - n_state
    plain = ["output"] if n_plain == 1 else [f"output_{i}" for i in range(n_plain)]
    state = [f"{n}_out" for n in site.input_names[len(site.tensor_at) :]]
    return plain + state


def _fresh_fragment_name(graph: Graph, class_name: str) -> str:
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in class_name).strip("_")
    base = sanitize(f"block_{snake}")
    name, n = base, 1
    while name in graph.blocks or name in graph.fragments:
        name = f"{base}_{n}"
        n += 1
    if name in {v for v in graph.values}:
        raise TranslationError(f"fragment name {name} clashes with a value name")
    return name

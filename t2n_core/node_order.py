"""A canonical order of a captured graph's nodes, so that an archive does not depend on the
order Python happened to trace independent computations in.

transformers computes some independent branches in the iteration order of a ``set`` of strings
(Gemma 3's rotary embeddings: ``for layer_type in set(config.layer_types)``), which depends on
``PYTHONHASHSEED``: the same model traced by two processes gives the same graph with its
independent branches in another order, and the writer, which names values in the order it
meets them, writes another ``graph.nnef``. :func:`canonical_order` orders the nodes by what
the graph computes only: the placeholders as the signature lists them, then every node the
outputs need, depth first from the outputs in their order, each node after its arguments in
argument order, then the nodes no output needs (assertions) in their traced order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.fx


def canonical_order(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """``graph``'s nodes in an order that depends on the graph's structure, not on the order
    the nodes were created in (a topological order: each node after its inputs)."""
    nodes = list(graph.nodes)
    placed: set[torch.fx.Node] = set()
    order: list[torch.fx.Node] = []
    for node in nodes:
        if node.op == "placeholder":
            placed.add(node)
            order.append(node)
    outputs = [node for node in nodes if node.op == "output"]
    needed = [arg for node in outputs for arg in node.all_input_nodes]
    unused = [node for node in nodes if node.op != "output"]
    for root in [*needed, *unused]:
        order.extend(_post_order(root, placed))
    return order + outputs


def _post_order(root: torch.fx.Node, placed: set[torch.fx.Node]) -> Iterator[torch.fx.Node]:
    """``root`` and the inputs it needs that are not yet ``placed``, each after its own inputs
    (iterative: a deep graph would exceed Python's recursion limit)."""
    if root in placed:
        return
    stack = [(root, iter(root.all_input_nodes))]
    while stack:
        node, inputs = stack[-1]
        child = next((i for i in inputs if i not in placed), None)
        if child is None:
            stack.pop()
            placed.add(node)
            yield node
        else:
            stack.append((child, iter(child.all_input_nodes)))

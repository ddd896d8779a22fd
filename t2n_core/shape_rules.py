"""Shape-only fake kernels for composite ops that capture keeps whole.

Some CompositeImplicitAutograd ops loop over a size in their decomposition (LSTM over time),
which would pin a dynamic axis while ``torch.export`` computes their output shapes; a rule
registered here computes those shapes instead, for the duration of a capture only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_SHAPE_RULES: dict[Any, Any] = {}


def register_shape_rule(*ops: Any):
    """Give kept-whole composite ATen ops a shape-only fake kernel while capturing.

    ``torch.export`` computes the output metadata of a CompositeImplicitAutograd op that it
    keeps whole by running the op's decomposition on fake tensors; a decomposition that loops
    over a size (``aten.lstm.input`` iterates over the time axis) specialises that size, and a
    dynamic axis through the op is refused. Inside :func:`shape_rules` (entered by
    ``capture``), the decorated function computes the fake outputs instead: it gets the op's
    arguments and returns empty tensors of the right shapes (``x.new_empty(...)``).

    >>> @register_shape_rule(torch.ops.aten.gru.input)          # doctest: +SKIP
    ... def gru_shapes(input, hx, params, *flags):
    ...     return input.new_empty(...), hx.new_empty(hx.shape)
    """

    def deco(fn):
        for op in ops:
            if op in _SHAPE_RULES:
                raise ValueError(f"{op} already has a shape rule")
            _SHAPE_RULES[op] = fn
        return fn

    return deco


@contextlib.contextmanager
def shape_rules() -> Iterator[None]:
    """Install every registered shape rule for the duration of a capture (then restore)."""
    from torch._decomp import meta_table
    from torch._subclasses import fake_impls

    saved = {op: op.py_kernels.copy() for op in _SHAPE_RULES}
    registered: list[Any] = []
    try:
        for op, fn in _SHAPE_RULES.items():
            kernel = _shape_kernel(op, fn, saved[op])
            keys = torch._C.DispatchKey
            for key in (keys.Autograd, keys.CompositeImplicitAutograd):
                op.py_kernels[key] = kernel
            op._dispatch_cache.clear()
            # fake tensors must use the rule rather than their decomposition table
            meta_table[op] = kernel
            if not fake_impls._is_op_registered_to_fake_rule(op):
                fake_impls.register_op_impl(op)(
                    lambda _mode, _func, *a, _k=kernel, **kw: _k(*a, **kw)
                )
                registered.append(op)
        yield
    finally:
        for op, kernels in saved.items():
            op.py_kernels.clear()
            op.py_kernels.update(kernels)
            op._dispatch_cache.clear()
            meta_table.pop(op, None)
        for op in registered:
            fake_impls._deregister_op_impl(op)


def _shape_kernel(op: Any, fn: Any, kernels: dict[Any, Any]):
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    keys = torch._C.DispatchKey
    original = kernels.get(keys.Autograd) or kernels.get(keys.CompositeImplicitAutograd)

    def kernel(*args: Any, **kwargs: Any) -> Any:
        tensors = [
            t for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        ]  # fmt: skip
        fake = tensors and all(isinstance(t, FakeTensor) for t in tensors)
        if fake and get_proxy_mode() is None:  # metadata only: no graph is being traced
            with tensors[0].fake_mode:
                return fn(*args, **kwargs)
        if original is not None:
            return original(*args, **kwargs)
        return op.decompose(*args, **kwargs)

    return kernel

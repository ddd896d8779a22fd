"""``DeferredTensor``: a weight whose values are read (and converted or quantized) only when used.

It is the storage protocol (:mod:`t2n_core.storage`) for weights that are not in memory: the
writer asks it for its encoding, whose ``data`` callables read the rows from their source
(e.g. a memory-mapped safetensors shard), convert or quantize them, and return the payload, one
tensor at a time; nothing is kept afterwards. Capture uses an untouched proxy
(``nnef_float_proxy``), so a model whose every weight is deferred is exported in memory that
does not grow with the model.

Any torch op applied to a DeferredTensor runs on its float value (read, transformed and
converted a slab of rows at a time, used, released; an embedding lookup reads only its rows),
so the model still runs in PyTorch: slowly, but in memory bounded by its largest weight.

``transform`` maps the rows as read (the source's dtype) to the stored tensor (for example a
quantizer returning a QTensor); without one, the rows are converted to ``dtype``.
``encoded_like`` is
an object with the same encoding as the transformed tensor but no values (a QTensor on the
meta device): it tells the writer the variables, fragments and sizes before any value is read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from t2n_core.nnef.dat import tensor_buffer
from t2n_core.storage import EncodedVariable, Encoding

logger = logging.getLogger(__name__)

#: ``read(begin, end)``: rows ``begin:end`` of dim 0 (all of a rank-0 tensor), in the source dtype
RowReader = Callable[[int, int], torch.Tensor]

#: values read, transformed and converted at once by :meth:`DeferredTensor.float_value`
FLOAT_SLAB_VALUES = 1 << 22

_VIEW_OPS = {torch.ops.aten.detach.default, torch.ops.aten.alias.default}


class DeferredTensor(torch.Tensor):
    """A weight of ``shape`` and ``dtype`` produced from ``read`` when needed.

    >>> source = torch.arange(6.0).reshape(3, 2)
    >>> w = DeferredTensor(lambda b, e: source[b:e], (3, 2), torch.float16, name="w")
    >>> (w + 1)[2].tolist(), w.materialize().dtype
    ([5.0, 6.0], torch.float16)
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(
        cls,
        read: RowReader,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        encoded_like: Any = None,
        name: str | None = None,
        rows: tuple[int, int] | None = None,
        to_float: Callable[[Any], torch.Tensor] | None = None,
    ) -> DeferredTensor:
        return torch.Tensor._make_wrapper_subclass(
            cls, tuple(shape), dtype=dtype, device="cpu", requires_grad=False
        )

    def __init__(
        self,
        read: RowReader,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        encoded_like: Any = None,
        name: str | None = None,
        rows: tuple[int, int] | None = None,
        to_float: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.read = read
        self.to_float = to_float
        self.transform = transform
        self.encoded_like = encoded_like
        self.tensor_name = name
        self.row_range = rows if rows is not None else (0, shape[0] if shape else 0)
        self._cached: Encoding | None = None

    def with_transform(
        self,
        transform: Callable[[torch.Tensor], Any],
        encoded_like: Any,
        dtype: torch.dtype,
        to_float: Callable[[Any], torch.Tensor] | None = None,
    ) -> DeferredTensor:
        """The same rows, stored as ``transform(rows)`` (encoded like ``encoded_like``);
        ``to_float`` gives the float tensor that a transformed slab of rows stands for."""
        return DeferredTensor(
            self.read, tuple(self.shape), dtype, transform=transform, encoded_like=encoded_like,
            name=self.tensor_name, rows=self.row_range, to_float=to_float,
        )  # fmt: skip

    def materialize(self) -> Any:
        """Read the rows and transform them: a plain tensor of ``dtype``, or e.g. a QTensor."""
        raw = self.read(*self.row_range)
        if self.transform is not None:
            return self.transform(raw)
        return raw.to(self.dtype)

    # ---- storage protocol (t2n_core.storage) -------------------------------------------

    def nnef_float_proxy(self) -> torch.Tensor:
        """An uninitialised tensor of this shape and dtype (its pages are never touched)."""
        return torch.empty(self.shape, dtype=self.dtype)

    def nnef_encoding(self, label: str) -> Encoding:
        """The encoding of the materialized tensor, known without reading any value."""
        if self.encoded_like is None:
            nbytes = self.numel() * self.element_size()
            var = EncodedVariable(
                "", tuple(self.shape), data=lambda: tensor_buffer(self.materialize()),
                dtype=self.dtype, nbytes=nbytes,
            )  # fmt: skip
            return Encoding([var])
        template = self.encoded_like.nnef_encoding(label)
        count = len(template.variables)
        variables = [
            dataclasses.replace(ev, data=self._payload(label, i, count))
            for i, ev in enumerate(template.variables)
        ]
        return dataclasses.replace(template, variables=variables)

    def _payload(self, label: str, index: int, count: int) -> Callable[[], bytes | memoryview]:
        """Variable ``index`` of the materialized encoding; the writer asks for them in order,
        so the materialized tensor is kept from the first to the last one, then released."""

        def produce() -> bytes | memoryview:
            if self._cached is None or index == 0:
                self._cached = self.materialize().nnef_encoding(label)
            data = self._cached.variables[index].data()
            if index == count - 1:
                self._cached = None
            return data

        return produce

    def nnef_slice_rows(self, begin: int, end: int) -> DeferredTensor | None:
        """Rows ``begin:end``, still deferred (when ``encoded_like`` can cut its own rows)."""
        cut = getattr(self.encoded_like, "nnef_slice_rows", None)
        if cut is None:
            return None
        encoded_like = cut(begin, end)
        if encoded_like is None:
            return None
        first = self.row_range[0]
        name = f"{self.tensor_name}.rows_{begin}_{end}" if self.tensor_name else None
        return DeferredTensor(
            self.read, (end - begin, *self.shape[1:]), self.dtype, transform=self.transform,
            encoded_like=encoded_like, name=name, rows=(first + begin, first + end),
            to_float=self.to_float,
        )  # fmt: skip

    # ---- torch integration -------------------------------------------------------------

    def float_value(self) -> torch.Tensor:
        """The values PyTorch computes with: the materialized tensor as a plain ``dtype``
        tensor, built a slab of rows at a time when a transform (a quantizer) needs
        ``to_float`` (so only the float result is ever whole, not also the read rows and the
        encoded copy)."""
        if self.transform is None or self.to_float is None or not self.shape:
            value = self.materialize()
            return self.to_float(value) if self.to_float is not None else value
        first, last = self.row_range
        out = torch.empty(self.shape, dtype=self.dtype)
        step = max(1, FLOAT_SLAB_VALUES // max(1, out[0].numel()))
        for r0 in range(first, last, step):
            r1 = min(last, r0 + step)
            out[r0 - first : r1 - first] = self.to_float(self.transform(self.read(r0, r1)))
        return out

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """``float_value()[index]``, reading only those rows (an embedding lookup)."""
        first = self.row_range[0]
        unique, inverse = torch.unique(index.reshape(-1), return_inverse=True)
        rows = []
        for i in unique.tolist():
            raw = self.read(first + i, first + i + 1)
            value = raw.to(self.dtype) if self.transform is None else self.transform(raw)
            rows.append(self.to_float(value) if self.to_float is not None else value)
        return torch.cat(rows)[inverse].reshape(*index.shape, *self.shape[1:])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _VIEW_OPS:
            return args[0]
        if func is torch.ops.aten.embedding.default and isinstance(args[0], DeferredTensor):
            return args[0]._rows(args[1])
        args, kwargs = tree_map_only(
            DeferredTensor, lambda t: t.float_value(), (args, kwargs or {})
        )
        return func(*args, **kwargs)

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        name = f", name={self.tensor_name!r}" if self.tensor_name else ""
        return f"DeferredTensor(shape={tuple(self.shape)}, dtype={self.dtype}{name})"


def holds_deferred(model: torch.nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is a DeferredTensor."""
    tensors = [*model.parameters(), *model.buffers()]
    return any(isinstance(t, DeferredTensor) for t in tensors)

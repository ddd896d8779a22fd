"""``DeferredTensor``: a weight whose values are read (and converted or quantized) only when used.

It is the storage protocol (:mod:`t2n_core.storage`) for weights that are not in memory: the
writer asks it for its encoding, whose ``data`` callables read the rows from their source
(e.g. a memory-mapped safetensors shard), convert or quantize them, and return the payload, one
tensor at a time; nothing is kept afterwards. Capture uses an untouched proxy
(``nnef_float_proxy``), so a model whose every weight is deferred is exported in memory that
does not grow with the model.

Rows are read, transformed and encoded a slab of about :data:`FLOAT_SLAB_VALUES` values at a
time, so the rows read are never all in memory at once: writing a weight holds its encoded
payload (e.g. Q4_0 bytes) and one slab, never the whole source tensor beside it. ``transform``
must therefore be row-local (its value on rows ``a:b`` is rows ``a:b`` of its value on all
rows), as a codec whose blocks never cross rows is.

Any torch op applied to a DeferredTensor runs on its float value (built a slab of rows at a
time, used, released), so the model still runs in PyTorch: slowly, but in memory bounded by its
largest weight. ``F.linear`` on a DeferredTensor weight (a LM head of 128k rows) never builds
the whole float weight: its outputs are computed a slab of weight rows at a time, and an
embedding lookup reads only its rows.

``transform`` maps the rows as read (the source's dtype) to the stored tensor (for example a
quantizer returning a QTensor); without one, the rows are converted to ``dtype``.
``encoded_like`` is
an object with the same encoding as the transformed tensor but no values (a QTensor on the
meta device): it tells the writer the variables, fragments and sizes before any value is read.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_map_only

from t2n_core.nnef.dat import tensor_buffer
from t2n_core.slab_exchange import active_exchange
from t2n_core.storage import EncodedVariable, Encoding

logger = logging.getLogger(__name__)

#: ``read(begin, end)``: rows ``begin:end`` of dim 0 (all of a rank-0 tensor), in the source dtype
RowReader = Callable[[int, int], torch.Tensor]

#: values read, transformed and converted or encoded at once (a slab of rows)
FLOAT_SLAB_VALUES = 1 << 22

_VIEW_OPS = {torch.ops.aten.detach.default, torch.ops.aten.alias.default}


class DeferredTensor(torch.Tensor):
    """A weight of ``shape`` and ``dtype`` produced from ``read`` when needed.

    >>> source = torch.arange(6.0).reshape(3, 2)
    >>> w = DeferredTensor(lambda b, e: source[b:e], (3, 2), torch.float16, name="w")
    >>> (w + 1)[2].tolist(), w.materialize().dtype
    ([5.0, 6.0], torch.float16)
    """

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
        float_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
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
        float_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.read = read
        self.to_float = to_float
        self.float_rows = float_rows
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
        float_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> DeferredTensor:
        """The same rows, stored as ``transform(rows)`` (encoded like ``encoded_like``);
        ``to_float`` gives the float tensor that a transformed slab of rows stands for, and
        ``float_rows`` (optional) the same directly from the rows read, bit for bit
        ``to_float(transform(rows))`` but cheaper (a quantizer's fake quantization skips
        packing and unpacking): PyTorch ops, which read every weight again, use it."""
        return DeferredTensor(
            self.read, tuple(self.shape), dtype, transform=transform, encoded_like=encoded_like,
            name=self.tensor_name, rows=self.row_range, to_float=to_float, float_rows=float_rows,
        )  # fmt: skip

    def materialize(self) -> Any:
        """Read the rows and transform them: a plain tensor of ``dtype``, or e.g. a QTensor.
        (All rows at once: the writer and PyTorch ops go a slab at a time instead.)"""
        return self._stored_rows(*self.row_range)

    def _stored_rows(self, begin: int, end: int) -> Any:
        """Rows ``begin:end`` (absolute, in the source) as stored: transformed or converted."""
        raw = self.read(begin, end)
        return self.transform(raw) if self.transform is not None else converted(raw, self.dtype)

    def _float_rows(self, begin: int, end: int) -> torch.Tensor:
        exchange = active_exchange()
        if exchange is not None and exchange.is_pass():
            stored = exchange.take(self._slab_key(begin, end))
            if stored is not None:  # the writer's value of these rows: no second read
                return self.to_float(stored) if self.to_float is not None else stored
        if self.float_rows is not None:
            return self.float_rows(self.read(begin, end))
        value = self._stored_rows(begin, end)
        return self.to_float(value) if self.to_float is not None else value

    def _slab_key(self, begin: int, end: int) -> tuple[Any, ...]:
        """What identifies rows ``begin:end`` as stored, across the tensor objects that share
        them (a tied weight, a parameter and its row slices): source, transform, dtype, rows.
        (Objects by identity: the tensors hold them, alive, while the key is used.)"""
        return (id(self.read), id(self.transform), self.dtype, begin, end)

    def _offered(self, begin: int, end: int, stored: Any) -> Any:
        """``stored`` (rows ``begin:end`` the writer stored), handed to the PyTorch pass
        running beside the writer, if any (:mod:`t2n_core.slab_exchange`)."""
        exchange = active_exchange()
        if exchange is not None and exchange.is_writer():
            exchange.offer(self._slab_key(begin, end), stored, _nbytes(stored, end - begin, self))
        return stored

    def slabs(self) -> Iterator[tuple[int, int]]:
        """Absolute row ranges of about :data:`FLOAT_SLAB_VALUES` values each, in order."""
        first, last = self.row_range
        step = max(1, FLOAT_SLAB_VALUES // max(1, math.prod(self.shape[1:])))
        for r0 in range(first, last, step):
            yield r0, min(last, r0 + step)

    # ---- storage protocol (t2n_core.storage) -------------------------------------------

    def nnef_float_proxy(self) -> torch.Tensor:
        """An uninitialised tensor of this shape and dtype (its pages are never touched)."""
        return torch.empty(self.shape, dtype=self.dtype)

    def nnef_encoding(self, label: str) -> Encoding:
        """The encoding of the materialized tensor, known without reading any value."""
        if self.encoded_like is None:
            nbytes = self.numel() * self.element_size()
            template = Encoding([EncodedVariable("", tuple(self.shape), data=_unread,
                                                 dtype=self.dtype, nbytes=nbytes)])  # fmt: skip
        else:
            template = self.encoded_like.nnef_encoding(label)
        exchange = active_exchange()
        if exchange is not None and exchange.is_writer() and self.shape:
            exchange.announce(self._slab_key(r0, r1) for r0, r1 in self.slabs())
        count = len(template.variables)
        variables = [
            dataclasses.replace(ev, data=self._payload(label, template, i, count))
            for i, ev in enumerate(template.variables)
        ]
        if (
            count == 1
            and self.shape
            and variables[0].shape[:1] == self.shape[:1]
            and (size := _payload_size(variables[0])) is not None
        ):  # one variable cut by rows: streamed to the archive a slab of rows at a time
            chunks = functools.partial(self._slab_payloads, label)
            variables = [dataclasses.replace(variables[0], nbytes=size, chunks=chunks)]
        return dataclasses.replace(template, variables=variables)

    def _slab_payloads(self, label: str) -> Iterator[memoryview]:
        """The payload of a single-variable encoding cut by rows, one slab of rows at a time
        (the writer checks that they add up to the announced size)."""
        for r0, r1 in self.slabs():
            stored = self._offered(r0, r1, self._stored_rows(r0, r1))
            part = _encoding_of(stored, label, (r1 - r0, *self.shape[1:]))
            if len(part.variables) != 1 or part.variables[0].shape[:1] != (r1 - r0,):
                raise ValueError(f"{self!r}: a slab's encoding is not the rows of one variable")
            yield _bytes(part.variables[0].data())

    def _payload(
        self, label: str, template: Encoding, index: int, count: int
    ) -> Callable[[], bytes | memoryview]:
        """Variable ``index`` of the materialized encoding; the writer asks for them in order,
        so the payloads are kept from the first to the last one, then released."""

        def produce() -> bytes | memoryview:
            if self._cached is None or index == 0:
                self._cached = self._encode_by_slabs(label, template)
            data = self._cached[index]
            if index == count - 1:
                self._cached = None
            return data

        return produce

    def _encode_by_slabs(self, label: str, template: Encoding) -> list[memoryview]:
        """Every variable's payload, the rows read and encoded a slab at a time.

        A variable whose dim 0 is the rows (codes, scales, a Q4_0 payload: row-major) is the
        concatenation of the slabs' payloads, copied into one buffer of its whole size; any
        other variable (a code book) must be the same in every slab."""
        if not self.shape:
            value = self.materialize()
            return [_bytes(ev.data()) for ev in _encoding_of(value, label, ()).variables]
        rows = self.row_range[1] - self.row_range[0]
        payloads = [_Payload(_payload_size(ev)) for ev in template.variables]
        for r0, r1 in self.slabs():
            stored = self._offered(r0, r1, self._stored_rows(r0, r1))
            part = _encoding_of(stored, label, (r1 - r0, *self.shape[1:]))
            if len(part.variables) != len(payloads):
                raise ValueError(f"{self!r}: a slab's encoding has other variables than the whole")
            for ev, full, payload in zip(part.variables, template.variables, payloads):
                by_rows = full.shape[:1] == (rows,) and ev.shape[:1] == (r1 - r0,)
                payload.add(_bytes(ev.data()), by_rows, f"{self!r}: variable {full.suffix!r}")
        return [
            p.result(f"{self!r}: variable {ev.suffix!r}")
            for ev, p in zip(template.variables, payloads)
        ]

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
            to_float=self.to_float, float_rows=self.float_rows,
        )  # fmt: skip

    # ---- torch integration -------------------------------------------------------------

    def float_value(self) -> torch.Tensor:
        """The values PyTorch computes with: the materialized tensor as a plain ``dtype``
        tensor, built a slab of rows at a time (so only the float result is ever whole, not
        also the read rows and the encoded copy)."""
        if not self.shape or (self.transform is not None and self.to_float is None):
            value = self.materialize()
            return self.to_float(value) if self.to_float is not None else value
        first = self.row_range[0]
        out = torch.empty(self.shape, dtype=self.dtype)
        for r0, r1 in self.slabs():
            out[r0 - first : r1 - first] = self._float_rows(r0, r1)
        return out

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        """``float_value()[index]``, reading only those rows (an embedding lookup)."""
        first = self.row_range[0]
        unique, inverse = torch.unique(index.reshape(-1), return_inverse=True)
        rows = [self._float_rows(first + i, first + i + 1) for i in unique.tolist()]
        return torch.cat(rows)[inverse].reshape(*index.shape, *self.shape[1:])

    def _linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, self, bias)``, a slab of weight rows (output features) at a time."""
        first = self.row_range[0]
        out = torch.empty(*x.shape[:-1], self.shape[0], dtype=x.dtype)
        for r0, r1 in self.slabs():
            part = torch.nn.functional.linear(x, self._float_rows(r0, r1))
            out[..., r0 - first : r1 - first] = part
        return out if bias is None else out + bias

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x, weight, bias = _linear_args(*args, **kwargs)
            if (
                isinstance(weight, DeferredTensor)
                and weight.dim() == 2
                and (weight.transform is None or weight.to_float is not None)
                and not isinstance(x, DeferredTensor)
            ):
                return weight._linear(x, bias)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

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


def converted(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``; bf16 to f32 as the bit shift it is (exact, NaNs included), which
    numpy does several times faster than PyTorch's conversion on one thread.

    >>> x = torch.tensor([1.5, -2.0, float("inf")], dtype=torch.bfloat16)
    >>> torch.equal(converted(x, torch.float32), x.float())
    True
    """
    if tensor.dtype != torch.bfloat16 or dtype != torch.float32 or not tensor.is_contiguous():
        return tensor.to(dtype)
    bits = tensor.view(torch.int16).numpy().view(np.uint16)
    out = np.left_shift(bits, 16, dtype=np.uint32)
    return torch.from_numpy(out.view(np.float32)).reshape(tensor.shape)


def holds_deferred(model: torch.nn.Module) -> bool:
    """Whether any parameter or buffer of ``model`` is a DeferredTensor."""
    tensors = [*model.parameters(), *model.buffers()]
    return any(isinstance(t, DeferredTensor) for t in tensors)


def _nbytes(stored: Any, rows: int, weight: DeferredTensor) -> int:
    """Memory that stored rows hold: a tensor's own bytes, else (a QTensor) the sum of its
    inner tensors', else the float rows'."""
    if type(stored) is torch.Tensor:
        return stored.numel() * stored.element_size()
    inner = getattr(stored, "__tensor_flatten__", None)
    if inner is not None:
        names, _ = inner()
        return sum(getattr(stored, n).numel() * getattr(stored, n).element_size() for n in names)
    return rows * math.prod(weight.shape[1:]) * weight.element_size()


def _linear_args(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return input, weight, bias


def _unread() -> bytes:
    raise AssertionError("a DeferredTensor's template payload is never read")


def _bytes(data: bytes | memoryview) -> memoryview:
    return memoryview(data).cast("B")


class _Payload:
    """One variable's payload, assembled from the slabs' payloads."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.buffer: np.ndarray | None = None if size is None else np.empty(size, np.uint8)
        self.parts: list[bytes] = []
        self.filled = 0
        self.same: memoryview | None = None

    def add(self, data: memoryview, by_rows: bool, what: str) -> None:
        """Append a slab's rows, or check that a variable not cut by rows is unchanged."""
        if not by_rows:
            if self.same is None:
                self.same = memoryview(bytes(data))
            elif self.same != data:
                raise ValueError(f"{what} differs between slabs of rows but is not cut by rows")
            return
        if self.buffer is None:
            self.parts.append(bytes(data))
        else:
            if self.filled + len(data) > len(self.buffer):
                raise ValueError(f"{what}: the slabs' payloads exceed its size {self.size}")
            self.buffer[self.filled : self.filled + len(data)] = np.frombuffer(data, np.uint8)
        self.filled += len(data)

    def result(self, what: str) -> memoryview:
        if self.same is not None:
            if self.filled:
                raise ValueError(f"{what} is cut by rows in some slabs only")
            return self.same
        if self.buffer is None:
            return memoryview(b"".join(self.parts))
        if self.filled != self.size:
            raise ValueError(
                f"{what}: the slabs' payloads hold {self.filled} bytes, not {self.size}"
            )
        return memoryview(self.buffer).cast("B")


def _encoding_of(value: Any, label: str, shape: tuple[int, ...]) -> Encoding:
    """``value``'s own encoding (a QTensor), or a plain ``.dat`` of its dtype."""
    if hasattr(value, "nnef_encoding"):
        return value.nnef_encoding(label)
    var = EncodedVariable("", shape, data=lambda: tensor_buffer(value), dtype=value.dtype)
    return Encoding([var])


def _payload_size(ev: EncodedVariable) -> int | None:
    """The payload size of a template variable, known without producing it (or ``None``)."""
    if ev.nbytes is not None:
        return ev.nbytes
    if ev.dtype is not None:
        return math.prod(ev.shape) * ev.dtype.itemsize
    return None

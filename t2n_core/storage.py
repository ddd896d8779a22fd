"""The storage protocol: how a tensor describes its own NNEF encoding.

This is the seam between ``t2n_core`` (the writer) and ``t2n_quant`` (the codecs).
The writer never inspects codec internals: for each parameter it asks
``nnef_encoding(label)`` when the tensor has that method, and otherwise writes
a plain ``.dat`` of the tensor's dtype.

An :class:`Encoding` is made of

- ``variables``: the ``.dat`` payloads, each declared in graph.nnef as
  ``name = variable<type>(label = '<label><suffix>', shape = [...])``;
- ``fragments``: NNEF fragment definitions the expression needs (deduplicated by name);
- ``call``: how to obtain the float weight from those variables, as
  ``(fragment name, [variable suffixes], {attribute: value})``; ``None`` means the
  single variable *is* the weight (a tract-native type such as Q4_0).

Optional methods, each used by a writer pass and allowed to return ``None`` ("cannot"):
``nnef_slice_cols(begin, end)`` (the same on dim 1, see below), ``nnef_scale_rows(factors)``
(row ``r`` times ``factors[r]``, still encoded, ``None`` unless exact: :mod:`t2n_core.fold_scale`),
``nnef_fragment_view()`` (the same values in an encoding with a ``call``, for the uses of a
tract-native tensor that tract cannot run on it: :func:`t2n_core.native_uses.give_native_views`),
and ``nnef_slice_rows(begin, end)`` returns a tensor of the same kind holding
rows ``begin:end`` of dim 0, still encoded (or ``None`` when it cannot cut them without
re-encoding). When the graph slices such a tensor along dim 0 (static bounds, stride 1, e.g.
after ``split``), the writer stores the sliced rows as a variable of their own, labelled
``'<label>.rows_<begin>_<end>'``, instead of writing the slice op
(:func:`t2n_core.fold.fold_row_slices`); this keeps a tract-native weight sliced before its
matmul compressed, since tract cannot run ``slice`` on it.

Optional method: ``nnef_reshape(shape)`` returns the same encoded tensor seen with another
shape (or ``None`` when the encoding's blocks would not line up). A stored tensor whose only
use is a ``squeeze`` or ``reshape`` (static shapes) is then stored with the new shape
(:func:`t2n_core.fold.fold_reshapes`): ``experts[e]`` of a 3-D expert weight is a row slice
then a squeeze, and reaches its matmul as one 2-D compressed matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class EncodedVariable:
    """One ``.dat`` payload.

    Either ``dtype`` is set (a standard NNEF/tract type: the payload is the raw
    little-endian bytes of a tensor of ``shape``) or ``custom_item_type`` is set
    (a tract vendor type such as Q4_0, in which case ``data`` returns the encoded bytes).
    """

    suffix: str
    shape: tuple[int, ...]
    data: Callable[[], bytes | memoryview]
    dtype: torch.dtype | None = None
    custom_item_type: int | None = None
    nbytes: int | None = None  # payload size when known without producing it
    #: the payload as pieces produced in order, each written before the next is made (a
    #: weight streamed a slab of rows at a time); only with ``nbytes``, which they add up to
    chunks: Callable[[], Iterator[bytes | memoryview]] | None = None

    def payload_size(self) -> int:
        return self.nbytes if self.nbytes is not None else len(self.data())

    def __post_init__(self) -> None:
        if (self.dtype is None) == (self.custom_item_type is None):
            raise ValueError("EncodedVariable needs exactly one of dtype or custom_item_type")
        if self.chunks is not None and self.nbytes is None:
            raise ValueError("EncodedVariable with chunks needs nbytes (the size they add up to)")


@dataclass(frozen=True)
class Encoding:
    variables: list[EncodedVariable]
    fragments: dict[str, str] = field(default_factory=dict)
    call: tuple[str, list[str], dict[str, Any]] | None = None
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.call is None and len(self.variables) != 1:
            raise ValueError("an Encoding without a call must have exactly one variable")
        if self.call is not None:
            known = {v.suffix for v in self.variables}
            missing = [s for s in self.call[1] if s not in known]
            if missing:
                raise ValueError(f"Encoding call names unknown variables {missing}")


@runtime_checkable
class NNEFStorage(Protocol):
    """A tensor that knows how to write itself into an NNEF archive."""

    def nnef_encoding(self, label: str) -> Encoding: ...

    def nnef_float_proxy(self) -> torch.Tensor:
        """A plain tensor of the logical shape and dtype, used while capturing the graph."""
        ...

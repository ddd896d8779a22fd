"""Turn a :class:`~t2n_core.ir.Graph` into archive files (graph.nnef + one ``.dat`` per tensor)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator

import torch

from t2n_core.concat_guard import guard_concat_before_native_matmul
from t2n_core.fold import fold_reshapes, fold_row_slices
from t2n_core.fold_scale import fold_channel_affine
from t2n_core.ir import Graph, Operation, Ref, Variable
from t2n_core.loop_weights import inline_native_loop_weights
from t2n_core.nnef import dat, text
from t2n_core.storage import EncodedVariable, Encoding, NNEFStorage

logger = logging.getLogger(__name__)


def plain_encoding(tensor: torch.Tensor, label: str) -> Encoding:
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        logger.warning("tensor %r is bf16, which .dat cannot hold: written as f32", label)
        t = t.float()
    if t.dtype not in dat.supported_dtypes():
        from t2n_core.errors import TranslationError

        raise TranslationError(
            f"tensor {label!r} has dtype {t.dtype}, which tract cannot load; "
            f"convert it to one of {[str(d) for d in dat.supported_dtypes()]}"
        )
    return Encoding(
        [EncodedVariable("", tuple(t.shape), data=lambda t=t: dat.tensor_buffer(t), dtype=t.dtype)]
    )


def encoding_of(var: Variable) -> Encoding:
    """How ``var`` is stored; computed once for its current label and tensor."""
    tensor = var.tensor
    if var.encoded is not None and var.encoded[0] == var.label and var.encoded[1] is tensor:
        return var.encoded[2]
    if isinstance(tensor, NNEFStorage) and hasattr(tensor, "nnef_encoding"):
        encoding = tensor.nnef_encoding(var.label)
    else:
        encoding = plain_encoding(tensor, var.label)
    var.encoded = (var.label, tensor, encoding)
    return encoding


def attach_encodings(graph: Graph) -> None:
    """Add the fragments and extensions that the variables' encodings need."""
    for var in graph.variables.values():
        enc = encoding_of(var)
        graph.fragments.update(enc.fragments)
        graph.extensions.update(enc.extensions)


def is_native(var: Variable) -> bool:
    """Whether ``var`` is stored in a tract-native type (e.g. Q4_0) that tract keeps as is."""
    enc = encoding_of(var)
    return enc.call is None and enc.variables[0].custom_item_type is not None


#: ops that tract runs directly on block-quantized (tract-native) weights
NATIVE_CONSUMERS = {"matmul": 1, "conv": 1, "tract_core_gather": 0}
_SLICE_HINT = " (only a slice of whole rows, on dim 0 with stride 1, stays compressed)"


def native_use_ok(graph: Graph, op: Operation, position: int) -> bool:
    """Whether tract can take a tract-native tensor as ``op``'s operand ``position``: a
    :data:`NATIVE_CONSUMERS` position, or a fragment parameter that only reaches those
    (:func:`native_parameters`)."""
    if op.op in graph.blocks:
        return position in native_parameters(graph.blocks[op.op])
    return NATIVE_CONSUMERS.get(op.op) == position


def give_native_views(graph: Graph) -> list[str]:
    """Point each use of a tract-native tensor that tract cannot run on it (anything but the
    :data:`NATIVE_CONSUMERS` positions) at a view of the same values in a fragment encoding
    (the storage protocol's optional ``nnef_fragment_view``), labelled ``'<label>.view'``;
    matmul / conv / gather uses stay native. Returns one note per tensor given a view.
    """
    notes: list[str] = []
    for name, var in list(graph.variables.items()):
        if not is_native(var) or not callable(getattr(var.tensor, "nnef_fragment_view", None)):
            continue
        ops = [
            op for op in graph.operations
            if any(isinstance(a, Ref) and a.name == name and not native_use_ok(graph, op, i)
                   for i, a in enumerate(op.args))
        ]  # fmt: skip
        if not ops:
            continue
        tensor = var.tensor.nnef_fragment_view()
        if tensor is None:
            continue
        label = f"{var.label}.view"
        view = graph.fresh_name(label)
        graph.variables[view] = Variable(view, label, tensor)
        value = graph.values[name]
        graph.values[view] = type(value)(view, value.dtype, value.shape)
        for op in ops:
            op.args = [
                Ref(view) if isinstance(a, Ref) and a.name == name and
                not native_use_ok(graph, op, i) else a
                for i, a in enumerate(op.args)
            ]  # fmt: skip
        used = sorted({op.op for op in ops})
        note = (
            f"tensor {var.label!r} is tract-native but also used by {used} (from "
            f"'{ops[0].source or '<root module>'}'): those uses read a dequantized view "
            f"{label!r} (the same values in a fragment encoding, decoded to float when tract "
            "loads it); matmul/conv/gather uses stay native"
        )
        logger.info("%s", note)
        notes.append(note)
    return notes


def check_native_uses(graph: Graph) -> None:
    """Refuse a tract-native encoded tensor (e.g. Q4_0) fed to an op tract cannot run on it.

    tract keeps such tensors compressed and runs matmul (as the second operand), conv (as the
    filter) and gather (as the data) on them; anything else fails when tract loads the archive.
    :func:`archive_files` first folds whole-row slices of such tensors into row-range
    variables (:func:`t2n_core.fold.fold_row_slices`).
    """
    from t2n_core.errors import TranslationError

    native = {name: var for name, var in graph.variables.items() if is_native(var)}
    if not native:
        return
    for op in graph.operations:
        for position, arg in enumerate(op.args):
            if isinstance(arg, Ref) and arg.name in native:
                if not native_use_ok(graph, op, position):
                    var = native[arg.name]
                    where = op.source or "<root module>"
                    hint = _SLICE_HINT if op.op == "slice" else ""
                    raise TranslationError(
                        f"tensor {var.label!r} is stored in a tract-native quantized format, "
                        f"which tract can only feed to matmul, conv and gather, but op "
                        f"'{op.op}' (from '{where}') uses it{hint}. Exclude that module from "
                        "quantize_model (exclude=[...]) or quantize it with a fragment codec "
                        "such as 'minmax'."
                    )
        for value in op.attrs.values():
            if isinstance(value, Ref) and value.name in native:
                raise TranslationError(
                    f"tensor {native[value.name].label!r} (tract-native quantized) is used as "
                    f"an attribute of '{op.op}'"
                )


def native_parameters(body: Graph) -> dict[int, set[int]]:
    """The fragment parameters of ``body`` that may receive a tract-native tensor: position ->
    the positions of the parameters whose value its matmuls take as input.

    Such a parameter must only feed matmul (as the weight, its input not a concatenation,
    which tract would split, see :mod:`t2n_core.concat_guard`) or gather (as the data);
    anything else needs the graph passes that run on a flat graph.
    """
    params = {v.name: i for i, v in enumerate(body.inputs)}
    ok: dict[int, set[int]] = {}
    for position, param in enumerate(body.inputs):
        sources: set[int] = set()
        used = False
        for op in body.operations:
            for i, arg in enumerate([*op.args, *op.attrs.values()]):
                if not (isinstance(arg, Ref) and arg.name == param.name):
                    continue
                used = True
                source = _native_use(body, op, i)
                if source is False:
                    break
                if isinstance(source, str):
                    sources.add(params[source])
            else:
                continue
            break
        else:
            if used:
                ok[position] = sources
    return ok


_AXIS_OPS = ("reshape", "squeeze", "unsqueeze", "transpose")


def _native_use(body: Graph, op: Operation, position: int) -> bool | str:
    """Whether a native tensor may be ``op``'s operand ``position``; for a matmul whose input
    comes (through axis moves) from a parameter of ``body``, that parameter's name."""
    if op.op == "tract_core_gather":
        return position == 0
    if op.op != "matmul" or position != 1:
        return False
    return _concat_free_source(body, op.args[0])


def _concat_free_source(graph: Graph, source: object) -> bool | str:
    while isinstance(source, Ref):
        producer = graph.producer(source.name)
        if producer is None:
            return source.name if any(v.name == source.name for v in graph.inputs) else True
        if producer.op == "concat":
            return False
        if producer.op not in _AXIS_OPS:
            return True
        source = producer.args[0]
    return True


def _call_keeps_native(graph: Graph, op: Operation, ok: dict[int, set[int]]) -> bool:
    for position, arg in enumerate(op.args):
        if not (isinstance(arg, Ref) and arg.name in graph.variables):
            continue
        if not is_native(graph.variables[arg.name]):
            continue
        if position not in ok:
            return False
        for k in ok[position]:
            if _concat_free_source(graph, op.args[k]) is False:
                return False
    return True


def inline_blocks_with_native_misuse(graph: Graph) -> list[str]:
    """Inline the fragments that a tract-native variable reaches other than through
    :func:`native_parameters`, so that the passes on stored tensors (row slices, folds,
    guards) and the native-use check see their ops; returns their names."""
    inlined = []
    for name, body in list(graph.blocks.items()):
        ok = native_parameters(body)
        calls = [op for op in graph.operations if op.op == name]
        if not all(_call_keeps_native(graph, op, ok) for op in calls):
            graph.inline(name)
            inlined.append(name)
            logger.info("fragment %s inlined: a tract-native weight needs graph passes", name)
    return inlined


def archive_files(graph: Graph) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(relative path, bytes producer)`` for every file of the archive, in a fixed order.

    Row slices of stored tensors that can cut their own rows are folded first, then
    per-channel affine ops after a conv with a tract-native filter (this changes ``graph``'s
    variables; :mod:`t2n_core.fold_scale` notes go to ``graph.notes``).
    """
    inline_blocks_with_native_misuse(graph)
    fold_row_slices(graph, is_native)
    fold_reshapes(graph)
    labelled = assign_file_labels(graph)  # the passes below may print labels
    graph.notes += fold_channel_affine(graph, is_native)
    inline_native_loop_weights(graph, is_native)
    guard_concat_before_native_matmul(graph, is_native)
    graph.notes += give_native_views(graph)
    assign_file_labels(graph, keep_first=labelled)  # variables the passes added
    attach_encodings(graph)
    check_native_uses(graph)
    graph_text = text.render(graph)
    yield "graph.nnef", lambda: graph_text.encode()
    for var in graph.variables.values():
        for ev in encoding_of(var).variables:
            yield f"{var.label}{ev.suffix}.dat", _dat_producer(ev)


_SAFE_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: longest label kept as is: with a codec suffix and ".dat" it stays under 255 bytes
MAX_LABEL = 200


def assign_file_labels(graph: Graph, keep_first: Collection[str] = ()) -> set[str]:
    """Give every variable a label that is a safe, unique file name (the ``.dat`` stem).

    A label (the state-dict name, e.g. ``encoder.0.weight``) is kept when it is made of
    letters, digits, ``_``, ``.``, ``-`` only, does not start with ``.`` or ``-``, is not
    too long and none of its files clashes with another's (compared case-insensitively, as
    on macOS and Windows file systems). Otherwise the variable's identifier is used (a module
    named ``/some/dir/head`` gets ``some_dir_head_weight``), with a ``_<n>`` suffix if taken.
    So no file of the archive can land outside it or overwrite another. Variables named in
    ``keep_first`` (labelled by an earlier call) are served first, so their labels hold.
    Returns the names of all variables.
    """
    taken: set[str] = set()
    ordered = sorted(graph.variables.values(), key=lambda v: v.name not in keep_first)
    for var in ordered:
        suffixes = [ev.suffix for ev in encoding_of(var).variables]

        def files(label: str, suffixes: list[str] = suffixes) -> set[str]:
            return {f"{label}{s}.dat".lower() for s in suffixes}

        label = var.label
        if not (_SAFE_LABEL.fullmatch(label) and len(label) <= MAX_LABEL) or files(label) & taken:
            base = var.name if len(var.name) <= MAX_LABEL else _shortened(var.name)
            label, n = base, 0
            while files(label) & taken:
                n += 1
                label = f"{base}_{n}"
            logger.info("tensor %r is stored as %s.dat", var.label, label)
        var.label = label
        taken |= files(label)
    return set(graph.variables)


def _shortened(name: str) -> str:
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_LABEL - 13]}_{digest}"


def header_of(ev: EncodedVariable, payload_size: int | None = None) -> dat.DatHeader:
    """The ``.dat`` header of an encoded variable (a tract type needs its payload size)."""
    if ev.custom_item_type is not None:
        size = ev.payload_size() if payload_size is None else payload_size
        return dat.DatHeader.for_tract_type(ev.custom_item_type, ev.shape, size)
    assert ev.dtype is not None
    return dat.DatHeader.for_dtype(ev.dtype, ev.shape)


def tensor_bytes_by_type(graph: Graph) -> dict[str, int]:
    """Payload bytes of every variable, by ``.dat`` item type name (as ``inspect`` reports)."""
    totals: Counter[str] = Counter()
    for var in graph.variables.values():
        for ev in encoding_of(var).variables:
            header = header_of(ev)
            totals[header.type_name()] += header.data_length
    return dict(sorted(totals.items()))


def _dat_producer(ev: EncodedVariable) -> Callable[[], list[bytes | memoryview]]:
    def produce() -> list[bytes | memoryview]:
        payload = ev.data()
        header = header_of(ev, len(payload))
        if ev.custom_item_type is None:
            if header.data_length != len(payload):
                raise ValueError(
                    f"payload of {ev.suffix or 'tensor'} has {len(payload)} bytes, header says "
                    f"{header.data_length}"
                )
        return [header.pack(), payload]  # written one after the other: no joined copy

    return produce

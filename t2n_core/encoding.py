"""How each stored tensor is written: its :class:`~t2n_core.storage.Encoding` (one or more
``.dat`` variables, and the fragment that decodes them), computed once per label."""

from __future__ import annotations

import logging

import torch

from t2n_core.errors import TranslationError
from t2n_core.ir import Graph, Variable
from t2n_core.nnef import dat
from t2n_core.storage import EncodedVariable, Encoding, NNEFStorage

logger = logging.getLogger(__name__)


def plain_encoding(tensor: torch.Tensor, label: str) -> Encoding:
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        logger.warning("tensor %r is bf16, which .dat cannot hold: written as f32", label)
        t = t.float()
    if t.dtype not in dat.supported_dtypes():
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

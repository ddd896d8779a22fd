"""Matmul weights outside ``nn.Linear`` / ``nn.Embedding`` / ``nn.Conv*``, as Hugging Face
models store them.

- ``transformers.pytorch_utils.Conv1D`` (GPT-2 and relatives) is a Linear whose weight is
  stored transposed, ``[in, out]``: :func:`linearize_conv1d` replaces it by the equivalent
  ``nn.Linear`` (weight ``[out, in]``), so that the codecs' blocks run along the input axis
  as tract's quantized matmul needs.
- Mixture-of-experts layers keep every expert's matrices in one 3-D parameter
  (``gate_up_proj``, ``up_proj``, ``down_proj``: ``[experts, out, in]``, the layout of
  ``transformers.integrations.moe.use_experts_implementation``): :func:`expert_weight_attrs`
  names them, and :func:`expert_incompatibility` says when a codec cannot take them.
  Experts stored ``[experts, in, out]`` (``is_transposed``, GPT-OSS) are first turned into the
  ``[experts, out, in]`` layout by :func:`untranspose_experts`, for the same reason as Conv1D.
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from t2n_core.deferred import DeferredTensor
from t2n_quant.codecs import Codec, Q4_0Codec

logger = logging.getLogger(__name__)

#: the 3-D parameters of a transformers experts module
EXPERT_ATTRS = ("gate_up_proj", "up_proj", "down_proj")


def linearize_conv1d(model: nn.Module) -> list[str]:
    """Replace every transformers ``Conv1D`` in ``model`` by an ``nn.Linear`` computing the same
    function (weight transposed to ``[out, in]``); returns the module paths replaced.

    >>> from transformers.pytorch_utils import Conv1D
    >>> model = nn.Sequential(Conv1D(8, 4))
    >>> linearize_conv1d(model), type(model[0]).__name__, tuple(model[0].weight.shape)
    (['0'], 'Linear', (8, 4))
    """
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    if conv1d is None:  # transformers not imported: the model cannot hold one
        return []
    replaced: dict[int, nn.Linear] = {}
    paths: list[str] = []
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(module, conv1d) or not path:
            continue
        if id(module) not in replaced:
            linear = _linear_from(module)
            if linear is None:
                logger.warning("Conv1D %r: its deferred weight is transformed, left as it is", path)
                continue
            replaced[id(module)] = linear
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path), attr, replaced[id(module)])
        paths.append(path)
    if paths:
        logger.info(
            "%d transformers Conv1D layer(s) (weight stored [in, out]) replaced by the "
            "equivalent nn.Linear to quantize their weights: %s",
            len(paths), _first_few(paths),
        )  # fmt: skip
    return paths


def _first_few(paths: list[str], shown: int = 4) -> str:
    """``paths`` joined for a log line, the first ``shown`` of them then ``...``."""
    return ", ".join(paths[:shown]) + (", ..." if len(paths) > shown else "")


def _linear_from(conv: nn.Module) -> nn.Linear | None:
    weight: torch.Tensor = conv.weight
    n_in, n_out = weight.shape
    linear = nn.Linear(n_in, n_out, bias=conv.bias is not None, device="meta", dtype=weight.dtype)
    if isinstance(weight, DeferredTensor):  # not read yet (streamed): read it transposed
        if weight.transform is not None:
            return None
        src = weight

        def read(begin: int, end: int) -> torch.Tensor:
            return src.read(*src.row_range).t()[begin:end]

        linear._parameters["weight"] = DeferredTensor(
            read, (n_out, n_in), weight.dtype, name=weight.tensor_name
        )
    else:
        linear.weight = nn.Parameter(weight.detach().t().contiguous(), weight.requires_grad)
    if conv.bias is not None:
        linear._parameters["bias"] = conv.bias
    return linear.train(conv.training)


def untranspose_experts(model: nn.Module) -> list[str]:
    """Store the 3-D weights of every transformers experts module kept ``[experts, in, out]``
    (``is_transposed``) as ``[experts, out, in]`` and clear ``is_transposed``, so that the
    codecs' blocks run along the input axis; returns the module paths changed.

    transformers' experts implementations (``grouped_mm``, ``batched_mm``, t2n's) read the
    layout from ``is_transposed``; a model running the module's own ``eager`` forward, which
    hard-codes ``[in, out]``, is left as it is (:func:`expert_incompatibility` says why).
    """
    paths: list[str] = []
    for path, module in model.named_modules():
        attrs = expert_weight_attrs(module)
        if not attrs or not module.is_transposed or _runs_own_forward(module):
            continue
        new = {a: _transposed_experts(module._parameters[a]) for a in attrs}
        if any(t is None for t in new.values()):
            logger.warning("experts %r: a deferred weight is transformed, left as it is", path)
            continue
        for attr, tensor in new.items():
            module._parameters[attr] = tensor
        module.is_transposed = False
        paths.append(path)
    if paths:
        logger.info(
            "%d MoE experts layer(s) stored [experts, in, out] switched to [experts, out, in] "
            "(is_transposed=False) to quantize their weights: %s",
            len(paths), _first_few(paths),
        )  # fmt: skip
    return paths


class TransposedExperts(nn.Module):
    """Parametrization: the module reads ``original.transpose(1, 2)``, ``original`` being
    stored ``[experts, out, in]`` (see :func:`untranspose_bmm_experts`)."""

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original.transpose(1, 2)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().transpose(1, 2).contiguous()


def untranspose_bmm_experts(model: nn.Module) -> list[str]:
    """Store the 3-D expert weights of a module that is not a transformers experts-interface
    module (Llama 4's ``Llama4TextExperts``: ``[experts, in, out]``, run by
    ``torch.bmm(x, weight)``) as ``[experts, out, in]``, the module reading their transpose
    through a parametrization (same values); returns the weights changed.

    The codecs' blocks then run along the input axis, the one ``bmm`` reduces over and tract's
    quantized matmul needs; at export each expert's matrix is cut out of the stored tensor
    (as for the interface's experts) and ``bmm`` runs one matmul per expert.
    """
    from torch.nn.utils import parametrize

    paths: list[str] = []
    for path, module in list(model.named_modules()):
        if hasattr(module, "has_gate") or isinstance(module, parametrize.ParametrizationList):
            continue
        for attr in EXPERT_ATTRS:
            weight = module._parameters.get(attr)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
                continue
            if not weight.dtype.is_floating_point or isinstance(weight, DeferredTensor):
                continue
            if weight.device.type == "meta" or type(weight).__name__ == "QTensor":
                continue
            parametrize.register_parametrization(module, attr, TransposedExperts())
            paths.append(f"{path}.{attr}" if path else attr)
    if paths:
        logger.info(
            "%d 3-D expert weight(s) [experts, in, out] stored as [experts, out, in] (read "
            "transposed) to quantize them along their input axis: %s",
            len(paths), _first_few(paths),
        )  # fmt: skip
    return paths


def to_stored_layout(model: nn.Module) -> None:
    """Lay ``model``'s matmul weights out as quantize_model stores them, in place: Conv1D as
    ``nn.Linear``, every expert weight ``[experts, out, in]`` (:func:`linearize_conv1d`,
    :func:`untranspose_experts`, :func:`untranspose_bmm_experts`)."""
    linearize_conv1d(model)
    untranspose_experts(model)
    untranspose_bmm_experts(model)


def _runs_own_forward(module: nn.Module) -> bool:
    """Whether the module's own forward runs (``eager``), not one of the interface's."""
    config = getattr(module, "config", None)
    return getattr(config, "_experts_implementation", None) in (None, "eager")


def _transposed_experts(weight: torch.Tensor) -> torch.Tensor | None:
    if isinstance(weight, DeferredTensor):  # not read yet (streamed): read it transposed
        if weight.transform is not None:
            return None
        src, first = weight, weight.row_range[0]

        def read(begin: int, end: int) -> torch.Tensor:
            return src.read(first + begin, first + end).transpose(1, 2)

        experts, n_in, n_out = weight.shape
        return DeferredTensor(read, (experts, n_out, n_in), weight.dtype, name=weight.tensor_name)
    return nn.Parameter(weight.detach().transpose(1, 2).contiguous(), weight.requires_grad)


def expert_weight_attrs(module: nn.Module) -> tuple[str, ...]:
    """The 3-D expert matrices of a transformers experts module, or the ``original`` of an
    expert weight stored ``[experts, out, in]`` by :func:`untranspose_bmm_experts` (``()``
    for other modules)."""
    if _is_untransposed(module):
        return ("original",)
    if not hasattr(module, "is_transposed") or not hasattr(module, "has_gate"):
        return ()
    return tuple(
        a for a in EXPERT_ATTRS
        if isinstance(module._parameters.get(a), torch.Tensor) and module._parameters[a].dim() == 3
    )  # fmt: skip


def _is_untransposed(module: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return (
        isinstance(module, parametrize.ParametrizationList)
        and len(module) == 1
        and isinstance(module[0], TransposedExperts)
        and isinstance(module._parameters.get("original"), torch.Tensor)
        and module._parameters["original"].dim() == 3
    )


def expert_incompatibility(module: nn.Module, shape: tuple[int, ...], codec: Codec) -> str | None:
    """Why ``codec`` cannot take a ``[experts, out, in]`` weight of ``module``, or ``None``.

    Each expert's matrix is cut out of the stored tensor at export (rows of dim 0, then the
    leading axis dropped), so the codec's groups must lie within one row of one expert.
    """
    if getattr(module, "is_transposed", False) and isinstance(codec, Q4_0Codec):
        return (
            "experts stored [experts, in, out] (is_transposed) and run by the module's own "
            "eager forward, which reads that layout: q4_0 blocks would run along the output "
            "axis, not the input axis tract's quantized matmul reduces over (set "
            "config._experts_implementation = 'grouped_mm' to have them transposed and "
            "quantized)"
        )
    per_expert = codec.incompatibility(tuple(shape[1:]))
    if per_expert is not None:
        return f"one expert's matrix {tuple(shape[1:])}: {per_expert}"
    if codec.block_size(shape[-1]) != codec.block_size(shape[1] * shape[2]):
        return (
            f"{codec.spec} groups a whole expert's matrix at once (one group per row of dim "
            "0); use a group size that divides the input size"
        )
    return None

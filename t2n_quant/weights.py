"""Which weights of a model ``quantize_model`` can quantize: the matmul weights of the
supported modules (and of transformers MoE layers), each once however many modules share it,
and why a weight is skipped for a codec. Shared by :mod:`t2n_quant.swap`, :mod:`t2n_quant.plan`
and :mod:`t2n_quant.compare`."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from t2n_quant.codecs import Codec, Q4_0Codec
from t2n_quant.matmul_weights import expert_incompatibility, expert_weight_attrs
from t2n_quant.qtensor import QTensor

SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.MultiheadAttention, nn.RNNBase,
)  # fmt: skip
#: the parameters of a module that are matmul weights ("weight" for the others)
_WEIGHT_ATTRS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
}
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d)


def weight_attrs(module: nn.Module) -> tuple[str, ...]:
    if isinstance(module, nn.RNNBase):  # LSTM / GRU / RNN: input, hidden (and projection)
        # matrices of every layer and direction; the biases stay float
        return tuple(n for n in module._flat_weights_names if n.startswith("weight_"))
    return _WEIGHT_ATTRS.get(type(module), ("weight",))


@dataclass
class Weight:
    param: torch.Tensor
    attr: str = "weight"
    users: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def name(self) -> str:
        path = self.users[0][0]
        return f"{path}.{self.attr}" if path else self.attr

    @property
    def module_type(self) -> str:
        return "/".join(sorted({type(m).__name__ for _, m in self.users}))


def glob_list(p: str | Sequence[str] | None) -> list[str] | None:
    return None if p is None else [p] if isinstance(p, str) else list(p)


def filter_reason(path: str, include: list[str] | None, exclude: list[str] | None) -> str | None:
    if include is not None and not any(fnmatch.fnmatchcase(path, g) for g in include):
        return f"not matched by include={include}"
    for g in exclude or []:
        if fnmatch.fnmatchcase(path, g):
            return f"matched exclude pattern {g!r}"
    return None


def skip_reason(w: Weight, codec: Codec, min_numel: int) -> str | None:
    p = w.param
    if isinstance(p, QTensor):
        return f"already quantized ({p.codec.spec})"
    if not p.dtype.is_floating_point:
        return f"dtype {p.dtype} is not floating point"
    if p.device.type == "meta":
        return "weight is on the meta device (no values to quantize)"
    if p.numel() < min_numel:
        return f"{p.numel()} values < min_numel={min_numel}"
    for _, m in w.users:
        if isinstance(m, nn.Embedding) and m.max_norm is not None:
            return "Embedding with max_norm renormalizes its weight in place"
        if isinstance(m, _TRANSPOSED) and isinstance(codec, Q4_0Codec):
            return (
                "q4_0 cannot serve ConvTranspose: NNEF deconv takes the filter as "
                "[C_out, C_in, ...], the transpose of PyTorch's layout, so blocks would not line up"
            )
        if w.attr in expert_weight_attrs(m):
            return expert_incompatibility(m, tuple(p.shape), codec)
    return codec.incompatibility(tuple(p.shape))


def codec_misfit(w: Weight, codec: Codec, min_numel: int) -> bool:
    """Whether ``w`` is skipped only because of ``codec`` (a fallback codec may take it)."""
    p = w.param
    if isinstance(p, QTensor) or not p.dtype.is_floating_point or p.device.type == "meta":
        return False
    if p.numel() < min_numel:
        return False
    return not any(isinstance(m, nn.Embedding) and m.max_norm is not None for _, m in w.users)


def collect_weights(model: nn.Module) -> list[Weight]:
    weights: dict[int, Weight] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        attrs = expert_weight_attrs(module)
        if isinstance(module, SUPPORTED_MODULES):
            attrs = weight_attrs(module)
        for attr in attrs:
            param = module._parameters.get(attr)
            if param is None:
                continue
            w = weights.setdefault(id(param), Weight(param, attr))
            if all(m is not module for _, m in w.users):
                w.users.append((path, module))
    return list(weights.values())

"""scaled_dot_product_attention, MultiheadAttention and Transformer encoder layers in tract."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from t2n_core.errors import TranslationError
from tests.helpers import export_and_check


class SDPA(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **self.kwargs)


class MaskedSDPA(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.kwargs)


def qkv(t: int, s: int | None = None, heads: int = 2, kv_heads: int | None = None):
    s = t if s is None else s
    kv_heads = heads if kv_heads is None else kv_heads
    return (
        torch.randn(2, heads, t, 8),
        torch.randn(2, kv_heads, s, 8),
        torch.randn(2, kv_heads, s, 8),
    )


SELF_AXES = {"q": {2: "T"}, "k": {2: "T"}, "v": {2: "T"}}
CROSS_AXES = {"q": {2: "T"}, "k": {2: "S"}, "v": {2: "S"}}


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"is_causal": True}, {"scale": 0.3}, {"is_causal": True, "scale": 0.5}],
    ids=["plain", "causal", "scale", "causal-scale"],
)
def test_sdpa_self_dynamic_length(kwargs, tmp_path):
    result = export_and_check(
        SDPA(**kwargs), qkv(5), tmp_path, dynamic_axes=SELF_AXES, check_inputs=[qkv(9)]
    )
    assert result.op_histogram["tract_transformers_sdpa"] == 1


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal-top-left"])
def test_sdpa_cross_lengths(causal, tmp_path):
    """Query and key lengths differ; torch's causal mask is aligned top-left."""
    export_and_check(
        SDPA(is_causal=causal), qkv(4, 7), tmp_path, dynamic_axes=CROSS_AXES,
        check_inputs=[qkv(6, 3), qkv(2, 9)],
    )  # fmt: skip


def test_sdpa_3d(tmp_path):
    args = tuple(a[0] for a in qkv(5))
    axes = {"q": {1: "T"}, "k": {1: "T"}, "v": {1: "T"}}
    other = tuple(a[0] for a in qkv(8))
    export_and_check(SDPA(is_causal=True), args, tmp_path, dynamic_axes=axes, check_inputs=[other])


def _bool_mask(shape):
    m = torch.rand(*shape) > 0.4
    m[..., 0] = True  # every query sees at least one key
    return m


# (id, mask shape given T, dynamic axes of the mask)
MASKS = [
    ("square", lambda t: (t, t), {0: "T", 1: "T"}),
    ("per-batch", lambda t: (2, 1, t, t), {2: "T", 3: "T"}),
    ("per-head", lambda t: (1, 2, t, t), {2: "T", 3: "T"}),
    ("full", lambda t: (2, 2, t, t), {2: "T", 3: "T"}),
    ("key-padding", lambda t: (2, 1, 1, t), {3: "T"}),
]


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape,mask_axes", [m[1:] for m in MASKS], ids=[m[0] for m in MASKS])
def test_sdpa_mask(kind, shape, mask_axes, tmp_path):
    def inputs(t):
        mask = _bool_mask(shape(t))
        if kind == "float":
            mask = torch.where(mask, torch.randn(mask.shape), torch.tensor(float("-inf")))
        return (*qkv(t), mask)

    axes = {**SELF_AXES, "mask": mask_axes}
    export_and_check(MaskedSDPA(), inputs(5), tmp_path, dynamic_axes=axes, check_inputs=[inputs(8)])


def test_sdpa_scale_and_mask(tmp_path):
    def inputs(t):
        return (*qkv(t), torch.randn(t, t))

    export_and_check(
        MaskedSDPA(scale=0.2), inputs(5), tmp_path,
        dynamic_axes={**SELF_AXES, "mask": {0: "T", 1: "T"}}, check_inputs=[inputs(7)],
    )  # fmt: skip


def test_sdpa_grouped_query(tmp_path):
    export_and_check(
        SDPA(is_causal=True, enable_gqa=True), qkv(5, heads=4, kv_heads=2), tmp_path,
        dynamic_axes=SELF_AXES, check_inputs=[qkv(8, heads=4, kv_heads=2)],
    )  # fmt: skip


class CausalFromMask(nn.Module):
    """A causal mask built in the model from the dynamic length (tril of ones)."""

    def forward(self, q, k, v):
        t = q.shape[-2]
        mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_sdpa_model_built_causal_mask(tmp_path):
    result = export_and_check(
        CausalFromMask(), qkv(5), tmp_path, dynamic_axes=SELF_AXES, check_inputs=[qkv(9)]
    )
    assert "tract_core_trilu" in result.op_histogram


class CausalFromArange(nn.Module):
    """A causal mask built from ``torch.arange`` comparisons, as many LLM codebases do."""

    def forward(self, q, k, v):
        i = torch.arange(q.shape[-2])
        mask = i[None, :] <= i[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_sdpa_arange_causal_mask(tmp_path):
    export_and_check(
        CausalFromArange(), qkv(5), tmp_path, dynamic_axes=SELF_AXES, check_inputs=[qkv(9)]
    )


class SelfAttention(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool = False, **kwargs):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, **kwargs)
        self.need_weights = need_weights

    def forward(self, x):
        out, weights = self.mha(x, x, x, need_weights=self.need_weights)
        return (out, weights) if self.need_weights else out


def _seq(t: int, batch_first: bool, dim: int = 16) -> torch.Tensor:
    return torch.randn(2, t, dim) if batch_first else torch.randn(t, 2, dim)


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
@pytest.mark.parametrize("need_weights", [False, True], ids=["sdpa", "with-weights"])
def test_mha_self_attention(batch_first, need_weights, tmp_path):
    axis = 1 if batch_first else 0
    export_and_check(
        SelfAttention(batch_first, need_weights), (_seq(5, batch_first),), tmp_path,
        dynamic_axes={"x": {axis: "T"}}, check_inputs=[(_seq(9, batch_first),)],
    )  # fmt: skip


class CrossAttention(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=12, vdim=10)

    def forward(self, x, memory, values):
        return self.mha(x, memory, values, need_weights=False)[0]


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
def test_mha_cross_attention(batch_first, tmp_path):
    a = 1 if batch_first else 0

    def inputs(t, s):
        return _seq(t, batch_first), _seq(s, batch_first, 12), _seq(s, batch_first, 10)

    export_and_check(
        CrossAttention(batch_first), inputs(5, 7), tmp_path,
        dynamic_axes={"x": {a: "T"}, "memory": {a: "S"}, "values": {a: "S"}},
        check_inputs=[inputs(3, 8)],
    )  # fmt: skip


class PaddedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x, padding):
        return self.mha(x, x, x, key_padding_mask=padding, need_weights=False)[0]


def test_mha_key_padding_mask(tmp_path):
    def inputs(t):
        padding = torch.zeros(2, t, dtype=torch.bool)
        padding[1, -2:] = True  # the second sequence is two tokens shorter
        return torch.randn(2, t, 16), padding

    export_and_check(
        PaddedAttention(), inputs(6), tmp_path,
        dynamic_axes={"x": {1: "T"}, "padding": {1: "T"}}, check_inputs=[inputs(9)],
    )  # fmt: skip


class CausalMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.mha(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]


def test_mha_causal_mask(tmp_path):
    export_and_check(
        CausalMHA(), (torch.randn(2, 6, 16),), tmp_path, dynamic_axes={"x": {1: "T"}},
        check_inputs=[(torch.randn(2, 9, 16),)],
    )  # fmt: skip


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
def test_transformer_encoder_layer(norm_first, activation, batch_first, tmp_path):
    layer = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.0, activation=activation, batch_first=batch_first,
        norm_first=norm_first,
    )  # fmt: skip
    axis = 1 if batch_first else 0
    export_and_check(
        layer, (_seq(5, batch_first),), tmp_path, dynamic_axes={"src": {axis: "T"}},
        check_inputs=[(_seq(8, batch_first),)],
    )  # fmt: skip


class Encoder(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.causal = causal

    def forward(self, x):
        if not self.causal:
            return self.encoder(x)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.encoder(x, mask=mask, is_causal=True)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_transformer_encoder_two_layers(causal, tmp_path):
    export_and_check(
        Encoder(causal), (torch.randn(2, 5, 16),), tmp_path, dynamic_axes={"x": {1: "T"}},
        check_inputs=[(torch.randn(2, 11, 16),)],
    )  # fmt: skip


def test_sdpa_dropout_is_refused(tmp_path):
    with pytest.raises(TranslationError, match="dropout_p"):
        export_and_check(SDPA(dropout_p=0.1), qkv(5), tmp_path)

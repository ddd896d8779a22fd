"""Tiny Hugging Face models of many vision / encoder / audio families, built in code with
weights that make every output meaningful (no download, no network).

``FAMILIES[name]()`` returns ``(module, example args)``; the module returns one tensor
(logits or last hidden state). :func:`lively_init` replaces the library's initialisation,
whose small or zero weights make some outputs constant (EfficientNet's logits are exactly 0,
MobileNetV2's ~1e-25), so that a check of such a model would test nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import transformers as tf
from torch import nn


class Head(nn.Module):
    """``model(*args)`` reduced to one tensor: ``.logits`` or the first output."""

    def __init__(self, model: nn.Module, field: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        value = getattr(out, self.field, None)
        return value if value is not None else out[0]


def lively_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights ~ N(0, 1/fan_in), norms near identity with spread, batch-norm statistics that
    differ per channel: activations keep unit scale through any depth."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() >= 2:
                fan_in = math.prod(p.shape[1:])
                if isinstance(_owner(model, name), nn.Embedding):
                    fan_in = 1  # a lookup table: unit-scale rows
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(fan_in, 1)))
            elif leaf == "weight" or "gamma" in leaf or "scale" in leaf:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    path = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return model.get_submodule(path) if path else model


def _image(size: int = 32, channels: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _ids(vocab: int, n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _vision(model_cls: Any, config: Any, size: int = 32, field: str = "logits") -> Callable:
    def build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        torch.manual_seed(0)
        model = lively_init(model_cls(config))
        return Head(model, field), (_image(size, config.num_channels),)

    return build


def _text(model_cls: Any, config: Any, field: str = "last_hidden_state") -> Callable:
    def build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        torch.manual_seed(0)
        model = lively_init(model_cls(config))
        return Head(model, field), (_ids(config.vocab_size),)

    return build


_TEXT = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=128, max_position_embeddings=32)  # fmt: skip


def _whisper() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    config = tf.WhisperConfig(
        num_mel_bins=16, d_model=64, encoder_layers=2, encoder_attention_heads=2,
        decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=16, vocab_size=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = lively_init(tf.WhisperModel(config).get_encoder())
    mel = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))
    return Head(encoder, "last_hidden_state"), (mel,)


def _wav2vec2(model_cls: Any = tf.Wav2Vec2Model, config_cls: Any = tf.Wav2Vec2Config) -> Callable:
    def build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        config = config_cls(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True,
        )  # fmt: skip
        torch.manual_seed(0)
        model = lively_init(model_cls(config))
        wave = torch.randn(1, 400, generator=torch.Generator().manual_seed(1))
        return Head(model, "last_hidden_state"), (wave,)

    return build


_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            image_size=32, patch_size=8)  # fmt: skip

FAMILIES: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "resnet": _vision(tf.ResNetForImageClassification, tf.ResNetConfig(
        embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck",
        num_labels=10)),
    "mobilenet_v2": _vision(tf.MobileNetV2ForImageClassification, tf.MobileNetV2Config(
        depth_multiplier=0.35, image_size=32, num_labels=10)),
    "efficientnet": _vision(tf.EfficientNetForImageClassification, tf.EfficientNetConfig(
        width_coefficient=0.25, depth_coefficient=0.2, image_size=32, hidden_dim=320,
        num_labels=10)),
    "mobilevit": _vision(tf.MobileViTForImageClassification, tf.MobileViTConfig(
        image_size=32, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[16, 16, 24, 24, 32, 32, 64],
        num_attention_heads=2, num_labels=10)),
    "segformer": _vision(tf.SegformerForSemanticSegmentation, tf.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[32, 64],
        num_attention_heads=[1, 2], decoder_hidden_size=64, num_labels=5)),
    "dpt": _vision(tf.DPTForDepthEstimation, tf.DPTConfig(
        **{**_VIT, "num_hidden_layers": 4}, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, head_hidden_size=16,
        readout_type="project"), field="predicted_depth"),
    "swin": _vision(tf.SwinForImageClassification, tf.SwinConfig(
        image_size=32, patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 2],
        window_size=4, num_labels=10)),
    "vit": _vision(tf.ViTForImageClassification, tf.ViTConfig(**_VIT, num_labels=10)),
    "deit": _vision(tf.DeiTForImageClassification, tf.DeiTConfig(**_VIT, num_labels=10)),
    "beit": _vision(tf.BeitForImageClassification, tf.BeitConfig(
        **_VIT, use_relative_position_bias=True, num_labels=10)),
    "dinov2": _vision(tf.Dinov2Model, tf.Dinov2Config(**_VIT), field="pooler_output"),
    "convnext": _vision(tf.ConvNextForImageClassification, tf.ConvNextConfig(
        hidden_sizes=[32, 64], depths=[1, 1], num_stages=2, num_labels=10)),
    "convnextv2": _vision(tf.ConvNextV2ForImageClassification, tf.ConvNextV2Config(
        hidden_sizes=[32, 64], depths=[1, 1], num_stages=2, num_labels=10)),
    "regnet": _vision(tf.RegNetForImageClassification, tf.RegNetConfig(
        embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1], groups_width=16,
        num_labels=10)),
    "poolformer": _vision(tf.PoolFormerForImageClassification, tf.PoolFormerConfig(
        hidden_sizes=[32, 64], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3],
        strides=[4, 2], padding=[2, 1], num_labels=10)),
    "bert": _text(tf.BertModel, tf.BertConfig(**_TEXT)),
    "roberta": _text(tf.RobertaModel, tf.RobertaConfig(**_TEXT, pad_token_id=1)),
    "distilbert": _text(tf.DistilBertModel, tf.DistilBertConfig(
        vocab_size=96, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
        max_position_embeddings=32)),
    "albert": _text(tf.AlbertModel, tf.AlbertConfig(**_TEXT, embedding_size=32)),
    "electra": _text(tf.ElectraModel, tf.ElectraConfig(**_TEXT, embedding_size=32)),
    "deberta_v2": _text(tf.DebertaV2Model, tf.DebertaV2Config(
        **_TEXT, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1)),
    "whisper_encoder": _whisper,
    "wav2vec2": _wav2vec2(),
    "hubert": _wav2vec2(tf.HubertModel, tf.HubertConfig),
}  # fmt: skip

"""Repeated blocks are captured once and written once as an NNEF fragment, called per instance.

Each test checks the archive in tract against PyTorch, that the fragment is defined once and
called once per instance, and (where it matters) that the flat export says the same.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from t2n_core.blocks import find_repeated
from t2n_core.nnef.dat import DatHeader
from t2n_quant import quantize_model
from tests.helpers import export_and_check


def graph_text(path) -> str:
    return (path / "graph.nnef").read_text()


def calls(text: str, fragment: str) -> int:
    return len(re.findall(rf"= {fragment}\(", text))


def encoder(layers: int = 3, dim: int = 16) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


class ConvBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class BasicBlock(nn.Module):
    """A ResNet basic block; the first of a stage changes width and has a downsample."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + skip)


def randomize_norms(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_transformer_encoder_one_fragment_called_per_layer(tmp_path):
    model = encoder(layers=4)
    x = torch.randn(2, 5, 16)
    result = export_and_check(
        model, (x,), tmp_path, name="frag.nnef", dynamic_axes={"src": {1: "T"}},
        check_inputs=[(torch.randn(2, 9, 16),)],
    )  # fmt: skip
    text = graph_text(result.path)
    assert text.count("fragment block_transformer_encoder_layer(") == 1
    assert calls(text, "block_transformer_encoder_layer") == 4
    # every layer's weights are its own variables, passed to its call
    for i in range(4):
        assert f"layers_{i}_linear1_weight" in text
    flat = export_and_check(
        model, (x,), tmp_path, name="flat.nnef", dynamic_axes={"src": {1: "T"}}, fragments=False
    )
    assert "fragment block_" not in graph_text(flat.path)
    assert len(text) < len(graph_text(flat.path))
    assert result.op_histogram == flat.op_histogram  # the summary counts ops inside calls
    from t2n_core.inspect import inspect_archive

    info = inspect_archive(result.path)  # so does inspect, and it says which calls it counted
    assert info.op_histogram == result.op_histogram
    assert info.fragment_calls == {"block_transformer_encoder_layer": 4}
    assert "block_transformer_encoder_layer  4" in str(info)


def test_stack_of_conv1d_blocks_dynamic_length(tmp_path):
    torch.manual_seed(0)
    model = randomize_norms(nn.Sequential(*[ConvBlock(8) for _ in range(3)], nn.Conv1d(8, 4, 1)))
    result = export_and_check(
        model, (torch.randn(1, 8, 12),), tmp_path, name="c.nnef", dynamic_axes={"input": {2: "T"}},
        check_inputs=[(torch.randn(1, 8, 20),)],
    )  # fmt: skip
    text = graph_text(result.path)
    assert text.count("fragment block_conv_block(") == 1
    assert calls(text, "block_conv_block") == 3


def test_resnet_stage_blocks_differing_in_shape_are_distinct(tmp_path):
    torch.manual_seed(0)
    stage = [BasicBlock(4, 8), BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 16)]
    stage += [BasicBlock(16, 16), BasicBlock(16, 16)]
    model = randomize_norms(nn.Sequential(*stage))
    assert set(find_repeated(model)) == {"1", "2", "4", "5"}
    result = export_and_check(model, (torch.randn(1, 4, 6, 6),), tmp_path, name="r.nnef")
    text = graph_text(result.path)
    assert text.count("fragment block_basic_block") == 2  # one per width that repeats
    assert calls(text, "block_basic_block") == 2 and calls(text, "block_basic_block_1") == 2


def test_q4_0_weights_reach_matmul_through_fragment_arguments(tmp_path):
    model = encoder(layers=3, dim=64)
    quantize_model(model, "q4_0", progress=False)
    x = torch.randn(1, 6, 64)
    result = export_and_check(
        model, (x,), tmp_path, name="q.nnef", dynamic_axes={"src": {1: "T"}}, atol=1e-3,
        rtol=1e-3,
    )  # fmt: skip
    text = graph_text(result.path)
    assert calls(text, "block_transformer_encoder_layer") == 3
    # the q4_0 weights are stored natively and declared once, at graph level
    raw = (result.path / "layers.1.linear1.weight.dat").read_bytes()
    assert DatHeader.unpack(raw).type_name() == "q4_0"
    assert re.search(r"layers_1_linear1_weight = variable<scalar>", text)


def test_fragment_codec_weights_are_dequantized_before_the_call(tmp_path):
    model = encoder(layers=3, dim=32)
    quantize_model(model, "minmax:4:g16", progress=False)
    x = torch.randn(1, 6, 32)
    result = export_and_check(model, (x,), tmp_path, name="m.nnef", atol=1e-3, rtol=1e-3)
    text = graph_text(result.path)
    assert calls(text, "block_transformer_encoder_layer") == 3
    body = text.split("fragment block_transformer_encoder_layer(")[1].split("\n}")[0]
    assert "variable<" not in body  # weights come in as (dequantized) arguments


class Unexportable(nn.Module):
    """A block whose own capture fails (data-dependent branch on its input)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


def test_block_capture_failure_falls_back_to_flat_with_a_warning(tmp_path, caplog, monkeypatch):
    import t2n_core.capture as capture_mod

    def fail(*args, **kwargs):
        raise RuntimeError("cannot capture this block alone")

    monkeypatch.setattr(capture_mod, "_export_block", fail)
    torch.manual_seed(0)
    model = nn.Sequential(Unexportable(), Unexportable()).eval()
    with caplog.at_level(logging.WARNING, logger="t2n_core.capture"):
        result = export_and_check(model, (torch.randn(2, 4),), tmp_path, name="f.nnef")
    assert "captured flat" in caplog.text and "cannot capture this block alone" in caplog.text
    assert "fragment block_" not in graph_text(result.path)


def tiny_lm(config_cls: str, model_cls: str, layers: int, **extra) -> nn.Module:
    import transformers

    from tests.llm.families import _DECODER, randomize

    config = getattr(transformers, config_cls)(**{**_DECODER, "num_hidden_layers": layers, **extra})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config)
    randomize(model)
    return model.eval()


def test_llm_decoder_layers_one_fragment_with_their_kv_cache(tmp_path):
    """A 3-layer Llama with q4_0 weights: one fragment, called per layer with that layer's
    past k/v and its own (native q4_0) weights; tract matches at P=5 and P=0 (the check)."""
    from t2n_core.llm import export_causal_lm

    model = tiny_lm("LlamaConfig", "LlamaForCausalLM", 3)
    quantize_model(model, "q4_0", exclude=["lm_head"], progress=False)
    result = export_causal_lm(model, tmp_path / "llm.nnef", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    text = graph_text(result.path)
    assert text.count("fragment block_llama_decoder_layer(") == 1
    assert calls(text, "block_llama_decoder_layer") == 3
    call = re.search(r"\) = block_llama_decoder_layer\((.*)\);", text.split("graph network")[1])
    assert call is not None and "past_key_0" in call.group(1)
    assert re.search(r"\bmodel_model_layers_0_self_attn_q_proj_weight\b", call.group(1))
    assert "weight_view" not in text  # no dequantized copy: the q4_0 weights reach matmul as stored
    raw = (result.path / "model.model.layers.2.mlp.down_proj.weight.dat").read_bytes()
    assert DatHeader.unpack(raw).type_name() == "q4_0"


def test_llm_sliding_and_full_layers_are_distinct_fragments(tmp_path):
    """Gemma 3 alternating sliding-window and full attention: two fragments, two calls each."""
    from t2n_core.llm import export_causal_lm

    model = tiny_lm(
        "Gemma3TextConfig", "Gemma3ForCausalLM", 4, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
    )  # fmt: skip
    result = export_causal_lm(model, tmp_path / "gemma.nnef", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    text = graph_text(result.path)
    assert text.count("fragment block_gemma3_decoder_layer") == 2
    assert calls(text, "block_gemma3_decoder_layer") == 2
    assert calls(text, "block_gemma3_decoder_layer_1") == 2


def test_block_translation_failure_falls_back_to_flat(tmp_path, caplog, monkeypatch):
    import t2n_core.ops.blocks as block_ops
    from t2n_core.errors import TranslationError

    def fail(*args, **kwargs):
        raise TranslationError("this block cannot be a fragment")

    monkeypatch.setattr(block_ops, "_build", fail)
    torch.manual_seed(0)
    model = nn.Sequential(Unexportable(), Unexportable()).eval()
    with caplog.at_level(logging.WARNING, logger="t2n_core.export"):
        result = export_and_check(model, (torch.randn(2, 4),), tmp_path, name="t.nnef")
    assert "written flat" in caplog.text and "this block cannot be a fragment" in caplog.text
    assert "fragment block_" not in graph_text(result.path)


def test_q4_0_conv_with_batch_norm_stays_in_its_fragment(tmp_path, caplog):
    """The q4_0 filter is a fragment argument; the batch norm's multiply stays in the body
    behind max(y, y) (tract would fold it into the quantized kernel), nothing is folded per
    instance, so the fragment is kept, and tract agrees with the flat export."""
    torch.manual_seed(0)
    model = nn.Sequential(*[ConvBlock(32) for _ in range(3)])  # k = 96: q4_0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            nn.init.uniform_(m.weight, -0.5, 1.5)
            nn.init.normal_(m.bias)
    model = randomize_norms(model)
    quantize_model(model, "q4_0", progress=False)
    x = torch.randn(1, 32, 12)
    with caplog.at_level(logging.INFO, logger="t2n_core.native_uses"):
        result = export_and_check(
            model, (x,), tmp_path, name="q.nnef", dynamic_axes={"input": {2: "T"}},
            check_inputs=[(torch.randn(1, 32, 20),)],
        )  # fmt: skip
    assert "inlined" not in caplog.text
    text = graph_text(result.path)
    assert text.count("fragment block_conv_block(") == 1 and calls(text, "block_conv_block") == 3
    assert "max(conv_convolution, conv_convolution)" in text and "folded_weight" not in text
    raw = (result.path / "1.conv.weight.dat").read_bytes()
    assert DatHeader.unpack(raw).type_name() == "q4_0"
    flat = export_and_check(model, (x,), tmp_path, name="flat.nnef", fragments=False)
    assert "fragment block_" not in graph_text(flat.path)
    assert result.op_histogram == flat.op_histogram
    with torch.no_grad():
        assert float(model(x).std()) > 0.1



@pytest.mark.slow  # a Llama 4 export and its tract check: ~30 s
def test_complex_block_argument_crosses_the_fragment_call_as_its_real_view(tmp_path, caplog):
    """Llama 4's decoder layers take the complex rotary ``freqs_cis``: the block call passes
    its real view and the fragment takes the complex value back (was: written flat, with a
    warning naming the complex ``t2n.block`` calls)."""
    from t2n_core.llm import export_causal_lm
    from tests.llm.families import tiny

    with caplog.at_level(logging.WARNING):
        result = export_causal_lm(tiny("llama4_text"), tmp_path / "l4.nnef", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    assert "written flat" not in caplog.text and "captured flat" not in caplog.text
    text = graph_text(result.path)
    assert text.count("fragment block_llama4_text_decoder_layer(") == 1
    assert calls(text, "block_llama4_text_decoder_layer") == 2

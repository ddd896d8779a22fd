"""quantize_model: swapping weights, filters, tied weights, skips and the summary."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from t2n_quant import MinMaxConfig, QTensor, quantize_model
from t2n_quant.codecs import SymmetricCodec
from t2n_quant.errors import NonFiniteWeightError
from tests.quant.qhelpers import sqnr_db


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        self.conv1 = nn.Conv1d(64, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 4, padding=1)
        self.up = nn.ConvTranspose1d(32, 16, 2)
        self.odd = nn.Linear(48, 64)
        self.head = nn.Linear(64, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(idx)  # B T C
        h = self.conv1(h.transpose(1, 2))
        h = self.up(h).transpose(1, 2)  # B T' 16
        h = torch.cat([h, h, h], dim=-1)  # 48
        return self.head(self.odd(h)), self.conv2(img)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 50, (2, 7), generator=g), torch.randn(1, 4, 9, 9, generator=g)


@pytest.fixture
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


def test_q4_0_swaps_and_skips(model: Tiny) -> None:
    with torch.no_grad():
        ref = model(*inputs())
    summary = quantize_model(model, "q4_0", progress=False)
    assert model.embed.weight is model.head.weight
    assert isinstance(model.embed.weight, QTensor) and isinstance(model.conv1.weight, QTensor)
    assert isinstance(model.conv2.weight, QTensor)  # k = 4*4*4 = 64
    assert not isinstance(model.odd.weight, QTensor)
    assert not isinstance(model.up.weight, QTensor)
    names = [q.name for q in summary.quantized]
    assert names == ["embed.weight", "conv1.weight", "conv2.weight"]
    shared = summary.quantized[0]
    assert shared.modules == ("embed", "head")
    skipped = {s.name: s.reason for s in summary.skipped}
    assert "multiple of the group size 32" in skipped["odd.weight"]
    assert "ConvTranspose" in skipped["up.weight"]
    with torch.no_grad():
        out = model(*inputs())
    for a, b in zip(ref, out):
        assert sqnr_db(a, b) > 12
    assert [n for n, _ in model.named_parameters()].count("embed.weight") == 1


def test_fragment_codec_takes_all_layouts(model: Tiny) -> None:
    summary = quantize_model(model, MinMaxConfig(bits=4, group_size=16), progress=False)
    assert {q.name for q in summary.quantized} == {
        "embed.weight", "conv1.weight", "conv2.weight", "up.weight", "odd.weight"
    }  # fmt: skip
    assert summary.skipped == []
    with torch.no_grad():
        model(*inputs())


def test_include_exclude_and_tied(model: Tiny) -> None:
    s = quantize_model(model, "minmax:8:pc", include=["conv*", "head"], progress=False)
    assert {q.name for q in s.quantized} == {"conv1.weight", "conv2.weight"}
    reasons = {k.name: k.reason for k in s.skipped}
    assert "tied with 'embed'" in reasons["embed.weight"]
    assert "include" in reasons["odd.weight"]
    s2 = quantize_model(model, "symmetric:4:g16", exclude="conv2", progress=False)
    reasons = {k.name: k.reason for k in s2.skipped}
    assert "already quantized (minmax:8:pc)" in reasons["conv1.weight"]
    assert "exclude pattern 'conv2'" in reasons["conv2.weight"]
    assert model.embed.weight is model.head.weight
    assert isinstance(model.embed.weight, QTensor)
    assert model.embed.weight.codec == SymmetricCodec(4, 16)


def test_exclude_reason_and_min_numel(model: Tiny) -> None:
    s = quantize_model(model, "q4_0", exclude="conv*", min_numel=3000, progress=False)
    reasons = {k.name: k.reason for k in s.skipped}
    assert "exclude pattern 'conv*'" in reasons["conv1.weight"]
    assert [q.name for q in s.quantized] == ["embed.weight"]
    assert "min_numel" in reasons.get("odd.weight", "") or "multiple" in reasons["odd.weight"]


def test_summary_text_and_html(model: Tiny) -> None:
    s = quantize_model(model, "q4_0", calibration="mse", progress=False)
    text = str(s)
    assert "q4_0" in text and "calibration: mse" in text and "skipped" in text
    assert "embed.weight (shared by embed, head)" in text and "4.5" in text
    assert s.bytes_after < s.bytes_before / 6
    html = s._repr_html_()
    assert html.count("<table>") == 2 and "odd.weight" in html


def test_model_level_operations(model: Tiny) -> None:
    quantize_model(model, "minmax:4:g32", progress=True)
    before = model.conv1.weight.dequantize()
    clone = copy.deepcopy(model)
    assert clone.embed.weight is clone.head.weight and isinstance(clone.embed.weight, QTensor)
    sd = model.state_dict()
    assert isinstance(sd["conv1.weight"], QTensor)
    model.half()
    assert model.conv1.weight.dtype == torch.float16 and isinstance(model.conv1.weight, QTensor)
    model.float()
    assert torch.equal(model.conv1.weight.dequantize(), before)
    assert model.embed.weight is model.head.weight
    with torch.no_grad():
        model(*inputs())
    fresh = Tiny()
    fresh.load_state_dict(sd, assign=True)
    assert isinstance(fresh.conv1.weight, QTensor)


def test_nan_weight_raises_with_name(model: Tiny) -> None:
    with torch.no_grad():
        model.conv1.weight[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"'conv1.weight'"):
        quantize_model(model, "q4_0", progress=False)


def test_embedding_max_norm_skipped() -> None:
    m = nn.Sequential(nn.Embedding(10, 32, max_norm=1.0))
    s = quantize_model(m, "q4_0", progress=False)
    assert "max_norm" in s.skipped[0].reason


def test_multihead_attention_input_projections_are_quantized(tmp_path):
    from tests.helpers import export_and_check

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True).eval()
    summary = quantize_model(layer, "q4_0", progress=False)
    names = {q.name for q in summary.quantized}
    assert "self_attn.in_proj_weight" in names and "self_attn.out_proj.weight" in names
    result = export_and_check(layer, (torch.randn(1, 6, 64),), tmp_path)
    assert result.tensor_bytes["q4_0"] > 0


def test_fallback_codec_takes_what_q4_0_cannot(model: Tiny, tmp_path) -> None:
    import t2n_core

    idx, img = inputs()
    with torch.no_grad():
        ref = model(idx, img)
    summary = quantize_model(model, "q4_0", fallback="minmax:4:pc", progress=False)
    codecs = {q.name: q.codec for q in summary.quantized}
    assert codecs == {
        "embed.weight": "q4_0", "conv1.weight": "q4_0", "conv2.weight": "q4_0",
        "up.weight": "minmax:4:pc", "odd.weight": "minmax:4:pc",
    }  # fmt: skip
    assert summary.skipped == [] and summary.quantized_fraction == 1.0
    assert 4.0 < summary.bits_per_weight < 5.0
    assert "with fallback minmax:4:pc" in summary.headline()
    assert "bits per weight overall" in summary.headline()
    with torch.no_grad():
        out = model(idx, img)
    for a, b in zip(ref, out):
        assert sqnr_db(a, b) > 12
    result = t2n_core.export(model, (idx, img), tmp_path / "m.nnef.tgz", check=True, progress=False)
    assert result.check is not None and result.check.passed, str(result.check)


def test_overall_bits_count_float_weights() -> None:
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(48, 64, bias=False))
    summary = quantize_model(model, "q4_0", progress=False)
    assert summary.skipped[0].nbytes == 48 * 64 * 4
    expected = 8 * (summary.bytes_after + 48 * 64 * 4) / (64 * 64 + 48 * 64)
    assert summary.bits_per_weight == pytest.approx(expected)
    assert summary.quantized_fraction == pytest.approx(64 * 64 / (64 * 64 + 48 * 64))


@pytest.mark.parametrize("calibration", ["minmax", "gptq"])
def test_error_in_a_middle_layer_leaves_the_model_unchanged(calibration: str) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight[3, 5] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [torch.randn(4, 64)] if calibration == "gptq" else None
    with pytest.raises(NonFiniteWeightError, match=r"'2.weight'") as info:
        quantize_model(model, "q4_0", calibration=calibration, data=data, progress=False)
    assert "the model is unchanged" in "".join(getattr(info.value, "__notes__", []))
    assert not any(isinstance(p, QTensor) for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(v.nan_to_num(), after[k].nan_to_num()) for k, v in before.items())


class Unusual(nn.Module):
    """Most weights sit where quantize_model cannot reach them."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(64, 64))  # a bare parameter
        self.bilinear = nn.Bilinear(64, 64, 32)  # a module type quantize_model does not take
        self.out = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.pos[: x.shape[0]]
        return self.out(self.bilinear(h, h))


def test_float_weights_left_behind_are_listed_and_warned(caplog) -> None:
    with caplog.at_level("WARNING", logger="t2n_quant.swap"):
        s = quantize_model(Unusual(), "q4_0", progress=False)
    assert [q.name for q in s.quantized] == ["out.weight"]
    skipped = {k.name: k for k in s.skipped}
    assert {"pos", "bilinear.weight"} <= set(skipped)
    assert "a Bilinear parameter" in skipped["bilinear.weight"].reason
    assert "a Unusual parameter" in skipped["pos"].reason
    assert "most of the model stays float" in caplog.text
    assert any("most of the model stays float" in n for n in s.notes)
    assert s.quantized_fraction < 0.1


def test_a_pattern_matching_nothing_warns(caplog) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with caplog.at_level("WARNING", logger="t2n_quant.swap"):
        s = quantize_model(model, "q4_0", exclude=["lm_head"], progress=False)
    assert "exclude pattern 'lm_head' matches no module" in caplog.text
    assert len(s.quantized) == 2 and "most of the model" not in caplog.text


def test_quantizing_twice_is_not_called_mostly_float(caplog) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    quantize_model(model, "q4_0", progress=False)
    with caplog.at_level("WARNING", logger="t2n_quant.swap"):
        s = quantize_model(model, "q4_0", progress=False)
    assert all(k.reason.startswith("already quantized") for k in s.skipped)
    assert "most of the model" not in caplog.text

"""``compare``: per-layer and end-to-end accuracy of codecs and calibrations."""

import copy
import math

import matplotlib
import pytest
import torch
from torch import nn

from t2n_core.cli import main
from t2n_quant import quantize_model
from t2n_quant.compare import compare, sqnr
from t2n_quant.qtensor import QTensor

matplotlib.use("Agg")


def small_mlp():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()  # fmt: skip


@pytest.fixture
def mlp_comparison():
    model = small_mlp()
    specs = ["minmax:2:g32", "minmax:4:g32", "minmax:8:g32"]
    return model, compare(model, torch.randn(32, 64), specs, calibrations=["minmax", "mse"],
                          progress=False)  # fmt: skip


def test_sqnr_of_identical_is_inf():
    x = torch.randn(10, 10)
    assert sqnr(x, x.clone()) == math.inf
    assert sqnr(x, x + 0.01 * torch.randn(10, 10)) < math.inf


@pytest.mark.parametrize("cal", ["minmax", "mse"])
def test_more_bits_more_end_to_end_sqnr(mlp_comparison, cal):
    _, c = mlp_comparison
    rs = sorted((r for r in c.results if r.calibration == cal), key=lambda r: r.bits_per_weight)
    assert [r.spec for r in rs] == ["minmax:2:g32", "minmax:4:g32", "minmax:8:g32"]
    assert rs[0].sqnr < rs[1].sqnr < rs[2].sqnr
    assert rs[0].cosine < rs[2].cosine <= 1.0


def test_layer_rows_match_the_quantized_weights(mlp_comparison):
    model, c = mlp_comparison
    for r in c.results:
        assert [layer.name for layer in r.layers] == ["0.weight", "2.weight", "4.weight"]
        qmodel = copy.deepcopy(model)
        summary = quantize_model(qmodel, r.spec, calibration=r.calibration, progress=False)
        assert [q.name for q in summary.quantized] == [layer.name for layer in r.layers]
        for layer, i in zip(r.layers, (0, 2, 4)):
            q = qmodel[i].weight
            assert isinstance(q, QTensor) and layer.quantized
            assert layer.bits_per_weight == q.bits_per_weight
            assert layer.weight_sqnr == pytest.approx(sqnr(model[i].weight, q.dequantize()))
            assert layer.module == str(i) and layer.output_sqnr is not None
        assert r.bytes_after == summary.bytes_after
    table = c.layer_table().to_rows()
    assert [row["layer"] for row in table] == ["0.weight", "2.weight", "4.weight"]
    assert table[0]["minmax:8:g32 + minmax"] == c.results[4].layers[0].output_sqnr


def test_excluded_layers_stay_float_and_are_still_measured():
    model = small_mlp()
    c = compare(model, torch.randn(8, 64), ["minmax:4:g32"], exclude="2", progress=False)
    layers = c.results[0].layers
    assert [layer.quantized for layer in layers] == [True, False, True]
    assert layers[1].weight_sqnr == math.inf
    assert layers[1].output_sqnr < math.inf  # the error of layer 0 reaches it
    assert "float" in str(c.layer_table("weight"))


def test_model_is_left_as_it_was():
    model = small_mlp()
    before = copy.deepcopy(model.state_dict())
    compare(model, torch.randn(8, 64), ["q4_0"], progress=False)
    assert not any(isinstance(p, QTensor) for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model[0]._forward_hooks


def test_best_respects_the_bit_budget(mlp_comparison):
    _, c = mlp_comparison
    assert c.best().spec == "minmax:8:g32"
    best = c.best(max_bits=5)
    assert best.bits_per_weight <= 5 and best.spec == "minmax:4:g32"
    assert best.sqnr == max(r.sqnr for r in c.results if r.bits_per_weight <= 5)
    with pytest.raises(ValueError, match="no config fits max_bits=1"):
        c.best(max_bits=1)


def test_table_text_and_html(mlp_comparison):
    _, c = mlp_comparison
    text = str(c)
    assert "minmax:4:g32" in text and "worst layer" in text and "bits/w" in text
    assert "<table>" in c._repr_html_()
    rows = c.to_rows()
    assert len(rows) == 6 and rows[0]["spec"] == "minmax:2:g32"


@pytest.mark.parametrize("kind", ["layers", "tradeoff"])
def test_plot_returns_a_figure(mlp_comparison, kind, tmp_path):
    from matplotlib.figure import Figure

    _, c = mlp_comparison
    fig = c.plot(kind)
    assert isinstance(fig, Figure)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_bad_arguments_fail_before_any_work():
    with pytest.raises(ValueError, match="unknown codec"):
        compare(small_mlp(), torch.randn(2, 64), ["q9"], progress=False)
    with pytest.raises(ValueError, match="unknown calibration"):
        compare(small_mlp(), torch.randn(2, 64), ["q4_0"], calibrations=["nope"], progress=False)
    with pytest.raises(ValueError, match="metric"):
        compare(small_mlp(), torch.randn(2, 64), ["q4_0"], metric="psnr", progress=False)


def test_cli_compare_prints_a_table(capsys, tmp_path):
    png = tmp_path / "t.png"
    argv = ["compare", "--codecs", "q4_0", "minmax:8:g32", "--layers", "--plot", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "KeywordSpotter" in out and "worst layer" in out
    assert "q4_0          minmax       4.50" in out
    assert "head.weight" in out and png.stat().st_size > 0


def test_cli_compare_bad_spec_is_a_clear_error(capsys):
    assert main(["compare", "--codecs", "q5_k"]) == 2
    assert "unknown codec 'q5_k'" in capsys.readouterr().err


def test_best_repr_is_one_short_line() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    best = compare(model, (torch.randn(4, 64),), ["q4_0"], progress=False).best()
    assert "\n" not in repr(best) and len(repr(best)) < 300, repr(best)
    assert "layers=" not in repr(best) and best.layers  # still there, just not printed


def test_inputs_the_model_rejects_are_named_with_the_models_error():
    from t2n_quant.errors import ComparedInputError

    model = small_mlp()
    with pytest.raises(ComparedInputError, match=r"rejected the compared inputs \(chunk 1 of 1.*"
                       r"RuntimeError.*mat1 and mat2"):  # fmt: skip
        compare(model, torch.randn(4, 32), ["q4_0"], progress=False)
    with pytest.raises(ComparedInputError, match="takes 2 positional arguments"):
        compare(model, (torch.randn(4, 64), torch.randn(4, 64)), ["q4_0"], progress=False)

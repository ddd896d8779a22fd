"""``t2n export MODULE:FUNCTION OUT``: a user's own model from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import t2n_core
from t2n_core.cli import main
from t2n_core.inspect import inspect_archive

MODEL_FILE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).eval()
    return model, torch.randn(3, 64)
"""


@pytest.fixture
def entry_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    return path


def test_export_a_file_function_quantized_with_a_dynamic_axis(tmp_path, entry_file, capsys):
    out = tmp_path / "m.nnef.tgz"
    rc = main(["export", f"{entry_file}:build", str(out), "--codec", "q4_0",
               "--dynamic", "input:0:B", "--property", "owner=me"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "tract check passed" in text and "q4_0" in text
    info = inspect_archive(out)
    assert info.inputs[0].shape == ("B", 64) and info.properties["owner"] == "me"
    assert info.tensor_bytes["q4_0"] == (64 + 10) * 64 // 32 * 18  # both Linear weights
    ns: dict = {}
    exec(MODEL_FILE, ns)
    model, _ = ns["build"]()
    from t2n_quant import quantize_model

    quantize_model(model, "q4_0", progress=False)
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    t2n_core.check_archive(out, [x.numpy()], [expected])


def test_export_an_importable_module(tmp_path, entry_file, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "f32"
    assert main(["export", "my_models:build", str(out), "--output-names", "logits"]) == 0
    assert "logits" in capsys.readouterr().out
    assert (out / "graph.nnef").is_file()
    assert np.isfinite(t2n_core.run_tract(out, [np.ones((3, 64), np.float32)])[0]).all()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nocolon", "expected MODULE:FUNCTION"),
        ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
        ("{file}:missing", "has no function 'missing'"),
    ],
)
def test_bad_entries_are_clear_errors(tmp_path, entry_file, capsys, entry, message):
    rc = main(["export", entry.format(file=entry_file), str(tmp_path / "m.tgz")])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_help_explains_the_spec_grammar(capsys):
    for command in ("export", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "codec[:bits[:group]]" in out and "q4_0" in out and "minmax:4:g32" in out


BLOCKS_FILE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(32, 32), nn.GELU()) for _ in range(3)]
    return nn.Sequential(*blocks).eval(), torch.randn(2, 32)
"""


@pytest.mark.parametrize("flag", [[], ["--no-fragments"]], ids=["fragments", "no-fragments"])
def test_repeated_blocks_as_fragments_or_inline(tmp_path, flag, capsys):
    entry = tmp_path / "blocks.py"
    entry.write_text(BLOCKS_FILE)
    out = tmp_path / "m"
    assert main(["export", f"{entry}:build", str(out), *flag]) == 0
    assert "tract check passed" in capsys.readouterr().out
    graph = (out / "graph.nnef").read_text()
    calls = graph.count("= block_sequential(")
    assert (graph.count("fragment block_sequential("), calls) == ((0, 0) if flag else (1, 3))


MANY_FILE = """
import copy

import torch
from torch import nn

from t2n_quant import quantize_model


def build():
    torch.manual_seed(0)
    body = nn.Linear(64, 64)
    encoder = nn.Sequential(body, nn.GELU()).eval()
    decoder = nn.Sequential(copy.deepcopy(body), nn.Linear(64, 10)).eval()
    quantize_model(encoder, "q4_0")  # two quantized copies of one weight: equal bytes
    quantize_model(decoder, "q4_0")
    x = torch.randn(3, 64)
    return {"encoder": (encoder, x), "decoder": (decoder, x, {"output_names": ["logits"]})}
"""


def test_export_many_stores_equal_quantized_weights_once_and_checks_one_graph(
    tmp_path, capsys
):
    entry = tmp_path / "pair.py"
    entry.write_text(MANY_FILE)
    out = tmp_path / "pair.nnef.tgz"
    assert main(["export-many", f"{entry}:build", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("tract check passed") == 2
    files = t2n_core.nnef.archive.list_archive(out)
    assert "encoder.0.weight.dat" in files and "decoder.0.weight.dat" not in files
    assert "1.weight.dat" in files  # used by one graph: its own name

    import importlib.util

    spec = importlib.util.spec_from_file_location("pair", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    decoder, x, _ = module.build()["decoder"]
    np.savez(tmp_path / "in.npz", x.numpy())
    with torch.no_grad():
        np.savez(tmp_path / "ref.npz", decoder_logits=decoder(x).numpy())
    rc = main(["check", str(out), "--graph", "decoder", "--inputs", str(tmp_path / "in.npz"),
               "--outputs", str(tmp_path / "ref.npz")])  # fmt: skip
    assert rc == 0
    assert "decoder_logits: ok" in capsys.readouterr().out
    assert main(["check", str(out), "--graph", "nope", "--inputs", str(tmp_path / "in.npz")]) == 2


CALIBRATION_FILE = """
import torch


def calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 64, generator=g) for _ in range(4)]
"""


def test_export_quantized_with_data_aware_calibration_records_its_provenance(
    tmp_path, entry_file, capsys
):
    (tmp_path / "my_calib.py").write_text(CALIBRATION_FILE)
    out = tmp_path / "m.nnef.tgz"
    rc = main(["export", f"{entry_file}:build", str(out), "--codec", "minmax:4:g32",
               "--calibration", "gptq", "--calibration-data", f"{tmp_path / 'my_calib.py'}:calib",
               "--calibration-option", "act_order=true", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    props = inspect_archive(out).properties
    assert props["quantization.calibration"] == "gptq"
    assert props["quantization.calibration_options"] == "act_order=True"
    assert len(props["quantization.calibration_data_sha256"]) == 16


def test_export_with_a_plan_file(tmp_path, entry_file, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"0": "q4_0", "2": "float"}')
    out = tmp_path / "m.nnef.tgz"
    assert main(["export", f"{entry_file}:build", str(out), "--plan", str(plan)]) == 0
    assert inspect_archive(out).properties["quantization.codecs"] == "q4_0"
    plan.write_text('{"nope": "q4_0"}')
    assert main(["export", f"{entry_file}:build", str(tmp_path / "bad.tgz"), "--plan",
                 str(plan)]) == 2  # fmt: skip
    assert "'nope' matches no quantizable module" in capsys.readouterr().err
    assert not (tmp_path / "bad.tgz").exists()


def test_export_refuses_calibration_flags_without_a_codec(tmp_path, entry_file, capsys):
    rc = main(["export", f"{entry_file}:build", str(tmp_path / "m.tgz"), "--device", "cpu"])
    assert rc == 2 and "--device needs --codec or --plan" in capsys.readouterr().err
    rc = main(["export", f"{entry_file}:build", str(tmp_path / "m.tgz"), "--codec", "q4_0",
               "--calibration", "awq"])  # fmt: skip
    assert rc == 2 and "needs --calibration-data" in capsys.readouterr().err
    assert not (tmp_path / "m.tgz").exists()

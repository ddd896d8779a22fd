"""``t2n inspect`` and ``t2n check`` on an exported archive."""

import numpy as np
import torch
from torch import nn

import t2n_core
from t2n_core.cli import main


def _export(tmp_path):
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
    x = torch.randn(3, 6)
    path = tmp_path / "m.nnef.tgz"
    t2n_core.export(model, (x,), path, input_names=["features"], progress=False)
    return model, x, path


def test_inspect_prints_io_ops_and_bytes(tmp_path, capsys):
    _, _, path = _export(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "features: f32[3, 6]" in out
    assert "matmul" in out and "tanh" in out
    assert "f32" in out


def test_check_compares_with_reference_outputs(tmp_path, capsys):
    model, x, path = _export(tmp_path)
    np.savez(tmp_path / "in.npz", features=x.numpy())
    np.savez(tmp_path / "ref.npz", output=model(x).detach().numpy())
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"),
                 "--outputs", str(tmp_path / "ref.npz")]) == 0  # fmt: skip
    assert "passed" in capsys.readouterr().out

    np.savez(tmp_path / "bad.npz", output=model(x).detach().numpy() + 1.0)
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"),
                 "--outputs", str(tmp_path / "bad.npz")]) == 1  # fmt: skip
    assert "MISMATCH" in capsys.readouterr().out


def test_check_without_reference_runs_and_saves(tmp_path, capsys):
    model, x, path = _export(tmp_path)
    np.savez(tmp_path / "in.npz", features=x.numpy())
    save = tmp_path / "out.npz"
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"),
                 "--save", str(save)]) == 0  # fmt: skip
    with np.load(save) as data:
        np.testing.assert_allclose(data["output"], model(x).detach().numpy(), atol=1e-5)


def test_check_with_wrong_input_count_is_a_clear_error(tmp_path, capsys):
    _, x, path = _export(tmp_path)
    np.savez(tmp_path / "in.npz", a=x.numpy(), b=x.numpy())
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz")]) == 2
    assert "holds 2 arrays" in capsys.readouterr().err


def test_inspect_of_a_non_archive_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "junk.tgz").write_bytes(b"not a tar")
    assert main(["inspect", str(tmp_path / "junk.tgz")]) == 2
    assert "neither a directory nor a tar" in capsys.readouterr().err


def test_version(capsys):
    import pytest

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"t2n {t2n_core.__version__}"


def test_check_input_errors_say_what_to_do(tmp_path, capsys):
    _, x, path = _export(tmp_path)
    cases = {
        "f64.npz": ("features", x.double().numpy()),
        "shape.npz": ("features", x[:, :4].numpy()),
    }
    for name, (key, array) in cases.items():
        np.savez(tmp_path / name, **{key: array})
    args = ["check", str(path), "--inputs"]
    assert main([*args, str(tmp_path / "f64.npz")]) == 2
    err = capsys.readouterr().err
    assert "is float64, the archive expects features: f32[3, 6]" in err and "astype" in err
    assert main([*args, str(tmp_path / "shape.npz")]) == 2
    assert "has shape [3, 4], the archive expects features: f32[3, 6]" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "missing.npz")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "text.npz").write_text("hello")
    assert main([*args, str(tmp_path / "text.npz")]) == 2
    assert "numpy.savez" in capsys.readouterr().err


def test_check_saves_with_outputs_too_and_flags_nan(tmp_path, capsys):
    model, x, path = _export(tmp_path)
    np.savez(tmp_path / "in.npz", features=x.numpy())
    ref = model(x).detach().numpy()
    np.savez(tmp_path / "ref.npz", output=ref)
    save = tmp_path / "out.npz"
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"),
                 "--outputs", str(tmp_path / "ref.npz"), "--save", str(save)]) == 0  # fmt: skip
    assert save.exists()
    ref[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", output=ref)
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"),
                 "--outputs", str(tmp_path / "nan.npz")]) == 1  # fmt: skip
    assert "1 in the reference" in capsys.readouterr().out


def test_truncated_dat_is_named(tmp_path, capsys):
    folder = tmp_path / "dir"
    t2n_core.export(nn.Linear(6, 5), (torch.randn(3, 6),), folder, progress=False)
    dat = sorted(folder.glob("*.dat"))[0]
    dat.write_bytes(dat.read_bytes()[:40])
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err
    assert dat.name in err and "truncated: 40 bytes" in err

"""The tract check: a tract crash is an error, NaN never passes silently, degenerate
references are called out."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import t2n_core
from t2n_core.check import compare
from t2n_core.errors import TractRunError
from t2n_core.nnef.dat import DatHeader

Q4_0 = 0x3040


def _panicking_archive(tmp_path):
    """A Q4_0 .dat of 4x32 declared 4x64: tract 0.23.9 panics (abort) running it."""
    path = tmp_path / "panics"
    path.mkdir()
    (path / "graph.nnef").write_text(
        "version 1.0;\nextension tract_registry tract_core;\n"
        "graph network(x) -> (y)\n{\n"
        "  x = tract_core_external(shape = [2, 64], datum_type = 'f32');\n"
        "  w = variable<scalar>(label = 'w', shape = [4, 64]);\n"
        "  y = matmul(x, w, transposeB = true);\n}\n"
    )
    header = DatHeader.for_tract_type(Q4_0, (4, 32), 4 * 18)
    (path / "w.dat").write_bytes(header.pack() + bytes(4 * 18))
    return path


def test_a_tract_panic_is_an_error_not_the_end_of_the_process(tmp_path):
    path = _panicking_archive(tmp_path)
    x = np.ones((2, 64), np.float32)
    with pytest.raises(TractRunError, match=r"(?s)tract crashed \(SIGABRT\).*panicked"):
        t2n_core.check_archive(path, [x], [np.zeros((2, 4), np.float32)])
    # still alive, and tract still works here
    ok = t2n_core.export(torch.nn.Linear(4, 2), (torch.randn(3, 4),), tmp_path / "ok.tgz",
                         check=True, progress=False)  # fmt: skip
    assert ok.check is not None and ok.check.passed


def _compare(actual, expected, **kw):
    kw.setdefault("atol", 1e-4)
    kw.setdefault("rtol", 1e-4)
    return compare(["y"], [np.asarray(actual)], [np.asarray(expected)], **kw).outputs[0]


def test_nan_fails_unless_allowed_and_at_the_same_places():
    nan = float("nan")
    assert not _compare([nan, nan], [nan, nan]).passed
    assert "2 in the reference" in _compare([nan, nan], [nan, nan]).note
    assert _compare([nan, 1.0], [nan, 1.0], allow_nan=True).passed
    assert not _compare([1.0, 1.0], [nan, 1.0], allow_nan=True).passed
    assert not _compare([nan, 1.0], [1.0, 1.0], allow_nan=True).passed
    assert not _compare([nan, 1.0], [1.0, 1.0]).passed
    assert _compare([float("inf"), 1.0], [float("inf"), 1.0]).passed


def test_constant_and_vanishing_references_are_called_out(caplog):
    with caplog.at_level(logging.WARNING, logger="t2n_core.check"):
        const = _compare([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
        tiny = _compare([0.0, 3e-25], [1e-25, -2e-25])
        real = _compare([0.5, -1.0], [0.5, -1.0])
        ints = compare(["i"], [np.array([2, 2])], [np.array([2, 2])], atol=0, rtol=0).outputs[0]
    assert const.passed and "reference is constant" in const.note and "constant" in str(const)
    assert tiny.passed and "vanishing" in tiny.note
    assert ints.passed and "constant" in ints.note
    assert real.note == ""
    assert "proves little" in caplog.text


def test_shape_mismatch_names_both_shapes():
    out = _compare(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not out.passed and "tract's shape [2, 3], expected [3, 2]" in str(out)


def test_check_archive_uses_the_archive_output_names(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, x):
            return {"logits": x * 2, "probs": x.softmax(-1)}

    x = torch.randn(2, 3)
    result = t2n_core.export(Two(), (x,), tmp_path / "m.tgz", progress=False)
    assert [o.name for o in result.outputs] == ["logits", "probs"]
    ref = Two()(x)
    report = t2n_core.check_archive(result.path, [x.numpy()], [ref["logits"], ref["probs"]])
    assert [o.name for o in report.outputs] == ["logits", "probs"]


def test_the_tract_worker_is_started_again_when_gone(tmp_path):
    from t2n_core import check

    result = t2n_core.export(torch.nn.Linear(4, 2), (torch.randn(3, 4),), tmp_path / "m.tgz",
                             check=True, progress=False)  # fmt: skip
    worker = check._WORKER.proc
    assert worker is not None and worker.poll() is None  # one process serves every check
    worker.kill()
    worker.wait()
    x = np.ones((3, 4), np.float32)
    assert t2n_core.run_tract(result.path, [x])[0].shape == (3, 2)
    assert check._WORKER.proc is not worker


def test_relative_paths_after_a_change_of_directory(tmp_path, monkeypatch):
    t2n_core.export(torch.nn.Linear(4, 2), (torch.randn(3, 4),), tmp_path / "a.tgz",
                    check=True, progress=False)  # fmt: skip  (the worker is up)
    monkeypatch.chdir(tmp_path)
    x = np.ones((3, 4), np.float32)
    assert t2n_core.run_tract("a.tgz", [x])[0].shape == (3, 2)


def test_an_archive_loaded_once_runs_many_inputs(tmp_path, monkeypatch):
    """TractLoad loads in the worker in the background, then runs several inputs (of other
    lengths) on that one load, as often as asked; run_tract_each does the same at once."""
    from t2n_core import check

    linear = torch.nn.Linear(4, 2)
    result = t2n_core.export(linear, (torch.randn(3, 4),), tmp_path / "m.tgz",
                             dynamic_axes={"input": {0: "N"}}, progress=False)  # fmt: skip
    batches = [[np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)] for n in (1, 5)]
    with torch.no_grad():
        expected = [linear(torch.from_numpy(b[0])).numpy() for b in batches]
    loads = []
    real = check.in_tract_child

    def counted(command, *args, **kwargs):
        loads.append(command)
        return real(command, *args, **kwargs)

    monkeypatch.setattr(check, "in_tract_child", counted)
    with check.TractLoad(result.path) as loaded:
        for _ in range(2):
            ran = loaded.run(batches)
            for (got,), want in zip(ran, expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert loads == ["open", "run", "run", "close"]
    assert [r[0].shape for r in check.run_tract_each(result.path, batches)] == [(1, 2), (5, 2)]


def test_a_background_load_that_fails_raises_when_run(tmp_path):
    from t2n_core.check import TractLoad

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "graph.nnef").write_text("version 1.0;\ngraph network(x) -> (y) { y = nope(x); }\n")
    with TractLoad(broken) as loaded, pytest.raises(TractRunError, match="could not load"):
        loaded.run([[np.ones((1, 4), np.float32)]])
    assert not loaded.work.exists()

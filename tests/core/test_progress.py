"""Progress bars show only for work that lasts."""

from __future__ import annotations

import time

import torch

import t2n_core
from t2n_core.progress import progress_bar


def test_a_sub_second_loop_prints_nothing(capsys):
    for _ in progress_bar(range(5), desc="quick"):
        pass
    assert capsys.readouterr().err == ""


def test_a_long_loop_shows_its_bar(capsys):
    for _ in progress_bar(range(3), desc="slow", delay=0.05):  # as if it lasted seconds
        time.sleep(0.05)
    assert "slow" in capsys.readouterr().err


def test_a_small_export_with_progress_on_prints_no_bar(tmp_path, capfd):
    t2n_core.export(torch.nn.Linear(4, 2), (torch.randn(2, 4),), tmp_path / "m.tgz")
    err = capfd.readouterr().err
    assert "%|" not in err and "\r" not in err

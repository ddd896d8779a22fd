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


def test_library_bars_all_go_through_progress_bar():
    import re
    from pathlib import Path

    root = Path(__file__).parents[2]
    direct = [
        str(p.relative_to(root))
        for package in ("t2n_core", "t2n_quant")
        for p in (root / package).rglob("*.py")
        if p.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", p.read_text(), re.M)
    ]
    assert direct == [], f"use t2n_core.progress.progress_bar in {direct}"

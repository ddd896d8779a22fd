"""The collector around capture: long-lived objects frozen for the duration, then restored."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

from t2n_core.gc_freeze import long_lived_frozen


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_frozen_inside_restored_after_and_cycles_still_collected() -> None:
    before = _Node()
    ref_before = weakref.ref(before)
    assert gc.get_freeze_count() == 0
    with long_lived_frozen():
        assert gc.get_freeze_count() > 0
        inside = _Node()
        ref_inside = weakref.ref(inside)
        del inside
        gc.collect()
        assert ref_inside() is None  # created inside: collected as usual
        del before
        gc.collect()
        assert ref_before() is not None  # frozen: not looked at while inside
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref_before() is None  # back in sight after


def test_a_freeze_made_by_the_process_is_left_alone() -> None:
    """Neither unfrozen (the count would drop to 0) nor frozen again (it would grow); a
    frozen object another thread lets go of (pytest-xdist's I/O thread) leaves the count."""
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with long_lived_frozen():
            assert 0.99 * count <= gc.get_freeze_count() <= count
        assert 0.99 * count <= gc.get_freeze_count() <= count
    finally:
        gc.unfreeze()


def test_the_command_line_process_freezes_from_the_start(monkeypatch) -> None:
    from t2n_core import gc_freeze

    threshold = gc.get_threshold()
    monkeypatch.setattr(gc_freeze, "_OWN_PROCESS", False)
    try:
        gc_freeze.own_process()
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[:2] == (10_000, 100)
        with long_lived_frozen():  # the command's own freeze does not stop the capture's
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.parametrize(
    ("argv", "orig_argv", "expected"),
    [
        (["/venv/bin/t2n", "export-llm"], ["/venv/bin/python", "/venv/bin/t2n"], True),
        (["-m"], ["python", "-X", "importtime", "-m", "t2n_core.cli", "export"], True),
        (["-m"], ["python", "-mt2n_core.cli"], True),
        (["-m"], ["python", "-m", "pytest", "-m", "t2n_core.cli"], False),
        (["-m"], ["python", "-m", "t2n_core.inspect"], False),
        (["-c"], ["python", "-c", "import t2n_core", "-m", "t2n_core.cli"], False),
        (["run.py"], ["python", "run.py", "-m", "t2n_core.cli"], False),
        (["/venv/bin/t2n-other"], ["python", "/venv/bin/t2n-other"], False),
    ],
)
def test_the_command_line_is_recognised(argv, orig_argv, expected) -> None:
    from t2n_core.gc_freeze import is_command_line

    assert is_command_line(argv, orig_argv) is expected


def _thresholds_after_import(*python_args: str) -> str:
    code = "import gc, t2n_core; print(gc.get_threshold()[:2])"
    run = subprocess.run(
        [sys.executable, *python_args, "-c", code], capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


def test_only_the_command_collects_less_from_the_first_import(tmp_path) -> None:
    assert _thresholds_after_import() == "(700, 10)"  # a library user's process: untouched
    script = tmp_path / "t2n"  # what the console script is called
    script.write_text("import gc, t2n_core\nprint(gc.get_threshold()[:2])\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "(10000, 100)"

"""Which architecture families export and generate in tract, per mode: a table.

Runs the checks of ``tests/llm/test_families.py`` (export with KV cache + tract check +
greedy tokens of ``model.generate`` in tract) on every family in f32, f16 and after q4_0,
each case in a child process, and prints pass/fail with the time of each case.

    python -m benchmarks.bench_families [--families llama,gpt2] [--modes f32,q4_0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from tests.llm.families import FAMILIES
from tests.llm.test_families import MODES

_CHILD = """
import pathlib, sys
from tests.llm.test_families import check_family
check_family(sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]))
"""


def run_case(name: str, mode: str) -> tuple[bool, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, name, mode, tmp], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return proc.returncode == 0, seconds, (lines[-1] if lines and proc.returncode else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    args = parser.parse_args()
    modes = args.modes.split(",")
    print("| family | " + " | ".join(modes) + " |")
    print("|---" * (len(modes) + 1) + "|")
    failures = []
    for name in args.families.split(","):
        cells = []
        for mode in modes:
            ok, seconds, error = run_case(name, mode)
            cells.append(f"{'pass' if ok else 'FAIL'} ({seconds:.0f} s)")
            if not ok:
                failures.append(f"{name} {mode}: {error}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for line in failures:
        print(line)


if __name__ == "__main__":
    main()

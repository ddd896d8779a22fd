"""Run a function in a fresh child process and report its peak RSS (VmHWM, read inside it).

``getrusage(...).ru_maxrss`` of a child is inherited across fork+exec on Linux, so the
child reads its own ``/proc/self/status`` instead (see DESIGN.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def vm_hwm_bytes() -> int:
    """Peak resident memory of this process so far."""
    return _status_bytes("VmHWM")


def vm_rss_bytes() -> int:
    """Resident memory of this process now."""
    return _status_bytes("VmRSS")


def worker_hwm_bytes() -> int:
    """Peak resident memory of this process's tract worker (``t2n_core.check``), 0 if none."""
    from t2n_core.check import _WORKER

    if _WORKER.proc is None:
        return 0
    with open(f"/proc/{_WORKER.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(code: str, timeout: float = 1800) -> dict:
    """Run ``code`` (which must print one JSON line last) in a new interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

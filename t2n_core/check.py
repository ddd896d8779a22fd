"""Run an NNEF archive in tract (the ``tract`` package from PyPI) and compare with references."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2n_core.errors import CheckMismatchError, TractRunError
from t2n_core.tract_child import LOAD_FAILED, RUN_FAILED, tract_message

logger = logging.getLogger(__name__)


@dataclass
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs_error: float
    max_rel_error: float  # max |a - b| / max |b|
    passed: bool
    #: why this comparison proves little or failed on its own (constant reference, NaN, ...)
    note: str = ""

    def __str__(self) -> str:
        mark = "ok" if self.passed else "MISMATCH"
        text = (
            f"{self.name}: {mark}  shape={list(self.shape)} dtype={self.dtype} "
            f"max_abs={self.max_abs_error:.3g} max_rel={self.max_rel_error:.3g}"
        )
        return f"{text}  ({self.note})" if self.note else text


@dataclass
class CheckReport:
    outputs: list[OutputComparison] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        head = f"tract check {verdict} (atol={self.atol}, rtol={self.rtol})"
        return "\n".join([head, *("  " + str(o) for o in self.outputs)])


def load_runnable(path: str | os.PathLike):
    """Load an archive in this process with every tract registry we may emit, ready to run.

    A tract panic here ends the process: :func:`run_tract` runs tract in a child instead.
    """
    import tract

    try:
        return (
            tract.nnef()
            .with_tract_transformers()
            .with_tract_extra()
            .load(str(path))
            .into_runnable()
        )
    except Exception as exc:
        raise TractRunError(
            f"tract could not load {os.fspath(path)}: {tract_message(exc)}"
        ) from exc


_CHILD = Path(__file__).with_name("tract_child.py")
# drop the current directory from the child's path, then run the script by its path
_BOOT = "import runpy, sys; del sys.path[0]; sys.argv[:] = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"  # noqa: E501


_FRAME = re.compile(r"\s+(\d+:|at )|stack backtrace:|note: ")  # Rust backtrace lines


class _Worker:
    """The long-lived ``tract_child.py serve`` process of this process (started on first
    use, again after a crash or a fork): a check costs no Python + tract start-up."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.owner = 0
        self.lock = threading.Lock()

    def request(self, command: str, path: str, workdir: Path) -> tuple[int, str]:
        """``(exit status, what it printed on stderr)``; a negative status is a signal."""
        with self.lock:
            for attempt in range(2):
                proc = self._started()
                try:
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(json.dumps([command, path, str(workdir)]) + "\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                except BrokenPipeError:  # it died between requests (killed): start another
                    self.proc = None
                    if attempt:
                        raise
                    continue
                err = workdir / "stderr.txt"
                text = err.read_text(errors="replace").strip() if err.exists() else ""
                if line:
                    return int(line), text
                self.proc = None
                return proc.wait(), text
        raise AssertionError("unreachable")

    def _started(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None or self.owner != os.getpid():
            env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(_CHILD), "serve"], env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, errors="replace",
            )  # fmt: skip
            self.owner = os.getpid()
        return self.proc


_WORKER = _Worker()


def in_tract_child(
    command: str, path: str | os.PathLike, workdir: Path, shown: str, *, validate: bool = True
) -> None:
    """Run ``tract_child.py COMMAND`` on ``path`` in the tract worker process; a tract error
    or crash -> TractRunError (the worker is started again for the next request). The
    archive is first checked for what tract must not read (``validate=False``: the caller
    did, e.g. once for all the steps of a generation)."""
    from t2n_core.nnef.archive import validate_for_tract

    if validate:
        validate_for_tract(path)
    # absolute: the worker keeps the directory it was started in
    status, text = _WORKER.request(command, os.path.abspath(path), Path(workdir).absolute())
    if status == 0:
        return
    if status == LOAD_FAILED:
        raise TractRunError(f"tract could not load {shown}: {text}")
    if status == RUN_FAILED:
        raise TractRunError(f"tract could not run {shown}: {text}")
    if status < 0:
        try:
            how = signal.Signals(-status).name
        except ValueError:
            how = f"signal {-status}"
        lines = [ln for ln in text.splitlines() if ln.strip() and not _FRAME.match(ln)]
        tail = "\n".join(lines[-20:])
        raise TractRunError(
            f"tract crashed ({how}) on {shown}; it ran in a child process, so this one goes on. "
            f"This is a tract bug; what tract printed:\n{tail}"
        )
    raise TractRunError(f"the tract child process failed on {shown} (exit {status}):\n{text}")


def run_tract(
    path: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    *,
    shown_as: str | None = None,
    graph: str | None = None,
) -> list[np.ndarray]:
    """Run ``path`` in tract (in a child process) on ``inputs``; tract's outputs, in order.
    ``graph`` names one graph of an archive of several (:func:`t2n_core.many.export_many`):
    only its inputs are given and its outputs returned."""
    return run_tract_each(path, [inputs], shown_as=shown_as, graph=graph)[0]


def run_tract_each(
    path: str | os.PathLike,
    batches: Sequence[Sequence[np.ndarray]],
    *,
    shown_as: str | None = None,
    graph: str | None = None,
) -> list[list[np.ndarray]]:
    """:func:`run_tract` on each list of inputs of ``batches``, the archive validated and
    loaded once for all: tract's outputs of each, in order."""
    shown = shown_as or os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="t2n-tract-") as tmp:
        work = Path(tmp)
        _write_selection(path, graph, work)
        for i, inputs in enumerate(batches):
            np.savez(work / f"inputs_{i}.npz", *[np.asarray(x) for x in inputs])
        in_tract_child("run", path, work, shown)
        return _read_outputs(work, len(batches))


class TractLoad:
    """``path`` loaded in the tract worker in the background, from construction on, while
    this process does other work (computes the references): :meth:`run` waits for the load
    and runs lists of inputs on it, as often as asked; :meth:`close` (or leaving the ``with``
    block) drops it. A load that failed raises its :class:`TractRunError` from :meth:`run`.
    ``validate=False`` skips :func:`~t2n_core.nnef.archive.validate_for_tract` (a read of the
    whole archive) for an archive this process has just written.

    >>> with TractLoad("model.nnef.tgz") as loaded:      # doctest: +SKIP
    ...     references = compute_references()            # meanwhile, tract loads the archive
    ...     outputs = loaded.run([inputs_a, inputs_b])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        shown_as: str | None = None,
        graph: str | None = None,
        validate: bool = True,
    ) -> None:
        self.path, self.shown, self.graph = path, shown_as or os.fspath(path), graph
        self.validate = validate
        self.work = Path(tempfile.mkdtemp(prefix="t2n-tract-"))
        self.error: BaseException | None = None
        if graph is not None:
            from t2n_core.graph_select import graph_io, select_transforms

            selection = [select_transforms(graph_io(path, graph))]
            (self.work / "graphs.json").write_text(json.dumps(selection))
        self._thread = threading.Thread(target=self._open, name="t2n-tract-load", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            in_tract_child("open", self.path, self.work, self.shown, validate=self.validate)
        except BaseException as exc:  # raised by run(), in the caller's thread
            self.error = exc

    def run(self, batches: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        """tract's outputs on each list of inputs of ``batches``, in order."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        for i, inputs in enumerate(batches):
            np.savez(self.work / f"inputs_{i}.npz", *[np.asarray(x) for x in inputs])
        try:
            in_tract_child("run", self.path, self.work, self.shown, validate=False)
            return _read_outputs(self.work, len(batches))
        finally:
            for old in [*self.work.glob("inputs*.npz"), *self.work.glob("outputs*.npz")]:
                old.unlink()

    def close(self) -> None:
        self._thread.join()
        if self.error is None:
            try:
                in_tract_child("close", self.path, self.work, self.shown, validate=False)
            except TractRunError:
                pass  # the worker is gone, and the model with it
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> TractLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_outputs(work: Path, count: int) -> list[list[np.ndarray]]:
    results = []
    for i in range(count):
        with np.load(work / f"outputs_{i}.npz") as data:
            results.append([data[f"arr_{k}"] for k in range(len(data.files))])
    return results


def _write_selection(path: str | os.PathLike, graph: str | None, work: Path) -> None:
    """``WORKDIR/select.json``: the tract transforms that keep only ``graph``."""
    if graph is not None:
        from t2n_core.graph_select import graph_io, select_transforms

        (work / "select.json").write_text(json.dumps(select_transforms(graph_io(path, graph))))


def tract_facts(path: str | os.PathLike, graph: str | None = None) -> tuple[list[str], list[str]]:
    """tract's input and output facts (``"2,S,f32"``) of an archive (or of one of its
    ``graph``-s), loaded in a child."""
    with tempfile.TemporaryDirectory(prefix="t2n-tract-") as tmp:
        _write_selection(path, graph, Path(tmp))
        in_tract_child("facts", path, Path(tmp), os.fspath(path))
        facts = json.loads((Path(tmp) / "facts.json").read_text())
    return facts["inputs"], facts["outputs"]


def compare(
    names: Sequence[str],
    actual: Sequence[np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float,
    allow_nan: bool = False,
) -> CheckReport:
    """Compare outputs; floats pass when ``max|a-b| <= atol + rtol * max|b|``, others exactly.

    A NaN in either output fails, unless ``allow_nan`` and both have NaN at the same places.
    Infinities must match exactly. A reference that is constant, or whose largest value is
    within ``atol`` of zero, cannot tell a wrong graph from a right one: the comparison says
    so in its ``note`` (and a warning is logged).
    """
    report = CheckReport(atol=atol, rtol=rtol)
    if len(actual) != len(expected):
        raise CheckMismatchError(
            f"tract returned {len(actual)} outputs, PyTorch {len(expected)}", report
        )
    for name, a, b in zip(names, actual, expected):
        b = np.asarray(b)
        a = np.asarray(a)
        if a.shape != b.shape:
            note = f"tract's shape {list(a.shape)}, expected {list(b.shape)}"
            report.outputs.append(
                OutputComparison(name, a.shape, str(a.dtype), np.inf, np.inf, False, note)
            )
            continue
        note = ""
        if b.dtype.kind in "fc":
            finite = np.isfinite(b)
            diff = np.abs(a[finite].astype(np.float64) - b[finite].astype(np.float64))
            same_nonfinite = np.array_equal(np.isfinite(a), finite) and np.array_equal(
                a[~finite], b[~finite], equal_nan=True
            )
            max_abs = float(np.nan_to_num(diff, nan=np.inf).max()) if finite.any() else 0.0
            scale = float(np.abs(b[finite]).max()) if finite.any() else 0.0
            max_rel = max_abs / scale if scale > 0 else max_abs
            ok = same_nonfinite and max_abs <= atol + rtol * scale
            nan_a, nan_b = int(np.isnan(a).sum()), int(np.isnan(b).sum())
            if nan_a or nan_b:
                if not (allow_nan and same_nonfinite):
                    ok = False
                note = f"NaN: {nan_b} in the reference, {nan_a} in tract's output" + (
                    "" if allow_nan else "; pass allow_nan=True if NaN is expected"
                )
            elif finite.any() and b.size > 1 and np.ptp(b[finite]) == 0:
                value = f"{b[finite].flat[0]:.3g}"
                note = f"reference is constant ({value}): only the shape and that value are tested"
            elif scale <= atol:
                note = (
                    f"reference is vanishing (max|y| = {scale:.3g} <= atol): any output this "
                    "small passes, the check proves little"
                )
        else:
            mismatch = a != b.astype(a.dtype, copy=False)
            max_abs = float(mismatch.sum())
            max_rel = max_abs / max(b.size, 1)
            ok = not mismatch.any()
            if b.size > 1 and (b == b.flat[0]).all():
                note = (
                    f"reference is constant ({b.flat[0]}): only the shape and that value are tested"
                )
        if note:
            logger.warning("tract check of %s: %s", name, note)
        report.outputs.append(
            OutputComparison(name, tuple(b.shape), str(b.dtype), max_abs, max_rel, bool(ok), note)
        )
    return report


def check_archive(
    path: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    raise_on_mismatch: bool = True,
    allow_nan: bool = False,
    shown_as: str | None = None,
    graph: str | None = None,
) -> CheckReport:
    """Run ``path`` in tract on ``inputs`` and compare with ``expected`` (see :func:`compare`).

    tract runs in a child process: a tract crash raises :class:`TractRunError` with tract's
    text instead of ending this process. Outputs are named ``names``, by default the
    archive's own output names. ``shown_as`` is the path to name in messages. ``graph``
    runs one graph of an archive of several (:func:`t2n_core.many.export_many`).

    >>> report = check_archive("model.nnef.tgz", [x], [y])   # doctest: +SKIP
    >>> report.passed                                        # doctest: +SKIP
    True
    """
    shown = shown_as or os.fspath(path)
    actual = run_tract(path, inputs, shown_as=shown, graph=graph)
    if names is None and graph is not None:
        from t2n_core.graph_select import graph_io

        names = graph_io(path, graph)["outputs"]
    if names is None:
        names = archive_output_names(path)
        if len(names) != len(actual):
            names = [f"output_{i}" for i in range(len(actual))]
    report = compare(list(names), actual, expected, atol=atol, rtol=rtol, allow_nan=allow_nan)
    logger.info("%s", report)
    if raise_on_mismatch and not report.passed:
        raise CheckMismatchError(
            f"tract's outputs of {shown} differ from the reference:\n{report}", report
        )
    return report


def archive_output_names(path: str | os.PathLike) -> list[str]:
    """The output names graph.nnef declares (``graph g(x) -> (y, z)`` gives ``[y, z]``)."""
    from t2n_core.nnef.archive import read_archive_files

    text = (
        read_archive_files(path, dat_headers_only=True)
        .get("graph.nnef", b"")
        .decode("utf-8", errors="replace")
    )
    match = re.search(r"graph\s+\w+\s*\([^)]*\)\s*->\s*\(([^)]*)\)", text)
    return [n.strip() for n in match.group(1).split(",") if n.strip()] if match else []

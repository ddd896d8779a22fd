"""Streaming: run an archive in tract after its pulse transform and prove it equals the whole run.

tract turns a model with a symbolic time axis into a *pulsed* one that takes fixed-size chunks
of that axis and keeps whatever it needs of the past (convolution windows, recurrent states)
between calls; its outputs come ``pulse.delay`` frames late (a centred convolution needs to
see ahead). :func:`check_pulsed` feeds an input chunk by chunk (zeros after its end, to flush
the delay), drops the first ``delay`` output frames and compares the rest with the
whole-sequence output. When they differ, it compares again without the last ``delay`` frames:
a delay is latency (a frame of the STFT is complete only when its last sample arrives) or
look-ahead (a centred convolution), and look-ahead frames look past the end of the input,
where the whole model pads each layer's input with zeros while the stream goes on (zeros fed
to the first layer are not zeros after a layer with a bias), so they legitimately differ.
The report says how many frames were compared.
``t2n_core.export(..., streaming_axis={"audio": 2})`` records the streaming symbol in the
archive (property ``t2n_streaming_symbol``), so neither this function nor
``t2n check --pulse N`` needs to be told it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from t2n_core.check import CheckReport, compare, run_tract, tract_message
from t2n_core.errors import CheckMismatchError, PulseError, TractRunError

logger = logging.getLogger(__name__)

#: archive property naming the symbol that ``streaming_axis`` made the streaming axis
STREAMING_PROPERTY = "t2n_streaming_symbol"


@dataclass
class PulseReport:
    """How the chunked run compared with the whole-sequence one."""

    pulse: int
    symbol: str
    delay: int  # output frames
    input_axes: list[int]
    output_axes: list[int]
    chunks: int
    compared_frames: list[int] = field(default_factory=list)  # per output
    check: CheckReport = field(default_factory=CheckReport)

    @property
    def passed(self) -> bool:
        return self.check.passed

    def __str__(self) -> str:
        head = (
            f"pulsed on {self.symbol} in chunks of {self.pulse} ({self.chunks} chunks), "
            f"delay {self.delay} output frame(s), {self.compared_frames} frame(s) compared"
        )
        return head + "\n" + str(self.check)


@dataclass
class PulsedModel:
    """A runnable pulsed tract model and what its pulse transform reported."""

    runnable: object
    pulse: int
    symbol: str
    delay: int
    input_axes: list[int]
    output_axes: list[int]
    input_pulses: list[int]

    def state(self):
        """A fresh streaming state: call ``state.run([chunk, ...])`` once per chunk."""
        return self.runnable.spawn_state()


def _graph_text(path: str | os.PathLike) -> str:
    from t2n_core.nnef.archive import read_archive_files

    files = read_archive_files(path, dat_headers_only=True)
    if "graph.nnef" not in files:
        raise PulseError(f"{os.fspath(path)} has no graph.nnef")
    return files["graph.nnef"].decode("utf-8", errors="replace")


def streaming_symbol(path: str | os.PathLike) -> str | None:
    """The streaming symbol recorded by ``export(..., streaming_axis=...)``, if any."""
    from t2n_core.nnef.graph_text import graph_properties

    return graph_properties(_graph_text(path)).get(STREAMING_PROPERTY)


_BACKWARD_LOOP = re.compile(r"^\s*\(?\s*(\w+)[^=\n]*=\s*(\w+)\(.*\bstep = -1\b.*$", re.M)


def _refuse_backward_loops(path: str | os.PathLike) -> None:
    """tract 0.23.9 pulses a loop that runs backwards over the sequence without a word and
    then computes something else (measured on a bidirectional GRU), so we refuse it."""
    from t2n_core.nnef.graph_text import graph_body

    match = _BACKWARD_LOOP.search(graph_body(_graph_text(path)))
    if match is not None:
        name, op = match.groups()
        raise PulseError(
            f"{os.fspath(path)} cannot stream: op {op} at node '{name}' runs backwards over the "
            "sequence (a reverse or bidirectional recurrent layer needs the end of the input "
            "first); use a unidirectional layer for streaming"
        )


def load_pulsed(path: str | os.PathLike, pulse: int, symbol: str | None = None) -> PulsedModel:
    """Load ``path`` in tract, in this process, and pulse it over ``symbol`` in chunks of
    ``pulse`` frames, to stream it yourself (:func:`check_pulsed` runs tract in a child).

    Raises :class:`PulseError` naming the tract node (and op) that cannot be pulsed.

    >>> pulsed = load_pulsed("kws.nnef.tgz", 160)           # doctest: +SKIP
    >>> state = pulsed.state(); y = state.run([chunk])[0]   # doctest: +SKIP
    """
    from t2n_core.tract_child import PulseFailed, pulse_model

    where, symbol = _pulse_request(path, pulse, symbol)
    try:
        runnable, info = pulse_model(where, pulse, symbol)
    except PulseFailed as exc:
        raise PulseError(_pulse_failure(where, symbol, str(exc))) from exc
    except Exception as exc:
        raise TractRunError(f"tract could not load {where}: {tract_message(exc)}") from exc
    return PulsedModel(
        runnable, pulse, symbol, info["delay"], info["input_axes"], info["output_axes"],
        info["input_pulses"],
    )  # fmt: skip


def run_pulsed(
    pulsed: PulsedModel, inputs: Sequence[np.ndarray], lengths: Sequence[int]
) -> tuple[list[np.ndarray], int]:
    """Feed ``inputs`` chunk by chunk (zeros after their end) until every output has
    ``delay + lengths[j]`` frames; returns the outputs with the delay dropped, and the number of
    chunks fed."""
    from t2n_core.tract_child import feed_chunks

    info = {"delay": pulsed.delay, "input_axes": pulsed.input_axes,
            "output_axes": pulsed.output_axes, "input_pulses": pulsed.input_pulses}  # fmt: skip
    try:
        return feed_chunks(pulsed.state(), [np.asarray(x) for x in inputs], info, list(lengths))
    except ValueError as exc:
        raise PulseError(str(exc)) from exc
    except Exception as exc:
        raise TractRunError(f"the pulsed model failed: {tract_message(exc)}") from exc


def check_pulsed(
    path: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    expected: Sequence[np.ndarray] | None = None,
    *,
    pulse: int,
    symbol: str | None = None,
    names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    raise_on_mismatch: bool = True,
) -> PulseReport:
    """Prove that ``path`` streams: chunks of ``pulse`` frames give the whole-sequence output.

    ``expected`` defaults to tract's own whole-sequence run of ``inputs``; pass PyTorch's
    outputs to compare with those instead. tract runs in a child process (a tract crash
    becomes a :class:`TractRunError`). Raises :class:`PulseError` (naming the op) when tract
    cannot pulse the graph, :class:`CheckMismatchError` when the outputs differ.

    >>> report = check_pulsed("kws.nnef.tgz", [audio], pulse=160)   # doctest: +SKIP
    >>> report.delay, report.passed                                 # doctest: +SKIP
    (2, True)
    """
    import json
    import tempfile
    from pathlib import Path

    from t2n_core.check import in_tract_child

    where, symbol = _pulse_request(path, pulse, symbol)
    if expected is None:
        expected = run_tract(path, inputs)
    expected = [np.asarray(e) for e in expected]
    with tempfile.TemporaryDirectory(prefix="t2n-pulse-") as tmp:
        work = Path(tmp)
        np.savez(work / "inputs.npz", *[np.asarray(x) for x in inputs])
        request = {"pulse": pulse, "symbol": symbol, "shapes": [list(e.shape) for e in expected]}
        (work / "pulse.json").write_text(json.dumps(request))
        in_tract_child("pulse", path, work, where)
        info = json.loads((work / "pulsed.json").read_text())
        if "error" in info:
            raise PulseError(_pulse_failure(where, symbol, info["error"]))
        with np.load(work / "outputs.npz") as data:
            actual = [data[f"arr_{i}"] for i in range(len(data.files))]
    delay, out_axes = info["delay"], info["output_axes"]
    lengths = [e.shape[a] for e, a in zip(expected, out_axes)]
    names = list(names) if names is not None else _output_names(path, len(actual))
    kept = list(lengths)
    check = compare(names, actual, expected, atol=atol, rtol=rtol)
    if not check.passed and delay:
        # the last `delay` frames may look past the input's end: compare the frames before
        kept = [max(n - delay, 0) for n in lengths]
        actual = [_head(a, axis, k) for a, axis, k in zip(actual, out_axes, kept)]
        expected = [_head(e, axis, k) for e, axis, k in zip(expected, out_axes, kept)]
        check = compare(names, actual, expected, atol=atol, rtol=rtol)
    report = PulseReport(
        pulse, symbol, delay, info["input_axes"], out_axes, info["chunks"], kept, check
    )
    logger.info("%s", report)
    if raise_on_mismatch and not report.passed:
        raise CheckMismatchError(
            f"the pulsed run of {where} differs from the whole run:\n{report}", report
        )
    return report


def _pulse_request(path: str | os.PathLike, pulse: int, symbol: str | None) -> tuple[str, str]:
    """The archive path as text and the symbol to pulse, after the checks done before tract."""
    where = os.fspath(path)
    if pulse < 1:
        raise PulseError(f"the pulse must be a positive number of frames, got {pulse}")
    symbol = symbol or streaming_symbol(path)
    if symbol is None:
        raise PulseError(
            f"{where} records no streaming symbol: export it with streaming_axis=... or name "
            "the symbol to pulse (symbol=... / --symbol)"
        )
    _refuse_backward_loops(path)
    return where, symbol


def _head(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    return np.take(x, np.arange(n), axis=axis)


def _output_names(path: str | os.PathLike, n: int) -> list[str]:
    from t2n_core.nnef.graph_text import GRAPH_RE

    match = GRAPH_RE.search(_graph_text(path))
    names = [o.strip() for o in match.group(3).split(",") if o.strip()] if match else []
    return names if len(names) == n else [f"output_{i}" for i in range(n)]


def _pulse_failure(where: str, symbol: str, message: str) -> str:
    node = re.search(r'node #\d+ "([^"]+)" (\S+)', message)
    if node is None:
        return f"tract cannot pulse {where} over {symbol}: {message}"
    name, op = node.groups()
    return (
        f"tract cannot pulse {where} over {symbol}: op {op} at node '{name}' cannot stream "
        f"(ops that need more of the time axis than its past, such as a mean or softmax over "
        f"time, reflect padding or a global pool, cannot). tract says: {message}"
    )

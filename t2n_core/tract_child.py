"""Run tract in a child process, so that a tract panic (an abort) cannot end the caller's.

Run as a script (``python tract_child.py COMMAND ARCHIVE WORKDIR``), never imported by the
child: it needs only ``numpy`` and ``tract``, so the child starts in about 0.2 s. With
``serve`` it stays up and answers one request per line (:func:`serve`), so a process that
checks many archives starts it once.

- ``run`` and ``facts`` first apply the tract transforms listed in ``WORKDIR/select.json``
  when there is one (keeping one graph of several: :mod:`t2n_core.many`).
- ``run``: load ARCHIVE, run it on ``WORKDIR/inputs.npz`` (``arr_0``, ``arr_1``, ... in
  order), write ``WORKDIR/outputs.npz`` the same way; likewise each ``WORKDIR/inputs_N.npz``
  to ``WORKDIR/outputs_N.npz``, all on the one load (io samples of one archive). With a
  session ``open`` made for WORKDIR, ARCHIVE is not loaded again: its first graph runs.
- ``facts``: load ARCHIVE, write its input and output facts (``"2,S,f32"``) as JSON to
  ``WORKDIR/facts.json``.
- ``open``, ``step``, ``close``: generation in a session this process keeps (keyed by
  WORKDIR, so they need ``serve``). ``open`` loads ARCHIVE and writes its input facts to
  ``WORKDIR/facts.json``; with ``WORKDIR/graphs.json`` (a list of transform lists, one per
  graph kept, e.g. prefill then decode), the first graph runs the first step and the last
  every later one, and the facts are the first graph's. Each ``step`` runs the new token
  ids ``WORKDIR/ids.npy`` with, on the first step, the initial state ``WORKDIR/state.npz``
  (``arr_0``, ...), later the outputs after the first of the step before (the k/v cache,
  kept here);
  ``WORKDIR/outputs.npy`` gets the first output's last position (the next-token logits).
  ``close`` ends the session.
- ``pulse``: pulse ARCHIVE as ``WORKDIR/pulse.json`` says (``pulse``, ``symbol``, and the
  ``shapes`` of the whole-sequence outputs), feed ``WORKDIR/inputs.npz`` chunk by chunk until
  each output has ``delay`` + its whole length of frames (:func:`feed_chunks`), write them to
  ``WORKDIR/outputs.npz`` and the pulse properties to ``WORKDIR/pulsed.json`` (or, when tract
  cannot pulse the graph, ``{"error": ...}`` there, exit status 0).

Exit status 0 on success; :data:`LOAD_FAILED` or :data:`RUN_FAILED` with tract's error on
stderr (without its Rust backtrace) when tract returns an error; anything else (a signal
such as SIGABRT) means tract crashed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOAD_FAILED = 3
RUN_FAILED = 4


def tract_message(exc: BaseException) -> str:
    """tract's error text without its Rust stack backtrace."""
    return str(exc).split("Stack backtrace:")[0].strip()


def pulse_model(archive: str, pulse: int, symbol: str) -> tuple[object, dict]:
    """``(runnable, info)`` of ARCHIVE after tract's pulse transform; ``info`` holds ``delay``,
    ``input_axes``, ``output_axes``, ``input_pulses``. Raises ``PulseFailed`` with tract's
    message when the transform fails."""
    import numpy as np
    import tract

    model = tract.nnef().with_tract_transformers().with_tract_extra().with_pulse().load(archive)
    try:
        model.transform(tract.Pulse(str(pulse), symbol=symbol))
    except Exception as exc:
        raise PulseFailed(tract_message(exc)) from exc

    def ints(key: str) -> list[int]:
        return [int(v) for v in np.atleast_1d(model.property(key).to_numpy())]

    def dims(fact: object) -> list[int]:
        return [int(d) for d in str(fact).split(",")[:-1]]

    info = {"delay": ints("pulse.delay")[0], "input_axes": ints("pulse.input_axes"),
            "output_axes": ints("pulse.output_axes")}  # fmt: skip
    info["input_pulses"] = [dims(model.input_fact(i))[a] for i, a in enumerate(info["input_axes"])]
    return model.into_runnable(), info  # into_runnable consumes the model: properties first


class PulseFailed(Exception):
    """tract's pulse transform refused the graph."""


def feed_chunks(state, inputs: list, info: dict, lengths: list[int]) -> tuple[list, int]:
    """Feed ``inputs`` to a pulsed ``state`` chunk by chunk (zeros after their end) until each
    output has ``delay + lengths[j]`` frames; returns the outputs without the first ``delay``
    frames, and the number of chunks fed."""
    import numpy as np

    axes, pulses, out_axes = info["input_axes"], info["input_pulses"], info["output_axes"]
    total = {x.shape[a] for x, a in zip(inputs, axes)}
    if len(total) != 1:
        raise ValueError(f"inputs differ in length along their streaming axes: {sorted(total)}")
    needed = [info["delay"] + n for n in lengths]
    limit = -(-total.pop() // pulses[0]) + max(needed) + 1
    collected: list[list] = [[] for _ in lengths]
    have = [0] * len(lengths)
    chunks = 0
    while any(h < n for h, n in zip(have, needed)):
        if chunks >= limit:
            raise ValueError(f"after {chunks} chunks the outputs have {have} frames, "
                             f"expected {needed}")  # fmt: skip
        feed = []
        for x, axis, size in zip(inputs, axes, pulses):
            chunk = np.zeros([size if i == axis else d for i, d in enumerate(x.shape)], x.dtype)
            start = chunks * size
            piece = np.take(x, np.arange(start, min(start + size, x.shape[axis])), axis=axis)
            index = [slice(None)] * x.ndim
            index[axis] = slice(0, piece.shape[axis])
            chunk[tuple(index)] = piece
            feed.append(np.ascontiguousarray(chunk))
        for j, (out, axis) in enumerate(zip(state.run(feed), out_axes)):
            out = out.to_numpy()
            collected[j].append(out)
            have[j] += out.shape[axis]
        chunks += 1
    outputs = [
        np.take(np.concatenate(parts, axis=a), np.arange(info["delay"], info["delay"] + n), axis=a)
        for parts, a, n in zip(collected, out_axes, lengths)
    ]
    return outputs, chunks


def _pulse(archive: str, work: Path) -> int:
    import numpy as np

    request = json.loads((work / "pulse.json").read_text())
    try:
        runnable, info = pulse_model(archive, request["pulse"], request["symbol"])
    except PulseFailed as exc:
        (work / "pulsed.json").write_text(json.dumps({"error": str(exc)}))
        return 0
    except Exception as exc:
        print(tract_message(exc), file=sys.stderr)
        return LOAD_FAILED
    with np.load(work / "inputs.npz") as data:
        inputs = [np.asarray(data[f"arr_{i}"], order="C") for i in range(len(data.files))]
    shapes = request["shapes"]
    if len(shapes) != len(info["output_axes"]):
        message = f"{len(shapes)} reference outputs for {len(info['output_axes'])} pulsed ones"
        (work / "pulsed.json").write_text(json.dumps({"error": message}))
        return 0
    lengths = [shape[a] for shape, a in zip(shapes, info["output_axes"])]
    try:
        outputs, chunks = feed_chunks(runnable.spawn_state(), inputs, info, lengths)
    except Exception as exc:
        print(tract_message(exc), file=sys.stderr)
        return RUN_FAILED
    np.savez(work / "outputs.npz", *outputs)
    (work / "pulsed.json").write_text(json.dumps({**info, "chunks": chunks}))
    return 0


#: generation sessions of this process: WORKDIR -> {"runnables": [...], "state": [...], "steps": n}
_SESSIONS: dict[str, dict] = {}


def _open(archive: str, work: Path) -> int:
    import tract

    graphs = work / "graphs.json"
    selections = json.loads(graphs.read_text()) if graphs.exists() else [[]]
    try:
        runnables, facts = [], []
        for transforms in selections:
            model = tract.nnef().with_tract_transformers().with_tract_extra().load(archive)
            for transform in transforms:
                model.transform(transform)  # keep one graph of several (t2n_core.many)
            facts = facts or [str(model.input_fact(i)) for i in range(model.input_count())]
            runnables.append(model.into_runnable())
        _SESSIONS[str(work)] = {"runnables": runnables, "state": [], "steps": 0}
    except Exception as exc:
        print(tract_message(exc), file=sys.stderr)
        return LOAD_FAILED
    (work / "facts.json").write_text(json.dumps({"inputs": facts}))
    return 0


def _step(work: Path) -> int:
    import numpy as np

    session = _SESSIONS.get(str(work))
    if session is None:
        print(f"no generation session for {work}: open one first", file=sys.stderr)
        return RUN_FAILED
    ids = np.load(work / "ids.npy")
    state = session["state"]
    first = work / "state.npz"
    if first.exists():
        with np.load(first) as data:
            state = [np.asarray(data[f"arr_{i}"], order="C") for i in range(len(data.files))]
        first.unlink()
    try:
        runnables = session["runnables"]  # the first graph on the first step, then the last
        runnable = runnables[0] if session["steps"] == 0 else runnables[-1]
        outputs = [o.to_numpy() for o in runnable.run([ids, *state])]
    except Exception as exc:
        print(tract_message(exc), file=sys.stderr)
        return RUN_FAILED
    session["state"], session["steps"] = outputs[1:], session["steps"] + 1
    np.save(work / "outputs.npy", outputs[0][:, -1])
    return 0


def main(argv: list[str]) -> int:
    import tract

    command, archive, workdir = argv
    work = Path(workdir)
    if command == "pulse":
        return _pulse(archive, work)
    if command == "open":
        return _open(archive, work)
    if command == "step":
        return _step(work)
    if command == "close":
        _SESSIONS.pop(str(work), None)
        return 0
    session = _SESSIONS.get(str(work))
    if command == "run" and session is not None:  # loaded by ``open``: run its first graph
        return _run_each(session["runnables"][0], work)
    try:
        model = tract.nnef().with_tract_transformers().with_tract_extra().load(archive)
        select = work / "select.json"
        for transform in json.loads(select.read_text()) if select.exists() else []:
            model.transform(transform)  # keep one graph of several (t2n_core.many)
        if command == "facts":
            facts = {
                "inputs": [str(model.input_fact(i)) for i in range(model.input_count())],
                "outputs": [str(model.output_fact(i)) for i in range(model.output_count())],
            }
            (work / "facts.json").write_text(json.dumps(facts))
            return 0
        runnable = model.into_runnable()
    except Exception as exc:
        print(tract_message(exc), file=sys.stderr)
        return LOAD_FAILED
    return _run_each(runnable, work)


def _run_each(runnable, work: Path) -> int:
    """Run each ``WORKDIR/inputs*.npz``, write its ``outputs*.npz``."""
    import numpy as np

    for batch in sorted(work.glob("inputs*.npz")):
        with np.load(batch) as data:
            inputs = [np.asarray(data[f"arr_{i}"], order="C") for i in range(len(data.files))]
        try:
            outputs = [o.to_numpy() for o in runnable.run(inputs)]
        except Exception as exc:
            print(tract_message(exc), file=sys.stderr)
            return RUN_FAILED
        np.savez(work / batch.name.replace("inputs", "outputs", 1), *outputs)
    return 0


def serve() -> int:
    """Answer requests until stdin closes: each line is ``[command, archive, workdir]`` (JSON),
    each answer a line with :func:`main`'s exit status. What a request prints on stderr
    (tract's error, or a panic's text, Rust writes it to fd 2) goes to ``WORKDIR/stderr.txt``,
    which the caller reads after a crash too."""
    import os

    saved = os.dup(2)
    for line in sys.stdin:
        command, archive, workdir = json.loads(line)
        with open(Path(workdir) / "stderr.txt", "w") as err:
            sys.stderr.flush()
            os.dup2(err.fileno(), 2)
            try:
                status = main([command, archive, workdir])
            except BaseException as exc:  # not tract's error: say what it was, carry on
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                status = 1
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
        sys.stdout.write(f"{status}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["serve"] else main(sys.argv[1:]))

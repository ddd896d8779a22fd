"""Run tract in a child process, so that a tract panic (an abort) cannot end the caller's.

Run as a script (``python tract_child.py COMMAND ARCHIVE WORKDIR``), never imported by the
child: it needs only ``numpy`` and ``tract``, so the child starts in about 0.2 s.

- ``run``: load ARCHIVE, run it on ``WORKDIR/inputs.npz`` (``arr_0``, ``arr_1``, ... in
  order), write ``WORKDIR/outputs.npz`` the same way.
- ``facts``: load ARCHIVE, write its input and output facts (``"2,S,f32"``) as JSON to
  ``WORKDIR/facts.json``.

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


def main(argv: list[str]) -> int:
    import numpy as np
    import tract

    command, archive, workdir = argv
    work = Path(workdir)
    try:
        model = tract.nnef().with_tract_transformers().with_tract_extra().load(archive)
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
    with np.load(work / "inputs.npz") as data:
        inputs = [np.asarray(data[f"arr_{i}"], order="C") for i in range(len(data.files))]
    try:
        outputs = [o.to_numpy() for o in runnable.run(inputs)]
    except Exception as exc:
        print(tract_message(exc), file=sys.stderr)
        return RUN_FAILED
    np.savez(work / "outputs.npz", *outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

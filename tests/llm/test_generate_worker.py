"""``generate_text`` runs tract in the worker process (a tract crash cannot end the caller),
with the same tokens as in this process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tract  # noqa: F401  a runtime dependency: missing must fail, not skip

from t2n_core.errors import TractRunError
from t2n_core.llm import export_checkpoint
from t2n_core.llm.generate import ChildSteps, InProcessSteps, generate_text
from tests.llm.checkpoints import save_tiny_llama

#: an export-llm of a tiny checkpoint, about 15 s, shared by the tests of this file (one
#: pytest-xdist worker runs them all, so it is exported once)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("generate_worker-shipped")]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    save_tiny_llama(root / "ckpt")
    export_checkpoint(root / "ckpt", root / "out", check=False, progress=False)
    return root / "out"


def test_worker_steps_match_in_process_steps(shipped):
    archive = shipped / "model.nnef.tgz"
    here, there = InProcessSteps(archive), ChildSteps(archive)
    try:
        ids = np.array([[1, 5, 9, 4]], dtype=np.int64)
        for _ in range(4):
            a, b = here.step(ids), there.step(ids)
            assert np.array_equal(a, b) and a.std() > 0
            ids = np.array([[int(a.argmax())]], dtype=np.int64)
    finally:
        there.close()
    assert not there.work.exists()


def test_generate_text_in_worker_and_in_process_agree(shipped):
    kw = dict(prompt="once upon a time", max_new_tokens=6, temperature=0.8, seed=3)
    worker = generate_text(shipped, **kw)
    here = generate_text(shipped, in_process=True, **kw)
    assert worker.tokens == here.tokens and worker.text == here.text and len(worker.tokens) > 1


def test_a_step_without_a_session_is_an_error(shipped):
    steps = ChildSteps(shipped / "model.nnef.tgz")
    steps.close()
    steps.work.mkdir()
    with pytest.raises(TractRunError, match="no generation session"):
        steps.step(np.array([[1]], dtype=np.int64))
    shutil.rmtree(steps.work)

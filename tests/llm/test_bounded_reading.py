"""Streamed export reads every weight a slab of rows at a time: writing (q4_0 and float), the
PyTorch reference passes (embedding, LM head) and the tract check never hold a whole
source tensor, so peak memory does not grow with the largest weight of the checkpoint; and
the reference pass takes the slabs the writer read, so each is read from disk once."""

from __future__ import annotations

import math
from collections import Counter

import pytest

import t2n_core.deferred
from t2n_core.llm.checkpoint import ShardTensor
from tests.llm.checkpoints import save_tiny_llama

SLAB_VALUES = 512  # 8 rows of the 64-wide weights: the 128-row embedding takes 16 slabs


@pytest.mark.slow
@pytest.mark.parametrize(("codec", "tied"), [("q4_0", True), (None, False)])
def test_export_reads_weights_a_slab_at_a_time(codec, tied, tmp_path, monkeypatch):
    from t2n_quant.llm import export_checkpoint

    save_tiny_llama(tmp_path / "ckpt", shard_size="40KB", tie_word_embeddings=tied)
    monkeypatch.setattr(t2n_core.deferred, "FLOAT_SLAB_VALUES", SLAB_VALUES)
    reads: list[tuple[str, int, int]] = []
    read_rows = ShardTensor.read_rows

    def recorded(self: ShardTensor, first: int, last: int):  # type: ignore[no-untyped-def]
        reads.append((self.key, first, last))
        return read_rows(self, first, last)

    monkeypatch.setattr(ShardTensor, "read_rows", recorded)
    shipped = export_checkpoint(
        tmp_path / "ckpt", tmp_path / "out", codec=codec, progress=False, check=True
    )
    assert shipped.check is not None and shipped.check.passed
    assert shipped.manifest["quantized_weights"] == (15 if codec else 0)
    row_values = {k: math.prod(t.shape[1:]) for k, t in _tensors(tmp_path / "ckpt").items()}
    too_big = [(k, a, b) for k, a, b in reads if (b - a) * row_values[k] > SLAB_VALUES]
    assert not too_big
    embedding = "model.embed_tokens.weight"
    slabs = {(a, b) for k, a, b in reads if k == embedding and b - a > 1}
    assert slabs and min(a for a, _ in slabs) == 0 and max(b for _, b in slabs) == 128
    if not tied:  # the LM head is its own tensor, read a slab at a time too
        assert {(a, b) for k, a, b in reads if k == "lm_head.weight"} == slabs
    # the io samples' PyTorch pass ran beside the writer on its slabs: each read once
    counts = Counter((k, a, b) for k, a, b in reads if b - a > 1)
    assert {k for k, _, _ in counts} == set(row_values)
    assert set(counts.values()) == {1}


def _tensors(directory):  # type: ignore[no-untyped-def]
    from t2n_core.llm.checkpoint import open_checkpoint

    return open_checkpoint(directory).tensors

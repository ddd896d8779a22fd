"""Embedding, index_select, gather, indexing with a tensor, one_hot in tract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2n_core.errors import T2NError
from tests.helpers import Fn, FnIndexed, export_and_check


class TokenEmbedding(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, 4)

    def forward(self, ids):
        return self.proj(self.embed(ids))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=["i64-ids", "i32-ids"])
def test_embedding_dynamic_length(dtype, tmp_path):
    model = TokenEmbedding()
    result = export_and_check(
        model, (torch.randint(0, 50, (2, 5), dtype=dtype),), tmp_path,
        dynamic_axes={"ids": {1: "T"}},
        check_inputs=[(torch.randint(0, 50, (2, 12), dtype=dtype),)],
    )  # fmt: skip
    assert result.inputs[0].dtype == ("i64" if dtype == torch.int64 else "i32")


def test_embedding_weight_is_the_gather_data_input(tmp_path):
    """The table feeds tract_core_gather directly (so a Q4_0 table can stay compressed)."""
    model = nn.Embedding(20, 32)
    result = export_and_check(model, (torch.tensor([[1, 7, 19]]),), tmp_path)
    assert result.op_histogram == {"tract_core_gather": 1}
    import tarfile

    with tarfile.open(result.path) as tar:
        text = tar.extractfile("graph.nnef").read().decode()
    assert "output = tract_core_gather(weight, input, axis = 0, datum_type = 'f32');" in text


def test_embedding_padding_idx_and_functional(tmp_path):
    weight = torch.randn(10, 4)
    model = FnIndexed(lambda w, i: F.embedding(i, w, padding_idx=0) * 2)
    export_and_check(model, (weight, torch.tensor([[0, 3], [9, 0]])), tmp_path)


def _x() -> torch.Tensor:
    return torch.randn(4, 6, 5)


SELECT = [
    ("index_select-0", lambda x, i: x.index_select(0, i[:3] % 4)),
    ("index_select-1", lambda x, i: torch.index_select(x, 1, i)),
    ("index_select-last", lambda x, i: x.index_select(-1, i % 5)),
    ("gather-last", lambda x, i: torch.gather(x, -1, (i % 5).view(1, 1, -1).expand(4, 6, -1))),
    ("gather-mid", lambda x, i: torch.gather(x, 1, i.view(1, -1, 1).expand(4, -1, 5))),
    ("gather-smaller-index", lambda x, i: torch.gather(x, 1, i[:2].view(1, 2, 1).expand(3, 2, 4))),
    ("index-first-axis", lambda x, i: x[i % 4]),
    ("index-middle-axis", lambda x, i: x[:, i]),
    ("index-last-axis", lambda x, i: x[..., i % 5]),
    ("index-2d-index", lambda x, i: x[:, i.view(2, -1)]),
    ("index-negative", lambda x, i: x[:, i - 6]),
]


@pytest.mark.parametrize("fn", [f for _, f in SELECT], ids=[i for i, _ in SELECT])
def test_select(fn, tmp_path):
    idx = torch.tensor([5, 0, 3, 3, 1, 2])
    export_and_check(FnIndexed(fn), (_x(), idx), tmp_path)


def test_index_select_dynamic_index_count(tmp_path):
    export_and_check(
        FnIndexed(lambda x, i: x.index_select(1, i)), (_x(), torch.tensor([1, 4, 2])), tmp_path,
        dynamic_axes={"idx": {0: "N"}}, check_inputs=[(_x(), torch.tensor([5, 0, 0, 3, 1]))],
    )  # fmt: skip


def test_index_with_bool_mask_is_refused(tmp_path):
    """x[mask] has a data-dependent size: export refuses it (before writing anything)."""
    with pytest.raises(T2NError):
        export_and_check(FnIndexed(lambda x, m: x[m]), (_x(), torch.rand(4, 6, 5) > 0.5), tmp_path)


ONE_HOT = [
    ("one_hot", lambda i: F.one_hot(i, 7)),
    ("one_hot-float", lambda i: F.one_hot(i, 7).float() * 0.5),
]


@pytest.mark.parametrize("fn", [f for _, f in ONE_HOT], ids=[i for i, _ in ONE_HOT])
def test_one_hot(fn, tmp_path):
    result = export_and_check(
        Fn(fn), (torch.randint(0, 7, (2, 5)),), tmp_path,
        dynamic_axes={"x": {1: "T"}}, check_inputs=[(torch.randint(0, 7, (2, 3)),)],
    )  # fmt: skip
    assert result.op_histogram.get("tract_core_one_hot") == 1

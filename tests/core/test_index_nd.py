"""Advanced indexing with several index tensors (``x[i, j]``) as ``tract_core_gather_nd``."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import FnIndexed, export_and_check

CASES = [
    ("first-two-axes", lambda x, i: x[i % 4, i]),
    ("middle-and-last", lambda x, i: x[:, i, i % 5]),
    ("all-three-axes", lambda x, i: x[i % 4, i, i % 5]),
    ("not-adjacent", lambda x, i: x[i % 4, :, i % 5]),
    ("broadcast-outer", lambda x, i: x[(i % 4).view(-1, 1), i[:3].view(1, -1)]),
    ("broadcast-middle", lambda x, i: x[:, i.view(2, 3), i[:3] % 5]),
    ("negative", lambda x, i: x[i % 4 - 4, -1 - i % 5]),
    ("mixed-sign", lambda x, i: x[:, i - 3, i % 5 - 2]),
    ("int32", lambda x, i: x[(i % 4).int(), i.int()]),
    ("arange-mask-pattern", lambda x, i: x[torch.arange(1).view(1, 1, 1, 1), i.view(1, 1, -1, 1)]),
]


@pytest.mark.parametrize("fn", [f for _, f in CASES], ids=[i for i, _ in CASES])
def test_index_several_tensors(fn, tmp_path):
    x, idx = torch.randn(4, 6, 5), torch.tensor([5, 0, 3, 3, 1, 2])
    result = export_and_check(FnIndexed(fn), (x, idx), tmp_path)
    assert result.op_histogram.get("tract_core_gather_nd") == 1


@pytest.mark.parametrize(
    "fn", [lambda x, i: x[:, i % 6, i % 3], lambda x, i: x[i % 2, :, i % 3]],
    ids=["adjacent", "not-adjacent"],
)  # fmt: skip
def test_index_several_tensors_dynamic(fn, tmp_path):
    """Dynamic indexed length (T) and dynamic index count (N)."""
    export_and_check(
        FnIndexed(fn), (torch.randn(2, 7, 3), torch.tensor([4, 1, 6])), tmp_path,
        dynamic_axes={"x": {1: "T"}, "idx": {0: "N"}},
        check_inputs=[(torch.randn(2, 9, 3), torch.tensor([8, 0, 2, 2, 7]))],
    )  # fmt: skip

"""Ops added for parity with the reference exporter: scatter family and index_put, sorting
and searching, running reductions, float checks, grid sampling. Each case is the op matrix's
(``benchmarks/op_matrix.py``: one public torch call), exported and run in tract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.op_matrix import CASES, Call
from tests.helpers import export_and_check

NEW_OPS = [
    "scatter", "scatter_add", "scatter_reduce_sum", "scatter_reduce_amax", "index_add",
    "index_copy", "index_put", "index_put_accumulate", "sort", "sort_indices", "argsort",
    "msort", "kthvalue", "median_dim", "searchsorted", "bucketize", "cumprod", "cummax", "cummin",
    "logcumsumexp", "isnan", "isinf", "isposinf", "nan_to_num", "F.grid_sample",
    "F.grid_sample_nearest", "setitem_slice", "setitem_strided", "setitem_2d", "select_scatter",
    "F.max_pool1d_with_indices", "F.max_pool2d_with_indices", "F.max_pool3d_with_indices",
    "F.max_unpool1d", "F.max_unpool2d", "embedding_bag", "embedding_bag_sum",
    "erfc", "exp2", "signbit", "fmax", "fmin", "atan2", "hypot", "copysign", "var_mean",
    "std_mean", "addbmm", "hamming_window", "kaiser_window", "ldexp", "dist", "tril_indices",
    "addmv",
]  # fmt: skip


@pytest.mark.parametrize("name", NEW_OPS)
def test_op_runs_in_tract(name: str, tmp_path) -> None:
    fn, make = CASES[name]
    torch.manual_seed(0)
    inputs = make()
    model = fn if isinstance(fn, nn.Module) else Call(fn)
    names = [f"input_{i}" for i in range(len(inputs))]
    export_and_check(model, inputs, tmp_path, input_names=names, atol=1e-4, rtol=1e-3)


def test_float_checks_see_real_nan_and_inf(tmp_path) -> None:
    x = torch.tensor([[1.0, float("nan"), float("inf"), -float("inf"), 0.0]])
    model = Call(lambda t: torch.stack([torch.isnan(t), torch.isinf(t)]).float()
                 + torch.nan_to_num(t, nan=2.0, posinf=3.0, neginf=-3.0))  # fmt: skip
    export_and_check(model, (x,), tmp_path, input_names=["x"])


def test_cumprod_keeps_signs_and_zeros(tmp_path) -> None:
    x = torch.tensor([[2.0, -1.5, 0.5, -2.0, 0.0, 3.0], [-1.0, -1.0, 4.0, 0.25, 1.0, -2.0]])
    export_and_check(Call(lambda t: torch.cumprod(t, 1)), (x,), tmp_path, input_names=["x"])


def test_scatter_reduce_mean_is_refused_with_a_hint(tmp_path) -> None:
    import t2n_core
    from t2n_core.errors import TranslationError

    model = Call(lambda x, i: torch.scatter_reduce(x, 1, i, x[:, :2], "mean"))
    with pytest.raises(TranslationError, match="scatter_add"):
        t2n_core.export(model, (torch.randn(2, 4), torch.tensor([[0, 1], [1, 1]])),
                        tmp_path / "m.tgz", progress=False)  # fmt: skip


def test_max_pool_indices_with_padding(tmp_path) -> None:
    import torch.nn.functional as F

    model = Call(lambda x: F.max_pool2d(x, 3, 2, padding=1, return_indices=True))
    export_and_check(model, (torch.randn(1, 2, 7, 6),), tmp_path, input_names=["x"])


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_with_offsets_and_an_empty_bag(mode: str, tmp_path) -> None:
    import torch.nn.functional as F

    model = Call(lambda i, o, w: F.embedding_bag(i, w, o, mode=mode))
    ids, offsets = torch.tensor([3, 1, 4, 1, 5, 9, 2]), torch.tensor([0, 2, 2, 5])
    export_and_check(model, (ids, offsets, torch.randn(10, 4)), tmp_path,
                     input_names=["ids", "offsets", "weight"])  # fmt: skip


def test_slice_assignment_to_the_end_of_a_dynamic_axis(tmp_path) -> None:
    """``out[:, :, i] = x`` slices the batch axis to torch's ``sys.maxsize``: on a dynamic
    batch that is the whole axis (Qwen3-Next's recurrent step writes its output so)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[:, :, 1] = x[:, :, 0] * 2
        return out

    x = torch.randn(3, 2, 4)
    export_and_check(Call(fn), (x,), tmp_path, input_names=["x"], dynamic_axes={"x": {0: "B"}},
                     check_inputs=[(torch.randn(5, 2, 4),)])  # fmt: skip

"""Max/avg pooling and adaptive pooling, exported and run in tract."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Fn, export_and_check

POOL2D = {
    "max-k2": lambda x: F.max_pool2d(x, 2),
    "max-k3-s2-p1": lambda x: F.max_pool2d(x, 3, 2, 1),
    "max-dilated": lambda x: F.max_pool2d(x, 2, 1, 1, dilation=2),
    "max-ceil": lambda x: F.max_pool2d(x, 2, ceil_mode=True),
    "max-ceil-k3-s2-p1": lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
    "avg-k2": lambda x: F.avg_pool2d(x, 2),
    "avg-k3-s2-p1": lambda x: F.avg_pool2d(x, 3, 2, 1),
    "avg-exclude-pad": lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
    "avg-ceil": lambda x: F.avg_pool2d(x, 2, ceil_mode=True),
    "avg-ceil-pad": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
    "avg-ceil-pad-exclude": lambda x: F.avg_pool2d(
        x, 3, 2, 1, ceil_mode=True, count_include_pad=False
    ),
    "avg-divisor": lambda x: F.avg_pool2d(x, 2, padding=1, divisor_override=3),
    "adaptive-avg-1": lambda x: F.adaptive_avg_pool2d(x, 1),
    "adaptive-max-1": lambda x: F.adaptive_max_pool2d(x, 1),
}


@pytest.mark.parametrize("name", list(POOL2D))
def test_pool2d_dynamic_height(tmp_path, name):
    export_and_check(
        Fn(POOL2D[name]), (torch.randn(2, 3, 9, 11),), tmp_path,
        dynamic_axes={"x": {0: "N", 2: "H"}},
        check_inputs=[(torch.randn(1, 3, 12, 11),), (torch.randn(2, 3, 7, 11),)],
    )  # fmt: skip


ADAPTIVE = {
    "avg-divisible": lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
    "avg-uneven": lambda x: F.adaptive_avg_pool2d(x, (4, 5)),
    "avg-keep-axis": lambda x: F.adaptive_avg_pool2d(x, (None, 3)),
    "max-divisible": lambda x: F.adaptive_max_pool2d(x, (3, 2)),
    "max-uneven": lambda x: F.adaptive_max_pool2d(x, (4, 5)),
    "avg-1d-uneven": lambda x: F.adaptive_avg_pool1d(x.flatten(2), 5),
    "max-1d-1": lambda x: F.adaptive_max_pool1d(x.flatten(2), 1),
    "avg-unbatched": lambda x: F.adaptive_avg_pool2d(x[0], (4, 5)),
    "max-unbatched": lambda x: F.adaptive_max_pool2d(x[0], (3, 5)),
}


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_adaptive_pool_static(tmp_path, name):
    export_and_check(Fn(ADAPTIVE[name]), (torch.randn(2, 3, 9, 8),), tmp_path)


POOL1D = {
    "max": lambda x: F.max_pool1d(x, 3, 2, 1),
    "max-ceil": lambda x: F.max_pool1d(x, 2, ceil_mode=True),
    "avg": lambda x: F.avg_pool1d(x, 4, 2),
    "avg-exclude-pad": lambda x: F.avg_pool1d(x, 3, 1, 1, count_include_pad=False),
    "max-unbatched": lambda x: F.max_pool1d(x[0], 2),
}


@pytest.mark.parametrize("name", list(POOL1D))
def test_pool1d_dynamic_time(tmp_path, name):
    export_and_check(
        Fn(POOL1D[name]), (torch.randn(2, 3, 17),), tmp_path,
        dynamic_axes={"x": {2: "T"}}, check_inputs=[(torch.randn(2, 3, 24),)],
    )  # fmt: skip


def test_max_pool3d(tmp_path):
    export_and_check(Fn(lambda x: F.max_pool3d(x, 2, 2)), (torch.randn(1, 2, 4, 6, 5),), tmp_path)


def test_adaptive_pool_on_dynamic_axis_needs_static_sizes(tmp_path):
    from t2n_core.errors import TranslationError

    with pytest.raises(TranslationError, match="static input and output sizes"):
        export_and_check(
            Fn(lambda x: F.adaptive_avg_pool1d(x, 4)), (torch.randn(2, 3, 17),), tmp_path,
            dynamic_axes={"x": {2: "T"}},
        )  # fmt: skip

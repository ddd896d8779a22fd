"""Interpolation (nearest, bilinear, linear) and pixel (un)shuffle, exported and run in tract."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Fn, export_and_check

INTEGER = {
    "nearest-x2": dict(scale_factor=2),
    "nearest-x2x3": dict(scale_factor=(2, 3)),
    "bilinear-x2": dict(scale_factor=2, mode="bilinear"),
    "bilinear-x3-align-corners": dict(scale_factor=3, mode="bilinear", align_corners=True),
    "nearest-exact-x2": dict(scale_factor=2, mode="nearest-exact"),
}


@pytest.mark.parametrize("name", list(INTEGER))
def test_interpolate_integer_scale_dynamic(tmp_path, name):
    kwargs = INTEGER[name]
    result = export_and_check(
        Fn(lambda x: F.interpolate(x, **kwargs)), (torch.randn(2, 3, 5, 6),), tmp_path,
        dynamic_axes={"x": {2: "H", 3: "W"}}, check_inputs=[(torch.randn(2, 3, 7, 4),)],
    )  # fmt: skip
    assert "matmul" not in result.op_histogram


SIZED = {
    "nearest-size-up": dict(size=(8, 10)),
    "nearest-size-down": dict(size=(3, 4)),
    "nearest-scale-1.5": dict(scale_factor=1.5),
    "bilinear-size": dict(size=(8, 13), mode="bilinear"),
    "bilinear-size-align-corners": dict(size=(8, 13), mode="bilinear", align_corners=True),
    "bilinear-down": dict(size=(3, 4), mode="bilinear"),
    "bilinear-scale-0.6": dict(scale_factor=0.6, mode="bilinear"),
    "bilinear-mixed": dict(size=(10, 9), mode="bilinear"),
    "nearest-exact-size": dict(size=(7, 9), mode="nearest-exact"),
}


@pytest.mark.parametrize("name", list(SIZED))
def test_interpolate_static_sizes(tmp_path, name):
    kwargs = SIZED[name]
    export_and_check(Fn(lambda x: F.interpolate(x, **kwargs)), (torch.randn(2, 3, 5, 6),), tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [dict(scale_factor=2), dict(scale_factor=2, mode="linear"),
     dict(size=11, mode="linear", align_corners=True)],
    ids=["nearest", "linear", "linear-size-align-corners"],
)  # fmt: skip
def test_interpolate_1d(tmp_path, kwargs):
    dynamic = "size" not in kwargs
    export_and_check(
        Fn(lambda x: F.interpolate(x, **kwargs)), (torch.randn(2, 3, 7),), tmp_path,
        dynamic_axes={"x": {2: "T"}} if dynamic else None,
        check_inputs=[(torch.randn(2, 3, 12),)] if dynamic else None,
    )  # fmt: skip


def test_interpolate_size_from_input(tmp_path):
    """A size computed from the input's dynamic size (``2 * H``) is an integer factor."""
    model = Fn(lambda x: F.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2), mode="bilinear"))
    export_and_check(
        model, (torch.randn(1, 2, 4, 5),), tmp_path,
        dynamic_axes={"x": {2: "H", 3: "W"}}, check_inputs=[(torch.randn(1, 2, 6, 3),)],
    )  # fmt: skip


def test_interpolate_non_integer_on_dynamic_axis_is_refused(tmp_path):
    from t2n_core.errors import TranslationError

    with pytest.raises(TranslationError, match="static sizes"):
        export_and_check(
            Fn(lambda x: F.interpolate(x, scale_factor=1.5)), (torch.randn(1, 2, 4, 5),),
            tmp_path, dynamic_axes={"x": {2: "H"}},
        )  # fmt: skip


@pytest.mark.parametrize("factor", [2, 3])
def test_pixel_shuffle_roundtrip_dynamic(tmp_path, factor):
    model = Fn(lambda x: F.pixel_unshuffle(F.pixel_shuffle(x, factor) * 2.0, factor))
    c = 2 * factor * factor
    export_and_check(
        model, (torch.randn(2, c, 3, 4),), tmp_path,
        dynamic_axes={"x": {2: "H", 3: "W"}}, check_inputs=[(torch.randn(2, c, 5, 2),)],
    )  # fmt: skip


def test_pixel_shuffle_and_unshuffle(tmp_path):
    model = Fn(lambda x: (F.pixel_shuffle(x, 2), F.pixel_unshuffle(x, 2)))
    export_and_check(model, (torch.randn(1, 8, 4, 6),), tmp_path)


def test_nearest_3d_integer_scale(tmp_path):
    model = Fn(lambda x: F.interpolate(x, scale_factor=(1, 2, 3)))
    export_and_check(model, (torch.randn(1, 2, 3, 4, 5),), tmp_path)

"""Normalization layers exported and run in tract, over dynamic axes where natural."""

import pytest
import torch
from torch import nn

from tests.helpers import export_and_check


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_floating_point():
                if "var" in name:  # variances must be positive
                    tensor.copy_(torch.rand_like(tensor) + 0.5)
                else:
                    tensor.copy_(torch.randn_like(tensor))
    return model.eval()


@pytest.mark.parametrize(
    "shape,normalized",
    [((2, 7, 16), 16), ((2, 7, 4, 6), (4, 6))],
    ids=["last-axis", "last-two-axes"],
)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm(tmp_path, shape, normalized, affine):
    model = _randomize(nn.LayerNorm(normalized, elementwise_affine=affine, eps=1e-3))
    other = (2, 3, *shape[2:])
    export_and_check(
        model, (torch.randn(*shape) * 3 + 1,), tmp_path,
        dynamic_axes={"input": {1: "T"}}, check_inputs=[(torch.randn(*other),)],
    )  # fmt: skip


@pytest.mark.parametrize("normalized", [8, (3, 8)], ids=["last-axis", "last-two-axes"])
@pytest.mark.parametrize("eps", [None, 1e-2], ids=["default-eps", "eps"])
def test_rms_norm(tmp_path, normalized, eps):
    model = _randomize(nn.RMSNorm(normalized, eps=eps))
    export_and_check(
        model, (torch.randn(2, 5, 3, 8),), tmp_path,
        dynamic_axes={"x": {1: "T"}}, check_inputs=[(torch.randn(2, 9, 3, 8),)],
    )  # fmt: skip


@pytest.mark.parametrize(
    "module,shape,axis",
    [
        (lambda: nn.BatchNorm1d(6), (3, 6), 0),
        (lambda: nn.BatchNorm1d(6), (3, 6, 10), 2),
        (lambda: nn.BatchNorm2d(6), (2, 6, 5, 7), 2),
        (lambda: nn.BatchNorm2d(6, affine=False), (2, 6, 5, 7), 3),
        (lambda: nn.BatchNorm2d(6, track_running_stats=False), (4, 6, 5, 7), 2),
    ],
    ids=["1d-features", "1d-sequence", "2d", "2d-no-affine", "2d-batch-statistics"],
)
def test_batch_norm(tmp_path, module, shape, axis):
    model = _randomize(module())
    other = list(shape)
    other[axis] += 3
    export_and_check(
        model, (torch.randn(*shape) * 2 + 1,), tmp_path,
        dynamic_axes={"input": {axis: "T"}}, check_inputs=[(torch.randn(*other),)],
    )  # fmt: skip


@pytest.mark.parametrize(
    "module,shape",
    [
        (lambda: nn.InstanceNorm1d(4), (2, 4, 9)),
        (lambda: nn.InstanceNorm1d(4, affine=True), (2, 4, 9)),
        (lambda: nn.InstanceNorm2d(4, affine=True), (2, 4, 5, 6)),
    ],
    ids=["1d", "1d-affine", "2d-affine"],
)
def test_instance_norm(tmp_path, module, shape):
    model = _randomize(module())
    other = (*shape[:2], shape[2] + 4, *shape[3:])
    export_and_check(
        model, (torch.randn(*shape) * 2 + 1,), tmp_path,
        dynamic_axes={"input": {2: "T"}}, check_inputs=[(torch.randn(*other),)],
    )  # fmt: skip


def test_instance_norm_with_running_stats(tmp_path):
    model = _randomize(nn.InstanceNorm2d(4, affine=True, track_running_stats=True))
    export_and_check(model, (torch.randn(2, 4, 5, 6),), tmp_path)


@pytest.mark.parametrize(
    "groups,shape",
    [(2, (2, 8, 10)), (4, (2, 8, 5, 6)), (8, (2, 8, 5, 6)), (1, (2, 8, 5, 6))],
    ids=["1d-2-groups", "2d-4-groups", "2d-depthwise-groups", "2d-one-group"],
)
def test_group_norm(tmp_path, groups, shape):
    model = _randomize(nn.GroupNorm(groups, shape[1]))
    other = (*shape[:2], shape[2] + 3, *shape[3:])
    export_and_check(
        model, (torch.randn(*shape) * 2 + 1,), tmp_path,
        dynamic_axes={"input": {2: "T"}}, check_inputs=[(torch.randn(*other),)],
    )  # fmt: skip

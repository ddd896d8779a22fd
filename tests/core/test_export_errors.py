"""Bad input gets a clear error before anything is written."""

import pytest
import torch
from torch import nn

import t2n_core
from t2n_core.errors import (
    ArchiveExistsError,
    ArchiveTargetError,
    CaptureError,
    ExportInputError,
    UnsupportedOpsError,
)


class TwoExoticOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        y = torch.special.bessel_j0(self.inner(x))
        return torch.special.zeta(y, 2.0)


def _no_files(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_unsupported_ops_are_all_listed_with_module_and_line(tmp_path):
    with pytest.raises(UnsupportedOpsError) as info:
        t2n_core.export(TwoExoticOps(), (torch.randn(2, 4),), tmp_path / "m.tgz", progress=False)
    message = str(info.value)
    assert len(info.value.problems) == 2
    assert "bessel_j0" in message and "zeta" in message
    assert "test_export_errors.py:" in message
    assert _no_files(tmp_path) == []


class TupleWithInt(nn.Module):
    def forward(self, x):
        return x + 1, 3


def test_non_tensor_output_is_refused(tmp_path):
    with pytest.raises(ExportInputError, match="must be tensors"):
        t2n_core.export(TupleWithInt(), (torch.randn(2),), tmp_path / "m.tgz", progress=False)
    assert _no_files(tmp_path) == []


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_data_dependent_control_flow_is_refused(tmp_path, capfd):
    with pytest.raises(CaptureError, match=r"depends on tensor values at .*test_export_errors"
                       r"\.py:\d+ \(if x\.sum\(\) > 0:\).*torch\.where") as info:  # fmt: skip
        t2n_core.export(DataDependent(), (torch.randn(3),), tmp_path / "m.tgz", progress=False)
    assert _no_files(tmp_path) == []
    assert len(str(info.value)) < 500
    assert "def forward" not in capfd.readouterr().err  # torch's graph dump stays quiet


class HardCodedBatch(nn.Module):
    def forward(self, x):
        return x.reshape(4, -1)


def test_a_dynamic_axis_fixed_by_the_code_is_named(tmp_path):
    with pytest.raises(CaptureError, match=r"dynamic axis 0 \(B\) of input 'x' was fixed to 4 "
                       r"by the model's code.*reshape"):  # fmt: skip
        t2n_core.export(HardCodedBatch(), (torch.randn(4, 3),), tmp_path / "m.tgz",
                        dynamic_axes={"x": {0: "B"}})  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_names": ["a", "b"]}, "2 input_names given for 1 tensor input"),
        ({"output_names": ["y", "z"]}, "2 output_names given for 1 output"),
        ({"dynamic_axes": {"y": {0: "B"}}}, "unknown input"),
        ({"dynamic_axes": {"input": {5: "B"}}}, "out of range"),
        ({"dynamic_axes": {"input": {0: "not a name"}}}, "must be an identifier"),
        ({"input_names": ["bad-name"]}, "must be an NNEF identifier"),
    ],
    ids=["input-count", "output-count", "unknown-axis-input", "axis-range", "axis-name", "name"],
)
def test_bad_names_and_axes(tmp_path, kwargs, match):
    with pytest.raises(ExportInputError, match=match):
        t2n_core.export(
            nn.Linear(4, 2), (torch.randn(3, 4),), tmp_path / "m.tgz", progress=False, **kwargs
        )
    assert _no_files(tmp_path) == []


def test_dynamic_axis_of_size_one_explains_itself(tmp_path):
    with pytest.raises(ExportInputError, match="size 2 or more"):
        t2n_core.export(
            nn.Linear(4, 2),
            (torch.randn(1, 4),),
            tmp_path / "m.tgz",
            dynamic_axes={"input": {0: "B"}},
            progress=False,
        )


def test_existing_target_is_refused_unless_overwrite(tmp_path):
    target = tmp_path / "m.nnef.tgz"
    target.write_bytes(b"keep me")
    with pytest.raises(ArchiveExistsError, match="overwrite=True"):
        t2n_core.export(nn.Linear(4, 2), (torch.randn(3, 4),), target, progress=False)
    assert target.read_bytes() == b"keep me"
    with pytest.raises(ArchiveTargetError, match="not a tar archive"):  # not ours to replace
        t2n_core.export(nn.Linear(4, 2), (torch.randn(3, 4),), target, overwrite=True)
    assert target.read_bytes() == b"keep me"
    target.unlink()
    t2n_core.export(nn.Linear(4, 2), (torch.randn(3, 4),), target, progress=False)
    first = target.read_bytes()
    t2n_core.export(nn.Linear(4, 3), (torch.randn(3, 4),), target, overwrite=True, progress=False)
    assert target.read_bytes() != first


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    import t2n_core.nnef.dat as dat

    def broken(_tensor):
        raise OSError("disk full")

    monkeypatch.setattr(dat, "tensor_buffer", broken)
    target = tmp_path / "m.nnef.tgz"
    with pytest.raises(OSError, match="disk full"):
        t2n_core.export(nn.Linear(4, 2), (torch.randn(3, 4),), target, progress=False)
    assert _no_files(tmp_path) == []


def test_failed_overwrite_keeps_the_old_archive(tmp_path, monkeypatch):
    import t2n_core.nnef.dat as dat

    target = tmp_path / "m"
    t2n_core.export(nn.Linear(4, 2), (torch.randn(3, 4),), target, progress=False)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(dat, "tensor_buffer", lambda _t: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        t2n_core.export(nn.Linear(4, 2), (torch.randn(3, 4),), target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert _no_files(tmp_path) == ["m"]


def test_not_a_module_is_refused(tmp_path):
    with pytest.raises(ExportInputError, match=r"nn\.Module"):
        t2n_core.export(lambda x: x, (torch.randn(2),), tmp_path / "m.tgz")


class VarArgs(nn.Module):
    """``forward(self, scale, *xs)``: tensors passed through ``*xs``."""

    def forward(self, scale: torch.Tensor, *xs: torch.Tensor) -> torch.Tensor:
        return scale * sum(torch.nn.functional.avg_pool1d(x, 3) * (i + 1) for i, x in enumerate(xs))


def test_varargs_forward_with_dynamic_axes(tmp_path) -> None:
    from tests.helpers import export_and_check

    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(1, 1, 1, generator=g) + 2,
        *(torch.randn(2, 3, 9, generator=g) for _ in range(3)),
    )
    axes = {f"xs_{i}": {2: "T"} for i in range(3)}
    result = export_and_check(
        VarArgs(), args, tmp_path, dynamic_axes=axes,
        check_inputs=[(args[0], *(torch.randn(2, 3, 12, generator=g) for _ in range(3)))],
    )  # fmt: skip
    assert [i.name for i in result.inputs] == ["scale", "xs_0", "xs_1", "xs_2"]


class SameTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        y = self.linear(x)
        return y, y


def test_an_output_returned_twice_exports(tmp_path):
    from tests.helpers import export_and_check

    result = export_and_check(SameTwice(), torch.randn(2, 4), tmp_path)
    assert [o.name for o in result.outputs] == ["output_0", "output_1"]


class ComputesInBF16(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3).to(torch.bfloat16)

    def forward(self, x):
        return self.lin(x.bfloat16()).float()


def test_bf16_is_one_clear_error_with_the_fix(tmp_path, caplog):
    with pytest.raises(ExportInputError, match=r"no torch.bfloat16 type, used by input 'x'.*"
                       r"model\.float\(\)"):  # fmt: skip
        t2n_core.export(nn.Linear(4, 3).bfloat16(), (torch.randn(2, 4).bfloat16(),),
                        tmp_path / "a.tgz", input_names=["x"])  # fmt: skip
    with pytest.raises(ExportInputError, match=r"bfloat16 type, used by .*module 'lin'"):
        t2n_core.export(ComputesInBF16(), (torch.randn(2, 4),), tmp_path / "b.tgz")
    assert "written as f32" not in caplog.text
    assert list(tmp_path.iterdir()) == []


class Prints(nn.Module):
    def forward(self, x):
        torch.ops.aten._print("hello")
        return x * 2


def test_unsupported_op_report_names_the_user_level_op(tmp_path):
    with pytest.raises(UnsupportedOpsError, match=r"aten\._print\.default") as info:
        t2n_core.export(Prints(), (torch.randn(2, 4),), tmp_path / "m.tgz")
    assert "with_effects" not in str(info.value)


class _GroupedByValue(nn.Module):
    """JetMoE's router: tokens sorted by expert and split by per-expert counts read out of a
    tensor (``.tolist()``), each group through its expert's matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x[:, :4].topk(2, dim=1).indices
        sizes = torch.zeros(x.shape[0], 4).scatter(1, top, 1).long().sum(0).tolist()
        order = top.flatten().sort(0).indices
        parts = x[order.div(2, rounding_mode="trunc")].split(sizes, 0)
        return torch.cat([nn.functional.linear(p, self.weight[i]) for i, p in enumerate(parts)])


def test_sizes_read_from_tensor_values_are_named_as_such(tmp_path):
    """The guards torch.export keeps on sizes read from values (``ge``, ``eq`` on ``u0``...)
    are reported as sizes computed from tensor values, with the source line, not as ops
    lacking a translation; nothing is written."""
    with pytest.raises(UnsupportedOpsError) as info:
        t2n_core.export(_GroupedByValue(), (torch.randn(6, 8),), tmp_path / "g.nnef.tgz",
                        progress=False)  # fmt: skip
    message = str(info.value)
    assert "<built-in function eq>" in message and "test_export_errors.py" in message
    assert "a size or condition computed from tensor values (.tolist()" in message
    assert "no NNEF translation" not in message
    assert not (tmp_path / "g.nnef.tgz").exists()

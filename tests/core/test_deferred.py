"""DeferredTensor: a weight read only when used; its encoding is known without reading."""

from __future__ import annotations

import torch

from t2n_core.deferred import DeferredTensor
from t2n_core.nnef.dat import tensor_buffer


def counted(source: torch.Tensor) -> tuple[DeferredTensor, list[tuple[int, int]]]:
    reads: list[tuple[int, int]] = []

    def read(begin: int, end: int) -> torch.Tensor:
        reads.append((begin, end))
        return source[begin:end].to(torch.bfloat16)

    return DeferredTensor(read, tuple(source.shape), torch.float32, name="w"), reads


def test_encoding_reads_nothing_until_written():
    source = torch.randn(6, 4)
    weight, reads = counted(source)
    encoding = weight.nnef_encoding("w")
    (var,) = encoding.variables
    assert var.shape == (6, 4) and var.dtype == torch.float32 and var.nbytes == 96 and not reads
    assert bytes(var.data()) == bytes(tensor_buffer(source.bfloat16().float()))
    assert reads == [(0, 6)]


def test_writer_streams_the_payload_a_slab_at_a_time(monkeypatch):
    import t2n_core.deferred

    monkeypatch.setattr(t2n_core.deferred, "FLOAT_SLAB_VALUES", 8)  # two rows of 4 values
    source = torch.randn(6, 4)
    source[1, 2] = float("nan")
    weight, reads = counted(source)
    (var,) = weight.nnef_encoding("w").variables
    assert var.chunks is not None and not reads
    chunks = [bytes(c) for c in var.chunks()]
    assert [len(c) for c in chunks] == [32, 32, 32] and reads == [(0, 2), (2, 4), (4, 6)]
    assert b"".join(chunks) == bytes(tensor_buffer(source.bfloat16().float()))  # NaN bits too


def test_ops_run_on_the_values_and_embedding_reads_its_rows_only():
    source = torch.randn(6, 4)
    weight, reads = counted(source)
    expected = source.bfloat16().float()
    x = torch.randn(3, 4)
    torch.testing.assert_close(torch.nn.functional.linear(x, weight), x @ expected.T)
    reads.clear()
    ids = torch.tensor([[5, 1, 5]])
    torch.testing.assert_close(torch.nn.functional.embedding(ids, weight), expected[ids])
    assert sorted(reads) == [(1, 2), (5, 6)]


def test_proxy_is_untouched_and_plain_slices_are_not_folded():
    weight, reads = counted(torch.randn(6, 4))
    proxy = weight.nnef_float_proxy()
    assert type(proxy) is torch.Tensor and proxy.shape == (6, 4) and not reads
    assert weight.nnef_slice_rows(0, 2) is None  # a float weight: tract slices it itself


def test_unchecked_export_of_deferred_weights_skips_the_reference_forward(tmp_path):
    import pytest

    import t2n_core
    from t2n_core.check import check_archive
    from t2n_core.errors import ExportInputError

    source = torch.randn(6, 4)
    model = torch.nn.Linear(4, 6)
    weight, _ = counted(source)
    model._parameters["weight"] = weight  # type: ignore[assignment]
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    x = torch.randn(3, 4)
    with pytest.raises(ExportInputError, match="2 output_names given for 1 output"):
        t2n_core.export(model, (x,), tmp_path / "bad.nnef.tgz", output_names=["a", "b"],
                        progress=False)  # fmt: skip
    calls.clear()
    result = t2n_core.export(model, (x,), tmp_path / "m.nnef.tgz", output_names=["y"],
                             progress=False)  # fmt: skip
    assert len(calls) == 1  # the capture's trace only, no PyTorch reference pass
    expected = torch.nn.functional.linear(x, source.bfloat16().float(), model.bias.detach())
    report = check_archive(result.path, [x.numpy()], [expected.detach().numpy()])
    assert report.passed and result.outputs[0].name == "y"
    calls.clear()
    t2n_core.export(model, (x,), tmp_path / "n.nnef.tgz", progress=False)  # names from a pass
    assert len(calls) == 2

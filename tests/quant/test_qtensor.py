"""QTensor: a frozen, compressed tensor that behaves like its dequantized weight."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

from t2n_core.errors import T2NError
from t2n_quant import QTensor, quantize_tensor
from t2n_quant.errors import (
    AlreadyQuantizedError,
    ImmutableTensorError,
    NonFiniteWeightError,
    WeightRangeError,
)

SPECS = ["q4_0", "minmax:4:g32", "symmetric:3:pc"]


@pytest.fixture(params=SPECS)
def qt(request: pytest.FixtureRequest) -> QTensor:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    return quantize_tensor(w, request.param, name="fc.weight")


def test_ops_see_dequantized(qt: QTensor) -> None:
    w = qt.dequantize()
    x = torch.randn(3, 64)
    assert type(w) is torch.Tensor and w.dtype == torch.float32 and w.shape == qt.shape
    assert torch.equal(F.linear(x, qt), F.linear(x, w))
    assert torch.equal(qt + 1, w + 1)
    assert torch.equal(qt.t(), w.t())
    assert torch.equal(qt.sum(0), w.sum(0))
    assert type(qt * 2) is torch.Tensor


def test_embedding_dequantizes_only_rows(qt: QTensor, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = torch.tensor([[3, 0], [15, 3]])
    expected = F.embedding(idx, qt.dequantize())
    assert torch.equal(qt.dequantize_rows(idx), qt.dequantize()[idx])
    monkeypatch.setattr(QTensor, "dequantize", lambda *a, **k: pytest.fail("full dequantize"))
    assert torch.equal(F.embedding(idx, qt), expected)


def test_numpy_and_tolist(qt: QTensor) -> None:
    assert (qt.numpy() == qt.dequantize().numpy()).all()
    assert qt.tolist() == qt.dequantize().tolist()


def test_conv_weight() -> None:
    w = torch.randn(8, 4, 4, 2)
    qt = quantize_tensor(w, "q4_0")
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(F.conv2d(x, qt), F.conv2d(x, qt.dequantize()))


def test_stays_compressed(qt: QTensor) -> None:
    for other in (qt.detach(), qt.clone(), qt.to("cpu"), qt.data, copy.deepcopy(qt)):
        assert isinstance(other, QTensor)
        assert torch.equal(other.dequantize(), qt.dequantize())
    assert qt.detach().packed is qt.packed
    assert qt.clone().packed.data_ptr() != qt.packed.data_ptr()
    half = qt.to(torch.float16)
    assert isinstance(half, QTensor) and half.dtype == torch.float16
    assert torch.equal(half.dequantize(), qt.dequantize().half())
    meta = qt.to("meta")
    assert isinstance(meta, QTensor) and meta.packed.device.type == "meta"
    assert type(qt.to(torch.int32)) is torch.Tensor


def test_immutable(qt: QTensor) -> None:
    with pytest.raises(ImmutableTensorError, match=r"'fc\.weight'.*add_"):
        qt.add_(1)
    with pytest.raises(ImmutableTensorError, match=r"'fc.weight'"):
        qt.copy_(torch.zeros(16, 64))
    with pytest.raises(ImmutableTensorError, match=r"'fc.weight'"):
        torch.add(torch.ones(16, 64), 1, out=qt)
    with pytest.raises(ImmutableTensorError, match=r"'fc.weight'.*\.data ="):
        qt.data = torch.zeros(16, 64)
    with pytest.raises(RuntimeError):  # the builtin base works too
        qt.zero_()
    out = torch.empty(16, 64)
    out.copy_(qt)  # reading from a QTensor into a plain tensor is fine
    assert torch.equal(out, qt.dequantize())


def test_no_grad(qt: QTensor) -> None:
    assert qt.requires_grad is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert qt.requires_grad_(True).requires_grad is False
        p = torch.nn.Parameter(qt)  # requires_grad=True by default: ignored
    assert isinstance(p, QTensor) and isinstance(p, torch.nn.Parameter)
    assert p.requires_grad is False


def test_description(qt: QTensor) -> None:
    text = repr(qt)
    assert qt.codec.spec in text and "bits/weight" in text and "(16, 64)" in text
    assert "fc.weight" in text
    inner = qt.packed.numel() + 2 * qt.scale.numel() * (2 if qt.zero is not None else 1)
    assert qt.nbytes == inner


def test_pickle_and_save(qt: QTensor) -> None:
    for other in (pickle.loads(pickle.dumps(qt)), copy.deepcopy(qt)):
        assert isinstance(other, QTensor) and other.codec == qt.codec
        assert other.tensor_name == "fc.weight"
        assert torch.equal(other.dequantize(), qt.dequantize())
    buf = io.BytesIO()
    torch.save({"w": qt}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)["w"]
    assert isinstance(loaded, QTensor) and torch.equal(loaded.dequantize(), qt.dequantize())


def test_flatten_unflatten(qt: QTensor) -> None:
    names, ctx = qt.__tensor_flatten__()
    assert names[:2] == ["packed", "scale"] and ("zero" in names) == (qt.zero is not None)
    inner = {n: getattr(qt, n) for n in names}
    back = QTensor.__tensor_unflatten__(inner, ctx, qt.shape, qt.stride())
    assert torch.equal(back.dequantize(), qt.dequantize())


def test_float_proxy(qt: QTensor) -> None:
    proxy = qt.nnef_float_proxy()
    assert type(proxy) is torch.Tensor
    # only shape and dtype matter while capturing: the proxy is left uninitialised
    assert proxy.shape == qt.shape and proxy.dtype == qt.dtype


def test_errors_name_the_tensor(qt: QTensor) -> None:
    with pytest.raises(AlreadyQuantizedError, match=r"'fc.weight'"):
        quantize_tensor(qt, "q4_0")
    bad = torch.randn(4, 32)
    bad[2, 7] = float("inf")
    with pytest.raises(NonFiniteWeightError, match=r"'lm_head.weight'.*\(2, 7\)") as info:
        quantize_tensor(bad, "q4_0", name="lm_head.weight")
    assert isinstance(info.value, T2NError) and isinstance(info.value, ValueError)
    with pytest.raises(WeightRangeError, match="f16"):
        quantize_tensor(torch.full((2, 32), 1e9), "minmax:4:g32")
    with pytest.raises(TypeError):
        quantize_tensor(torch.ones(4, 32, dtype=torch.int32), "q4_0")


def test_half_and_bf16_weights() -> None:
    w = torch.randn(8, 64)
    for dtype in (torch.float16, torch.bfloat16):
        qt = quantize_tensor(w.to(dtype), "minmax:4:g32")
        assert qt.dtype == dtype and qt.dequantize().dtype == dtype
        ref = quantize_tensor(w.to(dtype).float(), "minmax:4:g32").dequantize().to(dtype)
        assert torch.equal(qt.dequantize(), ref)


def test_layout_is_checked() -> None:
    qt = quantize_tensor(torch.randn(4, 64), "minmax:4:g32")
    with pytest.raises(ValueError, match="needs zero"):
        QTensor(qt.codec, qt.packed, qt.scale, None, qt.shape, qt.dtype)
    with pytest.raises(ValueError, match="needs packed"):
        QTensor(qt.codec, qt.packed[:, :3], qt.scale, qt.zero, qt.shape, qt.dtype)

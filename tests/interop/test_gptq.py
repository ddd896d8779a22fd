"""GPTQ / AWQ layouts: unpacking proven against a dequantization written from the formats'
documentation (numpy loops, independent of the library code), then imported and run in tract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from t2n_quant import QTensor
from t2n_quant.interop.gptq import (
    GPTQFormatError,
    PackedLayout,
    dequantize_layer,
    import_gptq_checkpoint,
    layer_qtensor,
)
from t2n_quant.interop.safetensors import load_quantized
from tests.helpers import export_and_check

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: nibble k of a word holds column order[k]


def pack_gptq(codes: np.ndarray, zeros: np.ndarray, bits: int, v1: bool) -> tuple:
    """AutoGPTQ's packing, as documented: qweight [in/pack, out] packs inputs, qzeros
    [groups, out/pack] packs outputs, each code at bits (j % pack) * bits; v1 stores zero-1."""
    pack = 32 // bits
    n_in, out = codes.shape
    qweight = np.zeros((n_in // pack, out), dtype=np.uint32)
    for i in range(n_in):
        qweight[i // pack] |= codes[i].astype(np.uint32) << np.uint32((i % pack) * bits)
    stored = (zeros - 1) if v1 else zeros
    qzeros = np.zeros((zeros.shape[0], out // pack), dtype=np.uint32)
    for o in range(out):
        qzeros[:, o // pack] |= stored[:, o].astype(np.uint32) << np.uint32((o % pack) * bits)
    return torch.from_numpy(qweight.view(np.int32)), torch.from_numpy(qzeros.view(np.int32))


def pack_awq(codes: np.ndarray, zeros: np.ndarray) -> tuple:
    """AutoAWQ GEMM packing: word [r, c] holds column c*8 + order[k] at bits 4k."""

    def pack(values: np.ndarray) -> torch.Tensor:
        rows, cols = values.shape
        words = np.zeros((rows, cols // 8), dtype=np.uint32)
        for c in range(cols // 8):
            for k, col in enumerate(AWQ_PACK_ORDER):
                words[:, c] |= values[:, c * 8 + col].astype(np.uint32) << np.uint32(4 * k)
        return torch.from_numpy(words.view(np.int32))

    return pack(codes), pack(zeros)


def reference(codes, zeros, scales, g_idx, dtype=np.float32) -> np.ndarray:
    """W[o, i] = (q[i, o] - z[g(i), o]) * s[g(i), o] computed in ``dtype``, as [out, in]."""
    n_in, out = codes.shape
    w = np.zeros((out, n_in), dtype=dtype)
    for i in range(n_in):
        g = g_idx[i]
        w[:, i] = (codes[i].astype(dtype) - zeros[g].astype(dtype)) * scales[g].astype(dtype)
    return w


def layer(method: str, bits: int, group: int, n_in=256, out=64, seed=0, v1=True, act_order=False):
    rng = np.random.default_rng(seed)
    g = n_in if group == -1 else group
    groups = n_in // g
    codes = rng.integers(0, 1 << bits, (n_in, out))
    zeros = rng.integers(1 if v1 else 0, 1 << bits, (groups, out))  # v1 cannot store zero 0
    scales = (rng.random((groups, out)) * 0.02 + 0.001).astype(np.float16)
    g_idx = np.arange(n_in) // g
    if act_order:
        g_idx = rng.permutation(g_idx)
    if method == "gptq":
        qweight, qzeros = pack_gptq(codes, zeros, bits, v1)
        layout = PackedLayout("gptq", bits, group, 1 if v1 else 0)
    else:
        qweight, qzeros = pack_awq(codes, zeros)
        layout = PackedLayout("awq", bits, group, 0)
    tensors = {"qweight": qweight, "qzeros": qzeros, "scales": torch.from_numpy(scales),
               "g_idx": torch.from_numpy(g_idx.astype(np.int32))}  # fmt: skip
    return layout, tensors, (codes, zeros, scales, g_idx)


CASES = [("gptq", 4, 128, True), ("gptq", 4, 32, False), ("gptq", 2, 64, True),
         ("gptq", 8, -1, True), ("awq", 4, 128, False), ("awq", 4, 64, False)]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "bits", "group", "v1"),
    CASES,
    ids=[f"{m}-b{b}-g{g}{'-v1' if v else ''}" for m, b, g, v in CASES],
)
def test_lossless_where_the_layout_maps(method, bits, group, v1) -> None:
    layout, tensors, raw = layer(method, bits, group, v1=v1)
    qt, record = layer_qtensor(layout, tensors, "model.proj", dtype=torch.float32)
    assert record.exact and record.codec.startswith(f"minmax:{bits}:")
    assert qt.shape == (64, 256) and qt.tensor_name == "model.proj.weight"
    expected = reference(*raw)
    assert np.array_equal(qt.dequantize().numpy(), expected)
    assert np.array_equal(dequantize_layer(layout, tensors).numpy(), expected)
    # the formats compute in f16: ours, rounded to f16, is the same bits
    half = qt.with_inner(lambda t: t, dtype=torch.float16).dequantize().numpy()
    assert np.array_equal(half.view(np.uint16), reference(*raw, dtype=np.float16).view(np.uint16))


def test_activation_order_is_requantized_with_its_error_reported() -> None:
    layout, tensors, raw = layer("gptq", 4, 64, act_order=True)
    qt, record = layer_qtensor(layout, tensors, "p", dtype=torch.float32)
    assert not record.exact and "activation reordering" in record.reason
    assert record.codec == "minmax:4:g64" and 10 < record.added_sqnr_db < 40
    expected = reference(*raw)
    assert np.array_equal(dequantize_layer(layout, tensors).numpy(), expected)
    err = qt.dequantize().numpy() - expected
    assert 10 * np.log10((expected**2).sum() / (err**2).sum()) == pytest.approx(
        record.added_sqnr_db, abs=1e-3
    )


def test_bad_layouts_are_named() -> None:
    layout, tensors, _ = layer("gptq", 4, 128)
    tensors["scales"] = tensors["scales"][:, :32]
    with pytest.raises(GPTQFormatError, match=r"q\.proj: qweight .* do not describe"):
        layer_qtensor(layout, tensors, "q.proj")
    with pytest.raises(GPTQFormatError, match="AWQ: 4"):
        PackedLayout("awq", 8, 128, 0)
    with pytest.raises(GPTQFormatError, match="lacks qzeros"):
        layer_qtensor(layout, {"qweight": tensors["qweight"]}, "x")


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(256, 128), nn.Linear(128, 256, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_checkpoint_imported_loaded_and_run_in_tract(method: str, tmp_path: Path) -> None:
    state, expected = {}, {}
    for i, (name, n_in, out) in enumerate([("up", 256, 128), ("down", 128, 256)]):
        _, tensors, raw = layer(method, 4, 64, n_in=n_in, out=out, seed=i, v1=True)
        if method == "awq":
            del tensors["g_idx"]
        state.update({f"{name}.{k}": v for k, v in tensors.items()})
        expected[name] = torch.from_numpy(reference(*raw))
    state["up.bias"] = torch.randn(128)
    save_file(state, tmp_path / "model.safetensors")
    config = {"quant_method": method, "bits": 4, "group_size": 64}
    if method == "gptq":
        config["checkpoint_format"] = "gptq"
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config}))
    result = import_gptq_checkpoint(
        tmp_path / "model.safetensors", tmp_path / "t2n.safetensors", dtype=torch.float32,
        progress=False,
    )  # fmt: skip
    assert [x.exact for x in result.layers] == [True, True] and result.copied == ["up.bias"]
    model = TwoLayer().eval()
    load_quantized(tmp_path / "t2n.safetensors", model)
    assert isinstance(model.up.weight, QTensor) and torch.equal(model.up.bias, state["up.bias"])
    for name in ("up", "down"):
        assert torch.equal(getattr(model, name).weight.dequantize(), expected[name])
    export_and_check(model, (torch.randn(3, 256),), tmp_path, name="m.nnef")


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from t2n_core.cli import main as t2n_main

    _, tensors, _ = layer("gptq", 4, 64, n_in=128, out=64, act_order=True)
    save_file({f"proj.{k}": v for k, v in tensors.items()}, tmp_path / "model.safetensors")
    config = {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": config}))
    dst = tmp_path / "t2n.safetensors"
    assert t2n_main(["import-gptq", str(tmp_path), "-o", str(dst), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "1 gptq layer(s) imported, 0 exactly" in out and "activation reordering" in out
    model = nn.Sequential()
    model.proj = nn.Linear(128, 64, bias=False)
    load_quantized(dst, model)
    assert model.proj.weight.codec.spec == "minmax:4:g64"

"""Row slices of quantized weights (e.g. MHA cross-attention's split in-projection) are stored
as row-range variables, so a tract-native weight stays compressed."""

import pytest
import torch
from torch import nn

from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
from t2n_quant import quantize_model, quantize_tensor
from tests.helpers import export_and_check

E = 64  # Q4_0 needs rows of whole 32-value blocks


class CrossAttention(nn.Module):
    """``mha(q, kv, kv)``: torch splits in_proj_weight [3E, E] into rows [0, E) and [E, 3E)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(E, 4, batch_first=batch_first)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return self.mha(q, kv, kv, need_weights=False)[0]


def _seq(t: int, batch_first: bool) -> torch.Tensor:
    return torch.randn(2, t, E) if batch_first else torch.randn(t, 2, E)


def _quantized(model: nn.Module, spec: str) -> nn.Module:
    quantize_model(model.eval(), spec, progress=False)
    return model


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
def test_mha_cross_attention_q4_0(batch_first, tmp_path):
    torch.manual_seed(0)
    model = _quantized(CrossAttention(batch_first), "q4_0")
    a = 1 if batch_first else 0
    result = export_and_check(
        model, (_seq(5, batch_first), _seq(7, batch_first)), tmp_path,
        dynamic_axes={"kv": {a: "S"}}, input_names=["q", "kv"],
        check_inputs=[(_seq(5, batch_first), _seq(3, batch_first))],
    )  # fmt: skip
    assert result.tensor_bytes["q4_0"] == (3 * E * E + E * E) // 32 * 18
    in_proj = sorted(f for f in result.files if f.startswith("mha.in_proj_weight"))
    assert in_proj == ["mha.in_proj_weight.rows_0_64.dat", "mha.in_proj_weight.rows_64_192.dat"]
    assert result.tensor_bytes["f32"] == (3 * E + E) * 4  # the biases only


def test_mha_cross_attention_q4_0_both_lengths_dynamic(tmp_path):
    torch.manual_seed(0)
    model = _quantized(CrossAttention(batch_first=True), "q4_0")
    export_and_check(
        model, (_seq(4, True), _seq(9, True)), tmp_path,
        dynamic_axes={"q": {1: "T"}, "kv": {1: "S"}}, input_names=["q", "kv"],
        check_inputs=[(_seq(6, True), _seq(2, True))],
    )  # fmt: skip


def test_mha_cross_attention_fragment_codec(tmp_path):
    torch.manual_seed(0)
    model = _quantized(CrossAttention(batch_first=True), "minmax:4:g32")
    result = export_and_check(model, (_seq(5, True), _seq(7, True)), tmp_path)
    assert "mha.in_proj_weight.rows_0_64_codes.dat" in result.files
    assert not any(f.startswith("mha.in_proj_weight_") for f in result.files)


class SliceThenLinear(nn.Module):
    """Rows ``rows`` of one weight feed one matmul; the whole weight feeds another."""

    def __init__(self, rows: slice, also_whole: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(E, 96)
        self.rows = rows
        self.also_whole = also_whole

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = nn.functional.linear(x, self.fc.weight[self.rows])
        return part.sum(-1, keepdim=True) + (self.fc(x) if self.also_whole else 0)


@pytest.mark.parametrize(
    "rows, also_whole, files",
    [
        (slice(32, 80), False, ["fc.weight.rows_32_80.dat"]),
        (slice(-16, None), False, ["fc.weight.rows_80_96.dat"]),
        (slice(16, 48), True, ["fc.weight.dat", "fc.weight.rows_16_48.dat"]),
    ],
    ids=["middle", "negative-start", "also-whole"],
)
def test_row_slice_of_a_q4_0_weight(rows, also_whole, files, tmp_path):
    torch.manual_seed(0)
    model = _quantized(SliceThenLinear(rows, also_whole), "q4_0")
    result = export_and_check(model, (torch.randn(3, E),), tmp_path)
    assert sorted(f for f in result.files if f.startswith("fc.weight")) == files


class ChainedSliceAndGather(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(E, 96)
        self.emb = nn.Embedding(100, E)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self.emb.weight[10:50]).sum(1)
        return nn.functional.linear(x, self.fc.weight[:80][16:]) + rows


def test_chained_slice_and_gather_on_q4_0_rows(tmp_path):
    torch.manual_seed(0)
    model = _quantized(ChainedSliceAndGather(), "q4_0")
    args = (torch.randn(3, E), torch.randint(0, 40, (3, 4)))
    result = export_and_check(model, args, tmp_path)
    stored = sorted(f for f in result.files if f.endswith(".dat"))
    assert stored == ["emb.weight.rows_10_50.dat", "fc.weight.rows_16_80.dat"]


def test_a_whole_and_sliced_fragment_weight_is_stored_once(tmp_path):
    torch.manual_seed(0)
    model = _quantized(SliceThenLinear(slice(16, 48), also_whole=True), "minmax:4:g32")
    result = export_and_check(model, (torch.randn(3, E),), tmp_path)
    assert not any(".rows_" in f for f in result.files)


class OtherSlice(nn.Module):
    def __init__(self, index) -> None:
        super().__init__()
        self.fc = nn.Linear(E, 64)
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :32] @ self.fc.weight[self.index].T


@pytest.mark.parametrize(
    ("index", "stored"),
    [((slice(None), slice(0, 32)), "fc.weight.cols_0_32.dat"),
     ((slice(None, None, 2), slice(0, 32)), "fc.weight.view_codes.dat")],
    ids=["dim-1", "stride-2"],
)  # fmt: skip
def test_a_slice_not_of_whole_rows_is_cut_or_viewed(index, stored, tmp_path):
    """Whole blocks of dim 1 become a column range; a strided slice reads a fragment view."""
    model = _quantized(OtherSlice(index), "q4_0")
    result = export_and_check(model, (torch.randn(3, E),), tmp_path)
    assert stored in result.files, result.files


@pytest.mark.parametrize("spec", ["q4_0", "minmax:4:g32", "symmetric:8"])
def test_nnef_slice_rows_matches_the_sliced_values(spec):
    q = quantize_tensor(torch.randn(10, 2, 32), spec)
    part = q.nnef_slice_rows(3, 7)
    assert part.shape == (4, 2, 32)
    assert torch.equal(part.dequantize(), q.dequantize()[3:7])
    enc, whole = part.nnef_encoding("w"), q.nnef_encoding("w")
    for ev_part, ev_whole in zip(enc.variables, whole.variables, strict=True):
        data = ev_whole.data()
        per_row = len(data) // 10
        assert ev_part.data() == data[3 * per_row : 7 * per_row]
    with pytest.raises(ValueError, match="out of range"):
        q.nnef_slice_rows(5, 11)


class FlatGather(nn.Module):
    """Rows of a 3-D weight seen as ``[experts * rows, cols]`` (the gather form of MoE)."""

    def __init__(self) -> None:
        super().__init__()
        weight = quantize_tensor(torch.randn(4, 8, E), "q4_0")
        self.w = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.w.reshape(32, E))


def test_reshaped_q4_0_weight_is_stored_with_its_new_shape(tmp_path):
    """A reshape that is the only use of a q4_0 tensor is folded into the stored shape, so the
    gather reads the compressed rows (tract gathers rows of 2-D q4_0 data only)."""
    torch.manual_seed(0)
    result = export_and_check(FlatGather(), (torch.randint(0, 32, (3, 5)),), tmp_path)
    header = DatHeader.unpack(read_archive_files(result.path, dat_headers_only=True)["w.dat"])
    assert header.type_name() == "q4_0" and header.shape == (32, E)

"""A tied embedding / LM head, used as ``h @ embed.weight.T``, stays tied and compressed."""

import pytest
import torch
from torch import nn

from t2n_core.nnef.archive import read_archive_files
from t2n_quant import quantize_model
from tests.helpers import export_and_check


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 96, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(tokens)))
        return h @ self.embed.weight.T


class TiedHead(TiedLM):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 96, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


@pytest.mark.parametrize("spec", ["f32", "q4_0", "minmax:4:g32"])
@pytest.mark.parametrize("model_cls", [TiedLM, TiedHead], ids=["matmul-transpose", "tied-linear"])
def test_tied_embedding_is_stored_once(model_cls, spec, tmp_path):
    torch.manual_seed(0)
    model = model_cls().eval()
    if spec != "f32":
        summary = quantize_model(model, spec, progress=False)
        assert "embed.weight" in {q.name for q in summary.quantized}
    if isinstance(model, TiedHead):
        assert model.head.weight is model.embed.weight
    result = export_and_check(
        model, (torch.randint(0, 96, (2, 5)),), tmp_path, name="m",
        dynamic_axes={"tokens": {1: "T"}}, check_inputs=[(torch.randint(0, 96, (2, 9)),)],
    )  # fmt: skip
    files = read_archive_files(result.path)
    # one copy of the shared table, under whichever name torch.export gave it
    embed_files = [f for f in files if f.startswith(("embed.weight", "head.weight"))]
    assert len(embed_files) == (1 if spec in ("f32", "q4_0") else 3), embed_files
    if spec == "q4_0":
        assert result.tensor_bytes["q4_0"] == 96 * 64 // 32 * 18 + 64 * 64 // 32 * 18

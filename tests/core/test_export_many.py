"""export_many: several graphs in one archive, each shared tensor stored once, each graph run
in tract and compared with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import t2n_core
from t2n_core.errors import ExportInputError, T2NError
from t2n_core.inspect import inspect_archive
from t2n_core.nnef.archive import list_archive


class Encoder(nn.Module):
    def __init__(self, embedding: nn.Embedding, dim: int = 16):
        super().__init__()
        self.emb = embedding
        self.lin = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(self.emb(ids)))


class Decoder(nn.Module):
    def __init__(self, embedding: nn.Embedding, dim: int = 16):
        super().__init__()
        self.emb = embedding
        self.lin = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, embedding.num_embeddings)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(self.emb(ids)) + memory.mean(1, keepdim=True))


VOCAB, DIM = 512, 32


def _pair() -> tuple[Encoder, Decoder]:
    embedding = nn.Embedding(VOCAB, DIM)  # 64 KiB of f32: the shared tensor
    return Encoder(embedding, DIM).eval(), Decoder(embedding, DIM).eval()


def _dat_bytes(path) -> int:
    return sum(size for name, size in list_archive(path).items() if name.endswith(".dat"))


def test_encoder_decoder_share_the_embedding_stored_once(tmp_path):
    enc, dec = _pair()
    ids = torch.randint(0, VOCAB, (2, 7))
    memory = torch.randn(2, 5, DIM)
    path = tmp_path / "model.nnef.tgz"
    result = t2n_core.export_many(
        {
            "encoder": (enc, (ids,), {"dynamic_axes": {"ids": {1: "S"}}}),
            "decoder": (dec, (ids, memory), {"dynamic_axes": {"ids": {1: "T"}}}),
        },
        path, check=True, progress=False,
    )  # fmt: skip
    assert all(r.check is not None and r.check.passed for r in result.graphs.values())
    assert [s.name for s in result.graphs["decoder"].inputs] == ["decoder_ids", "decoder_memory"]

    # each graph, loaded on its own through the public loader, on other inputs (S, T free)
    ids2 = torch.randint(0, VOCAB, (2, 11))
    for name, model, args in [("encoder", enc, (ids2,)), ("decoder", dec, (ids2, memory))]:
        runnable = t2n_core.load_graph(path, name).into_runnable()
        (out,) = runnable.run([a.numpy() for a in args])
        with torch.no_grad():
            want = model(*args).numpy()
        np.testing.assert_allclose(out.to_numpy(), want, atol=1e-5, rtol=1e-5)

    # the embedding is stored once; the two Linear layers named alike are kept apart
    files = list_archive(path)
    assert "emb.weight.dat" in files
    assert not any("emb" in n for n in files if n != "emb.weight.dat")
    assert {"encoder.lin.weight.dat", "decoder.lin.weight.dat"} <= set(files)
    assert any("emb.weight" in n and "same tensor" in n for n in result.notes)
    summary = str(inspect_archive(path))
    assert "  decoder: (decoder_ids, decoder_memory) -> (decoder_output)" in summary

    # size: one archive of both stores the embedding once, two archives store it twice
    sep_enc, sep_dec = tmp_path / "enc.nnef.tgz", tmp_path / "dec.nnef.tgz"
    t2n_core.export(enc, (ids,), sep_enc, progress=False)
    t2n_core.export(dec, (ids, memory), sep_dec, progress=False)
    embedding_file = 128 + VOCAB * DIM * 4
    assert _dat_bytes(path) == _dat_bytes(sep_enc) + _dat_bytes(sep_dec) - embedding_file
    assert result.total_tensor_bytes == result.bytes_read_by_graphs - VOCAB * DIM * 4
    assert path.stat().st_size < sep_enc.stat().st_size + sep_dec.stat().st_size - embedding_file


def test_equal_contents_are_stored_once_and_differing_ones_apart(tmp_path):
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    b = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    b[0].load_state_dict(a[0].state_dict())  # other Parameter objects, equal contents
    x = torch.randn(3, 64)
    path = tmp_path / "ab"  # a folder archive
    result = t2n_core.export_many(
        {"a": (a, (x,)), "b": (b, (x,))}, path, check=True, progress=False
    )  # fmt: skip
    assert all(r.check.passed for r in result.graphs.values())
    files = sorted(n for n in list_archive(path) if n.endswith(".dat"))
    # layer 0 once (a's files), layer 2 twice (different values under the same names)
    assert files == ["a.0.bias.dat", "a.0.weight.dat", "a.2.bias.dat", "a.2.weight.dat",
                     "b.2.bias.dat", "b.2.weight.dat"]  # fmt: skip
    assert sum("equal contents" in n for n in result.notes) == 2


def test_graph_choice_errors(tmp_path):
    enc, dec = _pair()
    ids = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ExportInputError, match="graph names"):
        t2n_core.export_many({"not a name": (enc, (ids,))}, tmp_path / "x.tgz")
    with pytest.raises(ExportInputError, match=r"'decoder'.*2 tensor input"):
        t2n_core.export_many(
            {"decoder": (dec, (ids, torch.zeros(1, 2, DIM)), {"input_names": ["ids"]})},
            tmp_path / "x.tgz",
        )
    path = tmp_path / "one.nnef.tgz"
    t2n_core.export_many({"encoder": (enc, (ids,))}, path, progress=False)
    with pytest.raises(T2NError, match=r"no graph 'decoder': its graphs are \['encoder'\]"):
        t2n_core.load_graph(path, "decoder")
    assert not (tmp_path / "x.tgz").exists()

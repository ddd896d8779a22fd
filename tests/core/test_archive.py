"""Archives are reproducible, hold no host details, and round-trip through inspect."""

import getpass
import socket

import torch
from torch import nn

import t2n_core
from t2n_core.inspect import inspect_archive
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader, decode_array, encode_tensor
from tests.helpers import export_and_check


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.encoder(x)


def test_same_model_gives_same_bytes(tmp_path):
    model = Small()
    x = torch.randn(2, 8)
    t2n_core.export(model, (x,), tmp_path / "a.nnef.tgz", progress=False)
    t2n_core.export(model, (x,), tmp_path / "b.nnef.tgz", progress=False)
    assert (tmp_path / "a.nnef.tgz").read_bytes() == (tmp_path / "b.nnef.tgz").read_bytes()


def test_no_host_details_and_readable_names(tmp_path):
    result = export_and_check(Small(), torch.randn(2, 8), tmp_path, name="m")
    files = read_archive_files(result.path)
    text = files["graph.nnef"].decode()
    assert socket.gethostname() not in text
    assert str(tmp_path) not in text
    assert "/work" not in text and "/home" not in text and "/tmp" not in text
    user = getpass.getuser()
    assert f'"{user}"' not in text
    assert "encoder_0_weight = variable<scalar>(label = 'encoder.0.weight'" in text
    assert "encoder.0.weight.dat" in files
    assert '("t2n_version", "' in text and '("torch_version", "' in text


def test_dat_roundtrip_all_dtypes():
    for tensor in [
        torch.randn(3, 4),
        torch.randn(3, 4).half(),
        torch.arange(6, dtype=torch.int64).view(2, 3),
        torch.arange(6, dtype=torch.int32),
        torch.tensor([True, False, True]),
        torch.arange(5, dtype=torch.uint8),
    ]:
        raw = encode_tensor(tensor)
        assert len(raw) == 128 + DatHeader.unpack(raw).data_length
        assert (torch.from_numpy(decode_array(raw).copy()) == tensor).all()


def test_inspect_matches_export_result(tmp_path):
    result = t2n_core.export(
        Small(), (torch.randn(2, 8),), tmp_path / "m.tgz",
        dynamic_axes={"x": {0: "B"}}, progress=False,
    )  # fmt: skip
    info = inspect_archive(result.path)
    assert info.op_histogram == result.op_histogram
    assert info.tensor_bytes == result.tensor_bytes
    assert [(i.name, i.shape, i.dtype) for i in info.inputs] == [("x", ("B", 8), "f32")]
    assert [(o.name, o.shape) for o in info.outputs] == [("output", ("B", 4))]
    assert "t2n_version" in info.properties


class BF16(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([0.5, 2.0, 4.0, 1.0], dtype=torch.bfloat16))

    def forward(self, x):
        return x * self.scale.float()


def test_bf16_tensors_are_written_as_f32_with_a_warning(tmp_path, caplog):
    result = export_and_check(BF16(), torch.randn(3, 4), tmp_path)
    assert "bf16" in caplog.text
    assert result.tensor_bytes == {"f32": 16}


def test_inspect_and_check_an_archive_written_by_tract_itself(tmp_path):
    import tract

    model = Small()
    x = torch.randn(3, 8)
    t2n_core.export(model, (x,), tmp_path / "ours", dynamic_axes={"x": {0: "B"}}, progress=False)
    nnef = tract.nnef()
    nnef.write_model_to_dir(nnef.load(str(tmp_path / "ours")), str(tmp_path / "theirs"))
    text = (tmp_path / "theirs" / "graph.nnef").read_text()
    assert "t2n" in text and '"F32"' in text  # tract's own serialisation, not ours
    info = inspect_archive(tmp_path / "theirs")
    assert [(i.name, i.shape, i.dtype) for i in info.inputs] == [("x", ("B", 8), "f32")]
    assert info.op_histogram.get("matmul") == 2
    assert info.tensor_bytes["f32"] > 0
    report = t2n_core.check_archive(tmp_path / "theirs", [x.numpy()], [model(x).detach().numpy()])
    assert report.passed

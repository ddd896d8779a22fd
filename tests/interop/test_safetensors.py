"""save_quantized / load_quantized / quantize_safetensors: bit-exact, sharded, validated."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import t2n_core
from t2n_core.cli import main as t2n_main
from t2n_quant import QTensor, quantize_model
from t2n_quant.interop.safetensors import (
    QuantizedFileError,
    _meta_crc,
    apply_quantized,
    iter_quantized,
    load_quantized,
    quantize_safetensors,
    save_quantized,
)
from t2n_quant.interop.stfile import SafetensorsFileError, read_header


class Tied(nn.Module):
    """Embedding -> MLP -> LM head tied to the embedding, with a LayerNorm."""

    def __init__(self, vocab: int = 96, d: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = h + self.down(torch.nn.functional.gelu(self.up(h)))
        return self.head(self.norm(h))


def make(seed: int = 0) -> Tied:
    torch.manual_seed(seed)
    model = Tied().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    return model


def _dats(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.dat"))}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    assert list(sa) == list(sb)
    for key, x in sa.items():
        y = sb[key]
        assert type(x) is type(y), key
        if isinstance(x, QTensor):
            assert x.codec == y.codec and x.dtype == y.dtype
            for part in ("packed", "scale", "zero"):
                px, py = getattr(x, part), getattr(y, part)
                assert (px is None) == (py is None) and (px is None or torch.equal(px, py)), key
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), key


@pytest.mark.parametrize("spec", ["q4_0", "minmax:3:g64", "nf4:g32", "int8"])
def test_round_trip_bit_exact_and_byte_equal_export(spec: str, tmp_path: Path) -> None:
    model = make()
    quantize_model(model, spec, calibration="mse", progress=False)
    save_quantized(model, tmp_path / "m.safetensors", progress=False)
    fresh = make(seed=1)  # other weights: everything must come from the file
    load_quantized(tmp_path / "m.safetensors", fresh)
    _assert_same_state(model, fresh)
    assert fresh.head.weight is fresh.embed.weight  # tied stays tied
    assert fresh.t2n_properties == model.t2n_properties
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    a = t2n_core.export(model, (ids,), tmp_path / "a.nnef", check=True, progress=False)
    b = t2n_core.export(fresh, (ids,), tmp_path / "b.nnef", check=True, progress=False)
    assert a.check.passed and b.check.passed
    da, db = _dats(tmp_path / "a.nnef"), _dats(tmp_path / "b.nnef")
    assert da and da == db


def test_sharded_and_size_within_two_percent_of_packed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(512, 512, bias=False) for _ in range(4)])
    quantize_model(model, "q4_0", progress=False)
    packed = sum(m.weight.nbytes for m in model)
    (single,) = save_quantized(model, tmp_path / "one.safetensors", progress=False)
    assert single.stat().st_size <= 1.02 * packed
    files = save_quantized(
        model, tmp_path / "s.safetensors", max_shard_size=packed // 3, progress=False
    )
    assert [f.name for f in files] == [
        *(f"s-0000{i}-of-00004.safetensors" for i in range(1, 5)),
        "s.safetensors.index.json",
    ]
    assert sum(f.stat().st_size for f in files[:-1]) <= 1.02 * packed + 4 * 1024
    for source in ("s.safetensors", "s.safetensors.index.json"):
        fresh = copy.deepcopy(model)
        for m in fresh:
            m.weight = nn.Parameter(torch.zeros(512, 512), requires_grad=False)
        load_quantized(tmp_path / source, fresh)
        _assert_same_state(model, fresh)


def test_meta_device_model_is_filled(tmp_path: Path) -> None:
    model = make()
    quantize_model(model, "q4_0", progress=False)
    save_quantized(model, tmp_path / "m.safetensors", progress=False)
    with torch.device("meta"):
        empty = Tied()
    load_quantized(tmp_path / "m.safetensors", empty)
    _assert_same_state(model, empty)


def _save(tmp_path: Path) -> Path:
    model = make()
    quantize_model(model, "minmax:4:g32", progress=False)
    path = tmp_path / "m.safetensors"
    save_quantized(model, path, progress=False)
    return path


def _rewrite_metadata(path: Path, edit) -> None:
    """Edit the JSON header in place (padded back to its length)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    meta = header["__metadata__"]
    meta["t2n.meta_crc32"] = _meta_crc(meta)  # a crafted file, not a corrupted one
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n :])


def _records(header: dict) -> dict:
    return json.loads(header["__metadata__"]["t2n.tensors"])


def _set_records(header: dict, records: dict) -> None:
    header["__metadata__"]["t2n.tensors"] = json.dumps(records)


def _load(path: Path) -> None:
    load_quantized(path, make())


def test_a_file_not_ours_is_refused(tmp_path: Path) -> None:
    state = {k: v for k, v in make().state_dict().items() if k != "head.weight"}
    save_file(state, tmp_path / "plain.safetensors")
    with pytest.raises(QuantizedFileError, match=r"plain\.safetensors was not written by t2n"):
        _load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(SafetensorsFileError, match=r"junk\.safetensors.*not valid JSON"):
        _load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r["up.weight"].pop("codec"), r"'up\.weight'.*missing or unknown field"),
        (lambda r: r["up.weight"].update(codec="q9_9"), r"'up\.weight'.*codec 'q9_9'.*unknown"),
        (lambda r: r["up.weight"].update(shape=[256, 128]), r"'up\.weight'.*packed is"),
        (lambda r: r["up.weight"].update(shape=[256, 63]), r"'up\.weight'.*cannot hold"),
        (lambda r: r["up.weight"].update(codec="q4_0"), r"'up\.weight'.*stores parts"),
        (lambda r: r["down.weight"].update(dtype="complex"), r"'down\.weight'"),
    ],
    ids=["no-codec", "unknown-codec", "shape-vs-layout", "shape-vs-group", "parts", "dtype"],
)
def test_every_field_is_checked(edit, match: str, tmp_path: Path) -> None:
    path = _save(tmp_path)

    def change(header: dict) -> None:
        records = _records(header)
        edit(records)
        _set_records(header, records)

    _rewrite_metadata(path, change)
    with pytest.raises(QuantizedFileError, match=match):
        _load(path)


def test_truncated_file_names_tensor_and_file(tmp_path: Path) -> None:
    path = _save(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(SafetensorsFileError, match=r"tensor '.*' in .*m\.safetensors.*truncated"):
        _load(path)
    path.write_bytes(raw[:5])
    with pytest.raises(SafetensorsFileError, match=r"m\.safetensors.*too short"):
        _load(path)


def test_flipped_bytes_are_caught(tmp_path: Path) -> None:
    path = _save(tmp_path)
    raw = bytearray(path.read_bytes())
    header = read_header(path)
    info = header.tensors["down.weight::scale"]
    for offset in (info.begin, info.end - 1, header.tensors["norm.weight"].begin + 2):
        flipped = bytearray(raw)
        flipped[offset] ^= 0x10
        path.write_bytes(bytes(flipped))
        with pytest.raises(SafetensorsFileError, match=r"CRC-32 .* corrupted"):
            _load(path)
    at = raw.index(b"minmax", raw.index(b"calibration"))  # a text only the metadata CRC guards
    flipped = bytearray(raw)
    flipped[at] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(QuantizedFileError, match=r"m\.safetensors: the CRC-32 of its t2n metadata"):
        _load(path)
    flipped = bytearray(raw)
    flipped[20] ^= 0x01  # inside the JSON header
    path.write_bytes(bytes(flipped))
    with pytest.raises(SafetensorsFileError, match=r"m\.safetensors"):
        _load(path)


def test_wrong_model_is_refused_before_anything_changes(tmp_path: Path) -> None:
    path = _save(tmp_path)
    other = nn.Sequential(nn.Linear(64, 64))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(QuantizedFileError, match="has no place"):
        load_quantized(path, other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def _float_checkpoint(tmp_path: Path, nan: bool = False) -> tuple[Tied, Path]:
    model = make()
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "head.weight"}
    if nan:
        state["down.weight"][3, 5] = float("nan")
    save_file(state, tmp_path / "float.safetensors")
    return model, tmp_path / "float.safetensors"


def test_quantize_safetensors_equals_quantize_model(tmp_path: Path) -> None:
    model, src = _float_checkpoint(tmp_path)
    summary = quantize_safetensors(src, tmp_path / "q.safetensors", "q4_0", progress=False)
    assert sorted(q.name for q in summary.quantized) == ["down.weight", "embed.weight", "up.weight"]
    assert {s.name for s in summary.skipped} == {"up.bias", "down.bias", "norm.weight", "norm.bias"}
    expected = copy.deepcopy(model)
    quantize_model(expected, "q4_0", progress=False)
    fresh = make(seed=3)
    load_quantized(tmp_path / "q.safetensors", fresh, strict=False)
    fresh.head.weight = fresh.embed.weight
    _assert_same_state(expected, fresh)
    names = [name for name, _, _ in iter_quantized(tmp_path / "q.safetensors")]
    assert "up.weight" in names and "norm.weight" in names


@pytest.mark.parametrize("shard", [None, 8000], ids=["one-file", "sharded"])
def test_quantize_safetensors_failure_keeps_the_old_files(shard, tmp_path: Path) -> None:
    _, src = _float_checkpoint(tmp_path)
    dst = tmp_path / "q.safetensors"
    quantize_safetensors(src, dst, "q4_0", max_shard_size=shard, progress=False)
    good = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("q")}
    _, bad = _float_checkpoint(tmp_path, nan=True)
    with pytest.raises(ValueError, match=r"'down\.weight' holds 1 NaN"):
        quantize_safetensors(bad, dst, "minmax", max_shard_size=shard, progress=False)
    now = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "float.safetensors"}
    assert now == good and len(good) == (1 if shard is None else 5)
    with pytest.raises(ValueError, match="calibration 'gptq' needs calibration data"):
        quantize_safetensors(src, dst, "q4_0", calibration="gptq", progress=False)


def test_cli_quantize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, src = _float_checkpoint(tmp_path)
    dst = tmp_path / "q.safetensors"
    argv = ["quantize", str(src), "-o", str(dst), "--codec", "nf4:g32", "--exclude", "embed.*"]
    assert t2n_main([*argv, "--max-shard-size", "20KB"]) == 0
    out = capsys.readouterr().out
    assert "2 weight(s) quantized with nf4:g32" in out and "matched exclude pattern" in out
    assert (tmp_path / "q.safetensors.index.json").exists()
    codecs = {n: getattr(t, "codec", None) for n, t, _ in iter_quantized(dst)}
    assert str(codecs["up.weight"]) == "nf4:g32" and codecs["embed.weight"] is None
    assert t2n_main(["quantize", str(tmp_path / "nope.safetensors"), "-o", str(dst)]) == 2
    assert "nope.safetensors: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_llm_export_from_a_quantized_checkpoint(tmp_path: Path) -> None:
    """A sharded Hugging Face checkpoint quantized file to file, loaded into the model and
    exported with its KV cache: tract follows the quantized model."""
    from t2n_core.llm import export_causal_lm
    from tests.core.test_hf_llama import tiny_llama

    tiny_llama().save_pretrained(tmp_path / "ckpt", max_shard_size="60KB")
    assert len(list((tmp_path / "ckpt").glob("*.safetensors"))) > 1
    summary = quantize_safetensors(tmp_path / "ckpt", tmp_path / "q.safetensors", "minmax:4:g32",
                                   progress=False)  # fmt: skip
    assert len(summary.quantized) == 2 * 7 + 2
    model = tiny_llama()
    reference = copy.deepcopy(model)
    quantize_model(reference, "minmax:4:g32", progress=False)
    load_quantized(tmp_path / "q.safetensors", model)
    _assert_same_state(reference, model)
    result = export_causal_lm(model, tmp_path / "llm.nnef.tgz", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_causal_lm_from_quantized_exports(tied: bool, tmp_path: Path) -> None:
    """config.json + quantize_safetensors' file -> model (float weights never built) -> the
    LLM export with its KV cache, checked in tract."""
    from t2n_core.llm import export_causal_lm
    from t2n_quant.interop.llm import causal_lm_from_quantized
    from tests.core.test_hf_llama import tiny_llama

    float_model = tiny_llama(tied=tied)
    float_model.save_pretrained(tmp_path / "ckpt")
    quantize_safetensors(tmp_path / "ckpt", tmp_path / "q.safetensors", "q4_0", progress=False)
    model = causal_lm_from_quantized(tmp_path / "ckpt", tmp_path / "q.safetensors")
    reference = copy.deepcopy(float_model)
    quantize_model(reference, "q4_0", progress=False)
    _assert_same_state(reference, model)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    result = export_causal_lm(model, tmp_path / "llm.nnef.tgz", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)


@pytest.mark.slow
def test_export_llm_takes_the_quantized_file(tmp_path: Path, capsys) -> None:
    """`t2n quantize` of a bf16 sharded checkpoint, then `t2n export-llm --quantized`: the
    archive holds those QTensors and generates like the quantized PyTorch model."""
    from tests.llm.checkpoints import save_tiny_llama
    from tests.llm.test_export_llm import assert_same_generation

    model = save_tiny_llama(tmp_path / "ckpt", shard_size="40KB")
    q = tmp_path / "q.safetensors"
    assert t2n_main(["quantize", str(tmp_path / "ckpt"), "-o", str(q), "--codec", "q4_0"]) == 0
    argv = [
        "export-llm",
        str(tmp_path / "ckpt"),
        "-o",
        str(tmp_path / "out"),
        "--quantized",
        str(q),
    ]
    assert t2n_main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["codec"] == "q4_0" and manifest["quantized_weights"] == 2 * 7 + 2
    assert manifest["tensors"]["model.lm_head.weight"]["type"] == "q4_0"
    quantize_model(model, "q4_0", progress=False)
    assert_same_generation(tmp_path / "out", model)


def test_apply_quantized_replaces_only_weights(tmp_path: Path) -> None:
    path = _save(tmp_path)  # minmax:4:g32 of make()
    fresh = make(seed=5).half()
    norm_before = fresh.norm.weight.detach().clone()
    summary = apply_quantized(path, fresh)
    assert sorted(q.name for q in summary.quantized) == ["down.weight", "embed.weight", "up.weight"]
    assert summary.codec == "minmax:4:g32" and summary.calibration == "minmax"
    assert fresh.head.weight is fresh.embed.weight and fresh.up.weight.dtype == torch.float16
    assert torch.equal(fresh.norm.weight, norm_before)  # floats stay the model's own
    with pytest.raises(QuantizedFileError, match=r"'embed\.weight' in .*m\.safetensors: shape"):
        apply_quantized(path, Tied(d=32))

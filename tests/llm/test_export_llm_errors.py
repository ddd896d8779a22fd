"""Bad checkpoint directories and outputs: an error naming the file, nothing written, a good
existing output kept."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from t2n_core.cli import main
from t2n_core.errors import (
    ArchiveExistsError,
    ArchiveTargetError,
    CheckpointError,
    ExportInputError,
)
from t2n_core.llm import export_checkpoint, generate_text
from tests.llm.checkpoints import save_tiny_llama


@pytest.fixture
def ckpt(tmp_path):
    save_tiny_llama(tmp_path / "ckpt", shard_size="40KB")
    return tmp_path / "ckpt"


def assert_nothing_written(tmp_path) -> None:
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left


def export(ckpt, tmp_path, **kwargs):
    return export_checkpoint(ckpt, tmp_path / "out", progress=False, **kwargs)


def test_missing_config(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        export(ckpt, tmp_path)
    assert_nothing_written(tmp_path)


def test_missing_weights_names_pickled_files(tmp_path):
    (tmp_path / "ckpt").mkdir()
    save_tiny_llama(tmp_path / "src")
    shutil.copy(tmp_path / "src" / "config.json", tmp_path / "ckpt")
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"no weights in .*pytorch_model\.bin"):
        export(tmp_path / "ckpt", tmp_path)
    assert_nothing_written(tmp_path)


def test_missing_shard_is_named(ckpt, tmp_path):
    (ckpt / "model-00002-of-00006.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing: \['model-00002-of-00006"):
        export(ckpt, tmp_path)
    assert_nothing_written(tmp_path)


def test_truncated_shard_is_named(ckpt, tmp_path):
    shard = ckpt / "model-00003-of-00006.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"shard model-00003-of-00006\.safetensors is trunc"):
        export(ckpt, tmp_path)
    assert_nothing_written(tmp_path)


def test_corrupted_shard_header_is_named(ckpt, tmp_path):
    shard = ckpt / "model-00004-of-00006.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[8:20] = b"not json!!!!"
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model-00004-of-00006\.safetensors is corrupted"):
        export(ckpt, tmp_path)
    assert_nothing_written(tmp_path)


def test_renamed_weight_is_named(tmp_path):
    """Names that match no parameter: loaded whole by transformers, which reports the hole."""
    from safetensors.torch import load_file, save_file

    save_tiny_llama(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    tensors = load_file(path)
    tensors["model.final_norm.weight"] = tensors.pop("model.norm.weight")
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks weights for \['model\.norm\.weight'\]"):
        export(tmp_path / "ckpt", tmp_path)
    assert_nothing_written(tmp_path)


def test_architecture_without_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "ckpt"
    )
    save_tiny_llama(tmp_path / "src")
    shutil.copy(tmp_path / "src" / "model.safetensors", tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"(?s)no causal LM for ViT.*Known to export: Llama"):
        export(tmp_path / "ckpt", tmp_path)
    assert_nothing_written(tmp_path)


def test_output_exists_is_kept(ckpt, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ArchiveExistsError, match="overwrite"):
        export(ckpt, tmp_path)
    assert main(["export-llm", str(ckpt), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_overwrite_refuses_a_foreign_directory(ckpt, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ArchiveTargetError, match="not a directory written by export-llm"):
        export(ckpt, tmp_path, overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_interrupted_export_leaves_nothing(ckpt, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("t2n_core.llm.ship.export_causal_lm", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(ckpt, tmp_path)
    assert_nothing_written(tmp_path)


def test_bad_dtype(ckpt, tmp_path):
    with pytest.raises(ExportInputError, match="dtype must be one of"):
        export(ckpt, tmp_path, dtype=torch.bfloat16)


def test_generate_without_tokenizer_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    manifest = {"archive": "model.nnef.tgz", "dtype": "f32", "num_layers": 1, "kv_heads": 1,
                "head_dim": 4, "eos_token_id": None}  # fmt: skip
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"no tokenizer .*--prompt-ids"):
        generate_text(tmp_path / "out", "hello")
    assert main(["generate", str(tmp_path / "out"), "--prompt", "hello"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err


def test_generate_needs_an_export_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"manifest\.json is missing"):
        generate_text(tmp_path, "hello")


def test_unknown_layer_state_is_named_with_what_works(tmp_path):
    """DeepSeek-V4's cache layers keep compressor buffers the step does not know how to carry
    (neither keys/values nor transformers' conv/recurrent states): the error names the
    architecture, that state and what is known to export."""
    from t2n_core.errors import UnsupportedArchitectureError
    from t2n_core.llm import export_causal_lm
    from tests.llm.generic_config import tiny_model

    with pytest.raises(UnsupportedArchitectureError) as info:
        export_causal_lm(tiny_model("deepseek_v4"), tmp_path / "m.nnef.tgz", progress=False)
    message = str(info.value)
    assert "DeepseekV4ForCausalLM (model_type 'deepseek_v4')" in message
    assert "DeepseekV4HCACache holding buffer_gate[compressor]" in message
    assert "Known to export: Llama," in message
    assert not (tmp_path / "m.nnef.tgz").exists()


def test_hybrid_state_beside_the_cache_layers_is_refused(tmp_path):
    """MiniMax keeps its lightning-attention state in a list of the cache object itself, beside
    its key/value layers: refused before capture, naming that state, like the recurrent ones."""
    from t2n_core.errors import UnsupportedArchitectureError
    from t2n_core.llm import export_causal_lm
    from tests.llm.generic_config import tiny_model

    with pytest.raises(UnsupportedArchitectureError) as info:
        export_causal_lm(tiny_model("minimax"), tmp_path / "m.nnef.tgz", progress=False)
    message = str(info.value)
    assert "MiniMaxForCausalLM (model_type 'minimax')" in message
    assert "MiniMaxCache holds linear_cache[1] outside its key/value layers" in message
    assert not (tmp_path / "m.nnef.tgz").exists()

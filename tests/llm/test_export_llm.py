"""``t2n export-llm`` / ``export_checkpoint`` on tiny checkpoints saved with ``save_pretrained``:
bf16 and sharded, f32 / f16 / q4_0; each run in tract (the io samples replayed by ``t2n check``,
generation equal to ``model.generate``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from t2n_core.cli import main
from t2n_core.llm import export_checkpoint, generate_text
from t2n_quant import quantize_model
from t2n_quant.llm import export_checkpoint as export_quantized
from tests.llm.checkpoints import save_tiny_llama, tiny_tokenizer

PROMPT = "once upon a time there was"
NEW_TOKENS = 6


def torch_tokens(model: torch.nn.Module, prompt_ids: list[int], steps: int) -> list[int]:
    """Greedy tokens of ``model.generate`` (no EOS stop)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=steps, min_new_tokens=steps,
            do_sample=False, pad_token_id=0, eos_token_id=None,
        )  # fmt: skip
    return out[0, len(prompt_ids) :].tolist()


def assert_same_generation(directory, model: torch.nn.Module) -> None:
    gen = generate_text(directory, PROMPT, max_new_tokens=NEW_TOKENS)
    expected = torch_tokens(model, gen.prompt_tokens, NEW_TOKENS)
    assert gen.tokens == expected[: len(gen.tokens)]
    assert len(gen.tokens) == NEW_TOKENS or gen.stopped_at_eos
    assert gen.text is not None and gen.prefill_tokens_per_s > 0


@pytest.mark.slow
def test_cli_bf16_sharded_export_generate_check(tmp_path, capsys):
    """A sharded bf16 checkpoint -> f32 directory -> generate and check from the command line."""
    model = save_tiny_llama(tmp_path / "ckpt", shard_size="40KB")
    assert len(list((tmp_path / "ckpt").glob("*.safetensors"))) > 1
    out = tmp_path / "out"
    assert main(["export-llm", str(tmp_path / "ckpt"), "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (
        "check       passed on prompt, step, chunk" in printed and "last position only" in printed
    )
    names = {p.name for p in out.iterdir()}
    assert {"model.nnef.tgz", "manifest.json", "config.json", "tokenizer.json"} <= names
    assert {
        f"{s}_{io}.npz" for s in ("prompt", "step", "chunk") for io in ("inputs", "outputs")
    } <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "f32" and manifest["codec"] is None and manifest["checked"]
    assert manifest["outputs"][0] == "logits: f32[B, 1, 128]"
    assert set(manifest["versions"]) == {"t2n", "torch", "transformers", "tract"}
    assert manifest["tensors"]["model.lm_head.weight"]["bytes"] == 128 * 64 * 4
    assert str(tmp_path) not in (out / "manifest.json").read_text()  # no host paths
    for sample in ("prompt", "step", "chunk"):
        with np.load(out / f"{sample}_inputs.npz") as data:
            assert data.files[0] == "input_ids"
        args = ["check", str(out / "model.nnef.tgz"), "--inputs", str(out / f"{sample}_inputs.npz"),
                "--outputs", str(out / f"{sample}_outputs.npz")]  # fmt: skip
        assert main(args) == 0
    capsys.readouterr()
    args = ["generate", str(out), "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(PROMPT) and "tokens/s" in printed
    assert_same_generation(out, model)


@pytest.mark.slow
def test_no_check_writes_samples_only_when_asked(tmp_path, capsys, monkeypatch):
    """--no-check skips the PyTorch reference pass (no io samples) unless --samples;
    the samples written without a check replay in tract with ``t2n check``. Load and capture
    show progress bars (here at once: no delay). --overwrite replaces an export-llm folder."""
    save_tiny_llama(tmp_path / "ckpt", tokenizer=False)
    monkeypatch.setattr("t2n_core.progress.DELAY_S", 0.0)
    args = ["export-llm", str(tmp_path / "ckpt"), "--no-check", "-o"]
    assert main([*args, str(tmp_path / "bare")]) == 0
    printed = capsys.readouterr()
    assert "io samples: none" in printed.out
    for bar in ("load: ", "capture: ", "block LlamaDecoderLayer", "write: "):
        assert bar in printed.err
    args.insert(2, "--quiet")
    assert not list((tmp_path / "bare").glob("*.npz"))
    assert json.loads((tmp_path / "bare" / "manifest.json").read_text())["samples"] == []
    out = tmp_path / "bare"  # replaced
    assert main([*args, str(out), "--samples", "--codec", "q4_0", "--overwrite"]) == 0
    assert "io samples: prompt, step, chunk" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == ["prompt", "step", "chunk"] and manifest["checked"] is None
    assert manifest["codec"] == "q4_0" and manifest["dtype"] == "f32"
    for sample in manifest["samples"]:
        assert main(["check", str(out / "model.nnef.tgz"), "--inputs",
                     str(out / f"{sample}_inputs.npz"), "--outputs",
                     str(out / f"{sample}_outputs.npz")]) == 0  # fmt: skip


@pytest.mark.slow
def test_q4_0_export_generates_like_quantized_torch(tmp_path):
    model = save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    shipped = export_quantized(tmp_path / "ckpt", tmp_path / "out", codec="q4_0", progress=False)
    assert shipped.check is not None and shipped.check.passed
    manifest = shipped.manifest
    assert manifest["codec"] == "q4_0" and manifest["quantized_weights"] == 2 * 7 + 2
    assert manifest["bits_per_weight"] == pytest.approx(4.5) and not manifest["skipped"]
    assert manifest["tensors"]["model.lm_head.weight"]["type"] == "q4_0"
    quantize_model(model, "q4_0", progress=False)
    assert_same_generation(tmp_path / "out", model)


@pytest.mark.slow
def test_exclude_is_reported(tmp_path):
    """An excluded weight is in the manifest and the summary with its reason (replacing an
    export-llm folder: ``test_no_check_writes_samples_only_when_asked``)."""
    save_tiny_llama(tmp_path / "ckpt", tie_word_embeddings=True)
    shipped = export_quantized(
        tmp_path / "ckpt", tmp_path / "out", codec="minmax:4:g32", exclude="lm_head",
        check=False, progress=False,
    )  # fmt: skip
    assert shipped.check is None
    skipped = shipped.manifest["skipped"]
    assert len(skipped) == 1 and "lm_head" in skipped[0]["reason"]
    assert shipped.manifest["exclude"] == ["lm_head"]
    assert "left float  1 weight(s)" in str(shipped)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["exclude"] == ["lm_head"]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{}, {"f32_attention": True, "f32_norm": True}],
                         ids=["f16", "f16-f32-attention-norm"])  # fmt: skip
def test_f16_export_all_logits(flags, tmp_path):
    model = save_tiny_llama(tmp_path / "ckpt", tokenizer=False)
    shipped = export_checkpoint(
        tmp_path / "ckpt", tmp_path / "out", dtype="f16", all_logits=True, progress=False, **flags
    )
    assert shipped.check is not None and shipped.check.passed
    assert shipped.manifest["outputs"][0] == "logits: f16[B, T, 128]"
    assert shipped.manifest["f32_norm"] == bool(flags)
    norm = shipped.manifest["tensors"]["model.model.norm.weight"]
    assert norm["type"] == ("f32" if flags else "f16")
    if flags:
        assert shipped.export.op_histogram["tract_core_cast"] > 0
    assert not shipped.manifest["tokenizer"] and any("tokenizer" in w for w in shipped.warnings)
    gen = generate_text(tmp_path / "out", prompt_ids=[3, 4, 5], max_new_tokens=NEW_TOKENS)
    expected = torch_tokens(model.half(), [3, 4, 5], NEW_TOKENS)
    assert gen.text is None and gen.tokens == expected[: len(gen.tokens)]


def test_f32_options_need_f16(tmp_path):
    save_tiny_llama(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="only apply to an f16 export"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out", f32_norm=True, progress=False)


def test_sampling_is_seeded(tmp_path):
    """Sampling options: same seed, same tokens; tokens are in the top-k of tract's logits."""
    from t2n_core.llm.generate import sample_next

    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0, 1.0])
    picks = {sample_next(logits, rng, temperature=1.0, top_k=2) for _ in range(50)}
    assert picks == {1, 2}
    picks = {sample_next(logits, rng, temperature=1.0, top_p=0.3) for _ in range(20)}
    assert picks == {1}
    assert sample_next(logits, rng) == 1


def test_tokenizer_round_trip():
    tok = tiny_tokenizer()
    assert tok.decode(tok("once upon a time")["input_ids"]) == "once upon a time"


def test_streamed_weights_match_from_pretrained(tmp_path):
    """The meta-built, streamed model computes what from_pretrained's model computes."""
    from t2n_core.llm.checkpoint import open_checkpoint, streamed_model

    save_tiny_llama(tmp_path / "ckpt", shard_size="40KB", tie_word_embeddings=True)
    streamed = streamed_model(open_checkpoint(tmp_path / "ckpt"), torch.float32)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight  # still tied
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(streamed(ids).logits, loaded(ids).logits)


@pytest.mark.slow
def test_streamed_export_reads_each_weight_once(tmp_path):
    """Without a check, writing is the only pass over the weights (bounded memory: one at a
    time); the outputs' structure comes from a run on fake tensors."""
    from t2n_core.deferred import DeferredTensor
    from t2n_core.llm import export_causal_lm
    from t2n_core.llm.checkpoint import open_checkpoint, streamed_model

    save_tiny_llama(tmp_path / "ckpt", shard_size="40KB")
    model = streamed_model(open_checkpoint(tmp_path / "ckpt"), torch.float32)
    reads: list[str] = []
    for weight in {id(p): p for p in model.parameters()}.values():
        assert isinstance(weight, DeferredTensor)
        weight.read = lambda b, e, read=weight.read, name=weight.tensor_name: (
            reads.append(name) or read(b, e)
        )
    result = export_causal_lm(model, tmp_path / "llm.nnef.tgz", check=False, progress=False)
    assert sorted(reads) == sorted(n for n, _ in model.named_parameters())
    from t2n_core.check import run_tract

    ids = np.array([[3, 4, 5]], dtype=np.int64)
    empty = [np.zeros((1, 2, 0, 16), np.float32)] * 4
    logits = run_tract(result.path, [ids, *empty])[0]
    with torch.no_grad():
        expected = LlamaForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)(
            torch.from_numpy(ids)
        ).logits
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_cache_probe_keeps_buffers_a_forward_reassigns():
    """CTRL's forward stores ``self.pos_encoding.to(device)``: after the shape-only probe of
    the cache the buffer is still the real one (was a meta tensor: export then failed)."""
    from transformers import CTRLConfig, CTRLLMHeadModel

    from t2n_core.llm import past_shapes_of

    config = CTRLConfig(vocab_size=64, n_embd=32, dff=64, n_layer=1, n_head=2, n_positions=16)
    model = CTRLLMHeadModel(config).eval()
    before = model.transformer.pos_encoding.clone()
    assert past_shapes_of(model) == [(2, 16), (2, 16)]
    after = model.transformer.pos_encoding
    assert after.device.type == "cpu" and torch.equal(after, before)

"""Every ```python block of README.md and docs/*.md runs exactly as written.

The only thing a block may assume is what its text says the reader has: ``model`` (an
``nn.Module``) with an example input ``x``, or ``llm`` (a Hugging Face causal LM). The
preamble below builds small ones with non-degenerate random weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (doc, i, code)
    for doc in DOCS
    for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.M | re.S))
]


class AudioTagger(nn.Module):
    """What the README's ``model`` stands for: audio ``(batch, 1, time)`` -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 64, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(64, 10)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(audio).mean(-1))


def _tiny_llm() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _params(block):
    doc, i, code = block
    marks = [pytest.mark.slow] if "llm" in code or "check=True" in code else []  # ~10 s+
    return pytest.param(code, id=f"{doc.name}-{i}", marks=marks)


def test_the_docs_have_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", [_params(b) for b in BLOCKS])
def test_block_runs_as_written(code, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__snippet__"}
    if re.search(r"\bmodel\b", code):
        namespace["model"] = AudioTagger().eval()
        namespace["x"] = torch.randn(2, 1, 160)
    if re.search(r"\bllm\b", code):
        namespace["llm"] = _tiny_llm()
    exec(compile(code, "<snippet>", "exec"), namespace)

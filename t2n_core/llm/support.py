"""What is known to export: the architectures tried and checked in tract (tests/ keep them so)."""

#: Hugging Face causal LM architectures that export with their KV cache, pass the tract check
#: and generate the same greedy tokens as ``model.generate`` (f32, f16 and after q4_0):
#: ``tests/llm/test_families.py``
KNOWN_TO_WORK = (
    "Llama", "Mistral", "Qwen2", "Qwen3", "Phi3", "Gemma", "Gemma2", "Gemma3 (text)", "GPT-2",
    "GPT-NeoX", "OPT", "Falcon (new decoder layout)", "StableLM", "SmolLM3", "Granite", "OLMo2",
    "Cohere", "Starcoder2", "GPT-J", "Bloom", "Falcon (multi-query)", "Mixtral", "Qwen3-MoE",
    "Qwen2-MoE", "Phi", "GPT-OSS", "DeepSeek-V3",
    # found by benchmarks/bench_architectures.py (f32 and q4_0), tested after q4_0
    "AFMoE", "Apertus", "Arcee", "Aria (text)", "BioGPT", "BitNet", "CodeGen", "Cohere2", "GLM",
    "GPT-BigCode", "Granite-MoE", "Llama 4 (text)", "OLMo", "OLMo3", "OLMoE", "Persimmon",
    "GLM-4", "Helium", "Ministral", "EXAONE 4", "Hunyuan (dense)", "Hunyuan (MoE)",
    "Granite-MoE (shared experts)", "PhiMoE", "Seed-OSS", "CTRL", "XGLM", "Doge", "Moshi",
    # found by the sweep, f32 and q4_0 (docs/llm-architectures.md has the command), not tested
    "CWM", "DiffLlama", "Blenderbot (decoder)", "Cohere2-MoE", "ERNIE 4.5", "ERNIE 4.5 MoE",
    "EXAONE", "EXAONE-MoE", "FlexOlmo", "Flint", "Gemma 4 unified (text)", "GLM-4-MoE",
    "GPT-SW3", "GPT-NeoX-Japanese", "Granite (sliding window)", "Granite-MoE (sliding window)",
    "HY-V3", "HyperCLOVA X", "InternLM3", "IQuest-Coder", "Jais2", "Kolibri1", "Laguna",
    "Mellum", "MiMo-V2-Flash", "MiniMax-M2", "MiniMax-M3-VL (text)", "Ministral3",
    "ModernBERT decoder", "NanoChat", "Sarvam-MoE", "Solar Open", "TrOCR (decoder)",
    "VaultGemma", "Youtu", "MPT", "MiniCPM3", "GLM-4-MoE-Lite", "Sarvam-MLA",
    "Whisper (decoder)", "HRM (text)", "DeepSeek-V2", "dots1", "Nemotron", "Fuyu (text)",
    "Emu3 (text)", "Mllama (text)", "Phi-4-multimodal (text)", "Llama 4", "Gemma 4 (text)",
    "JetMoE", "GIT (text decoder)", "GPT-Neo", "DeepSeek-V3.2", "HY-V4", "AXK2",
    "GLM-MoE-DSA", "dots3-note (text)",
    # a recurrent / convolution state in the cache (one token per step), sweep f32 and q4_0
    "Mamba", "FalconMamba", "Jamba", "Nemotron-H", "Falcon-H1", "Mamba2", "Bamba",
    "Granite-MoE-hybrid", "Qwen3-Next", "Qwen3.5 (text)", "Qwen3.5-MoE (text)", "OLMo-hybrid",
    "Lara-mini", "LFM2 (with conv layers)", "LFM3", "Inkling (text)", "ZAYA", "Kimi-Linear",
    "Bailing-hybrid",
)  # fmt: skip

#: what a user of an architecture outside the list reads (see docs/llm-architectures.md)
NOT_SUPPORTED_NOTE = (
    "A state kept outside the cache's layers (MiniMax), in a cache class of the model's own "
    "(RWKV) or in fields other than those is not carried; the architectures tried and why "
    "the others fail: docs/llm-architectures.md"
)

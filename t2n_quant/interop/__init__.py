"""Quantized models and files from other tools in, and our own quantized files out.

- :mod:`.bitsandbytes`: ``Linear4bit`` (NF4 / FP4) and ``Linear8bitLt`` layers -> QTensors
  that dequantize exactly as bitsandbytes does;
- :mod:`.safetensors`: ``save_quantized`` / ``load_quantized`` and ``quantize_safetensors``;
- :mod:`.gptq`: GPTQ and AWQ checkpoint layouts -> ``minmax`` QTensors.
"""

"""Write the notebooks from their cell sources (outputs are never committed).

Run ``python notebooks/make_notebooks.py`` after editing the cells below.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

QUICKSTART = [
    new_markdown_cell(
        "# t2n quickstart\n\n"
        "Export a PyTorch model to an NNEF archive, check it in tract, inspect it, then "
        "quantize its weights and export again. Everything runs offline on a CPU."
    ),
    new_code_cell(
        "import tempfile\nfrom pathlib import Path\n\n"
        "import torch\nfrom torch import nn\n\nimport t2n_core\n"
        "from t2n_core.inspect import inspect_archive\n\n"
        "torch.manual_seed(0)\nworkdir = Path(tempfile.mkdtemp())"
    ),
    new_markdown_cell("A small model: two linear layers with a LayerNorm and GELU between them."),
    new_code_cell(
        "class MLP(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc1 = nn.Linear(64, 128)\n"
        "        self.norm = nn.LayerNorm(128)\n"
        "        self.fc2 = nn.Linear(128, 10)\n\n"
        "    def forward(self, features):\n"
        "        return self.fc2(nn.functional.gelu(self.norm(self.fc1(features))))\n\n"
        "model = MLP().eval()\nx = torch.randn(4, 64)"
    ),
    new_markdown_cell(
        "Export with a dynamic batch axis. `check=True` runs the archive in tract on `x` and "
        "compares with PyTorch; a mismatch would raise."
    ),
    new_code_cell(
        'result = t2n_core.export(model, (x,), workdir / "mlp.nnef.tgz",\n'
        '                         input_names=["features"], output_names=["logits"],\n'
        '                         dynamic_axes={"features": {0: "B"}}, check=True)\n'
        "print(result)\nassert result.check.passed"
    ),
    new_markdown_cell(
        "`inspect_archive` (or `t2n inspect` in a shell) describes any NNEF archive."
    ),
    new_code_cell('info = inspect_archive(workdir / "mlp.nnef.tgz")\nprint(info)'),
    new_markdown_cell("The archive runs in tract on other batch sizes too:"),
    new_code_cell(
        "x7 = torch.randn(7, 64)\n"
        'report = t2n_core.check_archive(workdir / "mlp.nnef.tgz", [x7.numpy()],\n'
        "                                [model(x7).detach().numpy()])\n"
        "print(report)"
    ),
    new_markdown_cell(
        "## Quantize, then export again\n\n"
        "`quantize_model` swaps Linear/Embedding/Conv weights for `QTensor`s. `q4_0` is "
        "tract-native: tract keeps those weights compressed in memory and runs matmul on "
        "them directly. The summary shows what became what, and what was skipped and why."
    ),
    new_code_cell(
        "import copy\n\nfrom t2n_quant import quantize_model\n\n"
        "qmodel = copy.deepcopy(model)\n"
        'summary = quantize_model(qmodel, "q4_0")\nsummary'
    ),
    new_markdown_cell(
        "The check now compares tract with the *quantized* PyTorch model: both compute the "
        "same dequantized weights, so they agree to float rounding. The cost of quantization "
        "is the gap between the quantized and the float model."
    ),
    new_code_cell(
        'qresult = t2n_core.export(qmodel, (x,), workdir / "mlp_q4_0.nnef.tgz",\n'
        '                          input_names=["features"], output_names=["logits"],\n'
        '                          dynamic_axes={"features": {0: "B"}}, check=True)\n'
        "print(qresult.check)\n"
        "with torch.no_grad():\n"
        "    cos = nn.functional.cosine_similarity(model(x), qmodel(x), dim=-1).mean()\n"
        'print(f"cosine(float, q4_0) = {cos:.4f}")\n'
        'print(f"archive: {result.path.stat().st_size} -> {qresult.path.stat().st_size} bytes")'
    ),
]

COMPARE = [
    new_markdown_cell(
        "# Compare codecs and calibrations\n\n"
        "Pick a codec by what it costs: quantize copies of the included example with several "
        "specs and calibrations, and measure, per layer and end to end, how far each stays "
        "from the float model. Pure PyTorch, on a CPU, in a few seconds."
    ),
    new_code_cell(
        "%matplotlib inline\nimport copy\nimport tempfile\nfrom pathlib import Path\n\n"
        "import t2n_core\nfrom t2n_core.examples import keyword_spotter\n"
        "from t2n_quant.compare import compare\n\n"
        "workdir = Path(tempfile.mkdtemp())\nmodel, audio = keyword_spotter()\n"
        "print(type(model).__name__, list(audio.shape))"
    ),
    new_markdown_cell(
        "Five specs, two calibrations each. Each layer's output is compared with the float "
        "model's while the quantized copy runs on its own activations, so errors accumulate "
        "as they will in deployment."
    ),
    new_code_cell(
        'specs = ["q4_0", "minmax:4:g32", "symmetric:4:g32", "minmax:3:g64", "minmax:8:g32"]\n'
        'comparison = compare(model, audio, specs, calibrations=["minmax", "mse"])\n'
        "comparison"
    ),
    new_markdown_cell("Per layer (output SQNR in dB; `float`: the codec left that weight alone):"),
    new_code_cell("comparison.layer_table()"),
    new_code_cell('comparison.plot("layers")'),
    new_code_cell('comparison.plot("tradeoff")'),
    new_markdown_cell(
        "The most accurate config within 5 bits per weight; quantize with it, then export "
        "and check the archive in tract."
    ),
    new_code_cell(
        "best = comparison.best(max_bits=5)\n"
        'print(f"best within 5 bits/weight: {best.label} ({best.bits_per_weight:.2f} bits, "\n'
        '      f"{best.sqnr:.1f} dB)")\n'
        "qmodel = copy.deepcopy(model)\nsummary = best.quantize(qmodel)\n"
        'result = t2n_core.export(qmodel, (audio,), workdir / "best.nnef.tgz",\n'
        '                         input_names=["audio"], output_names=["logits"],\n'
        '                         dynamic_axes={"audio": {2: "T"}}, check=True)\n'
        "print(result)\nassert result.check.passed"
    ),
]

STREAMING = [
    new_markdown_cell(
        "# Streaming audio: a keyword spotter in 10 ms chunks\n\n"
        "The included example model turns raw 16 kHz audio into per-frame keyword logits: "
        "log-mel features (`torch.stft`, a mel filterbank matmul, `log`), a causal Conv1d, a "
        "GRU and a linear classifier. We export it with its time axis marked as the "
        "streaming axis, check it in tract on the whole signal and *pulsed* (fed 160 samples "
        "at a time, as a microphone would), then quantize it to q4_0 and do the same. "
        "The notebook runs in about a minute on one CPU core."
    ),
    new_code_cell(
        "import copy\nimport tempfile\nimport time\nfrom pathlib import Path\n\n"
        "import torch\n\nimport t2n_core\n"
        "from t2n_core.examples import streaming_keyword_spotter\n"
        "from t2n_quant import quantize_model\n\n"
        "workdir = Path(tempfile.mkdtemp())\nstarted = time.perf_counter()\n"
        "model, wave = streaming_keyword_spotter(seconds=1.0)\n"
        "print(model)\nprint(tuple(wave.shape), '->', tuple(model(wave).shape))"
    ),
    new_markdown_cell(
        "`streaming_axis={\"wave\": 1}` makes the sample axis dynamic (symbol `S`) and records "
        "it in the archive. `check=True` compares tract with PyTorch on the whole second."
    ),
    new_code_cell(
        'result = t2n_core.export(model, (wave,), workdir / "kws.nnef.tgz",\n'
        '                         input_names=["wave"], output_names=["logits"],\n'
        '                         streaming_axis={"wave": 1}, check=True, atol=1e-3)\n'
        "print(result)\nassert result.check.passed"
    ),
    new_markdown_cell(
        "Now the pulsed run: tract's pulse transform turns the archive into a model that "
        "takes 160 samples per call and keeps the past it needs (STFT frames, conv taps, the "
        "GRU state). `check_pulsed` feeds the signal chunk by chunk and compares the outputs, "
        "shifted by the reported delay, with the whole-signal ones. The delay of 2 frames is "
        "the STFT's: a 25 ms frame is complete 2 chunks after the one it starts in."
    ),
    new_code_cell(
        "with torch.no_grad():\n    expected = model(wave).numpy()\n"
        'report = t2n_core.check_pulsed(workdir / "kws.nnef.tgz", [wave.numpy()], [expected],\n'
        "                               pulse=160, atol=1e-3)\n"
        "print(report)\nassert report.passed"
    ),
    new_markdown_cell(
        "The same from a shell: `t2n check kws.nnef.tgz --inputs wave.npz --pulse 160` "
        "compares with tract's own whole-signal run."
    ),
    new_code_cell(
        "import subprocess\nimport sys\n\nimport numpy as np\n\n"
        'np.savez(workdir / "wave.npz", wave=wave.numpy())\n'
        'cmd = [sys.executable, "-m", "t2n_core.cli", "check", str(workdir / "kws.nnef.tgz"),\n'
        '       "--inputs", str(workdir / "wave.npz"), "--pulse", "160", "--atol", "1e-3"]\n'
        "print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)"
    ),
    new_markdown_cell(
        "## q4_0\n\n`quantize_model` quantizes the conv filter, the GRU's input and hidden "
        "matrices and the classifier. tract keeps them compressed, also inside the GRU's loop."
    ),
    new_code_cell(
        "qmodel = copy.deepcopy(model)\n"
        'summary = quantize_model(qmodel, "q4_0")\nprint(summary)\n'
        'qresult = t2n_core.export(qmodel, (wave,), workdir / "kws_q4_0.nnef.tgz",\n'
        '                          input_names=["wave"], output_names=["logits"],\n'
        '                          streaming_axis={"wave": 1}, check=True, atol=1e-3)\n'
        "with torch.no_grad():\n    qexpected = qmodel(wave).numpy()\n"
        'qreport = t2n_core.check_pulsed(workdir / "kws_q4_0.nnef.tgz", [wave.numpy()],\n'
        "                                [qexpected], pulse=160, atol=1e-3)\n"
        "print(qreport)\nassert qresult.check.passed and qreport.passed\n"
        'print(f"archive: {result.total_tensor_bytes} bytes of tensors in f32, "\n'
        '      f"{qresult.total_tensor_bytes} in q4_0")'
    ),
    new_code_cell('print(f"notebook ran in {time.perf_counter() - started:.0f} s")'),
]

LLM = [
    new_markdown_cell(
        "# A small causal LM: accuracy, a mixed plan, export, generation in tract\n\n"
        "Train a tiny Llama for 500 steps on docstrings of the Python standard "
        "library, compare codecs and calibrations with the metrics a language-model user "
        "trusts (KL divergence of next-token distributions against the float model, top-1 "
        "agreement, perplexity), make a mixed-precision plan under a bits-per-weight budget, "
        "export it with GPTQ calibration and generate text in tract. Training, calibration "
        "and evaluation texts come from different modules. Takes under a minute on 2 idle CPU "
        "cores (the last cell prints the time)."
    ),
    new_code_cell(
        "import importlib\nimport inspect\nimport tempfile\nimport time\n"
        "from pathlib import Path\n\nimport torch\n"
        "from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n\n"
        "from t2n_quant import plan, text_batches\nfrom t2n_quant.compare import compare\n\n"
        "started = time.perf_counter()\nworkdir = Path(tempfile.mkdtemp())\n\n\n"
        "def docstrings(names):\n"
        "    docs = []\n"
        "    for name in names:\n"
        "        module = importlib.import_module(name)\n"
        "        for obj in [module, *vars(module).values()]:\n"
        "            doc = inspect.getdoc(obj) if callable(obj) or obj is module else None\n"
        "            if doc and len(doc) > 40 and doc not in docs:\n"
        "                docs.append(doc)\n"
        '    return "\\n\\n".join(docs)\n\n\n'
        'train_text = docstrings(["collections", "json", "pathlib", "argparse", "itertools",\n'
        '                         "functools", "textwrap", "string", "re", "csv", "os", "typing",\n'
        '                         "subprocess", "datetime", "threading", "socket", "email"])\n'
        'calib_text = docstrings(["shutil", "logging", "tarfile", "zipfile"])\n'
        'eval_text = docstrings(["statistics", "fractions", "decimal", "heapq", "bisect"])\n'
        "print({k: len(v) for k, v in [('train', train_text), ('calibration', calib_text),\n"
        "                              ('eval', eval_text)]})"
    ),
    new_markdown_cell(
        "A byte-level BPE tokenizer and a 2-layer Llama, trained for 500 steps (~15 s when idle)."
    ),
    new_code_cell(
        "bpe = Tokenizer(models.BPE())\n"
        "bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)\n"
        "bpe.decoder = decoders.ByteLevel()\n"
        "bpe.train_from_iterator([train_text], trainers.BpeTrainer(\n"
        '    vocab_size=512, special_tokens=["<|endoftext|>"],\n'
        "    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))\n"
        'tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")\n\n'
        "torch.manual_seed(0)\n"
        "config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192,\n"
        "                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,\n"
        "                     max_position_embeddings=256, tie_word_embeddings=False,\n"
        "                     bos_token_id=None, eos_token_id=tokenizer.eos_token_id)\n"
        "model = LlamaForCausalLM(config)\n"
        "train = torch.cat(text_batches(tokenizer, train_text, seq_len=64, n_sequences=None))\n"
        "opt = torch.optim.AdamW(model.parameters(), lr=3e-3)\n"
        "for _ in range(500):\n"
        "    batch = train[torch.randint(0, len(train), (16,))]\n"
        "    loss = model(input_ids=batch, labels=batch).loss\n"
        "    opt.zero_grad()\n    loss.backward()\n    opt.step()\n"
        'model.eval()\nprint(f"training loss {loss.item():.2f}")'
    ),
    new_markdown_cell(
        "## Codecs x calibrations, end to end\n\n"
        "`compare` quantizes a copy per (codec, calibration) and measures it on the evaluation "
        "text: KL, top-1 and perplexity come first, then SQNR and the worst layer. `gptq` "
        "(data-aware: second-order error compensation on the inputs each layer sees) runs on "
        "the calibration text. The embedding stays float here."
    ),
    new_code_cell(
        "eval_ids = torch.cat(text_batches(tokenizer, eval_text, seq_len=64, n_sequences=16))\n"
        "calib = text_batches(tokenizer, calib_text, seq_len=64, n_sequences=32)\n"
        'comparison = compare(model, eval_ids, ["q4_0", "minmax:3:g32", "minmax:2:g32"],\n'
        '                     calibrations=["minmax", "mse", "gptq"], data=calib, metric="kl",\n'
        '                     exclude="model.embed_tokens", progress=False)\n'
        "comparison"
    ),
    new_markdown_cell(
        "## A mixed plan under 4 bits per weight\n\n"
        "`plan` measures how much each layer alone hurts the output for each candidate codec "
        "and spends the budget where it buys the most. The plan is a plain mapping of module "
        "globs to codec specs: edit it, save it as JSON, give it to `quantize_model` or to "
        "`t2n export-llm --plan plan.json`."
    ),
    new_code_cell(
        'mixed = plan(model, 4.0, ["q4_0", "symmetric:4:g64", "minmax:3:g32", "minmax:3:g64"],\n'
        '             data=calib, exclude="model.embed_tokens", progress=False)\n'
        'mixed.save(workdir / "plan.json")\n'
        'print((workdir / "plan.json").read_text())\n'
        'compare(model, eval_ids, ["q4_0", mixed], calibrations=["minmax", "gptq"], data=calib,\n'
        '        metric="kl", exclude="model.embed_tokens", progress=False)'
    ),
    new_markdown_cell(
        "## Export with the plan and GPTQ, then generate in tract\n\n"
        "The checkpoint folder is what `save_pretrained` writes; `export_checkpoint` (the "
        "`t2n export-llm` command) quantizes it with the plan, calibrates with GPTQ on the "
        "calibration text, exports the KV-cache graph, checks it in tract and copies the "
        "tokenizer. The archive's properties record the codecs, the calibration and a hash "
        "of the calibration data."
    ),
    new_code_cell(
        "from t2n_core.inspect import inspect_archive\n"
        "from t2n_core.llm import generate_text\n"
        "from t2n_quant.llm import export_checkpoint\n\n"
        'model.save_pretrained(workdir / "ckpt")\ntokenizer.save_pretrained(workdir / "ckpt")\n'
        'shipped = export_checkpoint(workdir / "ckpt", workdir / "shipped", codec=mixed,\n'
        '                            calibration="gptq", calibration_text=calib_text,\n'
        '                            seq_len=64, n_sequences=32, progress=False)\n'
        "print(shipped)\n"
        'props = inspect_archive(workdir / "shipped" / "model.nnef.tgz").properties\n'
        '{k: v for k, v in props.items() if k.startswith("quantization")}'
    ),
    new_code_cell(
        'gen = generate_text(workdir / "shipped", "Return the", max_new_tokens=24)\n'
        "print(repr(gen.text))\nprint(gen.speed())"
    ),
    new_code_cell('print(f"notebook ran in {time.perf_counter() - started:.0f} s")'),
]


def write(path: Path, cells: list) -> None:
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{path.stem}-{i:02d}"  # stable ids: regenerating changes nothing
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


if __name__ == "__main__":
    here = Path(__file__).parent
    write(here / "01_quickstart.ipynb", QUICKSTART)
    write(here / "02_compare_codecs.ipynb", COMPARE)
    write(here / "03_llm.ipynb", LLM)
    write(here / "04_streaming_audio.ipynb", STREAMING)

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
    write(here / "04_streaming_audio.ipynb", STREAMING)

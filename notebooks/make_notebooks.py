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

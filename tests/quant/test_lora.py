"""LoRA adapters exported merged or apart from their (quantized) base, and swapped in tract."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import tract  # noqa: F401  a runtime dependency: missing must fail, not skip
from torch import nn

import t2n_core
from t2n_core.errors import LoraError
from t2n_core.inspect import inspect_archive
from t2n_core.lora import adapter_tensors, find_lora
from t2n_core.lora_swap import swap_adapter
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
from t2n_quant import quantize_model
from tests.helpers import export_and_check


class LoraLinear(nn.Module):
    """The plain layout: a base Linear child, lora_A / lora_B Linear children, a scaling."""

    def __init__(self, fan_in: int, fan_out: int, rank: int, scaling: float):
        super().__init__()
        self.base = nn.Linear(fan_in, fan_out)
        self.lora_A = nn.Linear(fan_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, fan_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.2)  # not zero: the adapter must matter
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


class LoraParams(nn.Linear):
    """loralib's layout: an nn.Linear holding lora_A / lora_B parameters; no scale
    attribute, so the scale (0.75) is read off its output."""

    def __init__(self, fan_in: int, fan_out: int, rank: int):
        super().__init__(fan_in, fan_out)
        self.lora_A = nn.Parameter(torch.randn(rank, fan_in) * 0.3)
        self.lora_B = nn.Parameter(torch.randn(fan_out, rank) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + (x @ self.lora_A.T @ self.lora_B.T) * 0.75


def plain_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        LoraLinear(64, 96, 4, 2.0), nn.GELU(), LoraParams(96, 64, 8), nn.Tanh(),
        nn.Linear(64, 32),
    ).eval()  # fmt: skip


def with_adapter_of(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with new random adapters (the base weights unchanged)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for name, p in other.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    return other


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs_of(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(x).numpy()]


@pytest.mark.parametrize("codec", [None, "q4_0"], ids=["f32", "q4_0"])
def test_plain_separate_then_swapped(codec: str | None, tmp_path: Path) -> None:
    first = plain_model(0)
    second = with_adapter_of(first, 1)
    if codec is not None:
        for m in (first, second):
            summary = quantize_model(m, codec, progress=False)
            assert {k.name for k in summary.skipped} == {
                "0.lora_A.weight", "0.lora_B.weight", "2.lora_A", "2.lora_B",
            }  # fmt: skip
            assert all("LoRA adapter" in k.reason for k in summary.skipped)
    x = torch.randn(3, 64)
    result = export_and_check(first, x, tmp_path, name="base.nnef.tgz")
    assert result.check is not None
    files = read_archive_files(result.path)
    for site, rank in (("0", 4), ("2", 8)):
        a = DatHeader.unpack(files[f"{site}.lora_A.dat"])
        assert a.type_name() == "f32" and a.shape[0] == rank
    assert DatHeader.unpack(files["0.lora_scale.dat"]).shape == (1,)
    if codec == "q4_0":
        assert DatHeader.unpack(files["0.base.weight.dat"]).type_name() == "q4_0"
        assert DatHeader.unpack(files["2.weight.dat"]).type_name() == "q4_0"
    assert not np.allclose(outputs_of(first, x)[0], outputs_of(second, x)[0], atol=1e-2)

    base_digest = digest(result.path)
    swapped = swap_adapter(result.path, adapter_tensors(second), tmp_path / "swapped.nnef.tgz")
    assert digest(result.path) == base_digest  # the base archive is untouched
    t2n_core.check_archive(swapped.path, [x.numpy()], outputs_of(second, x))
    new_files = read_archive_files(swapped.path)
    changed = sorted(n for n in files if files[n] != new_files[n])
    pairs = [f"{s}.{k}.dat" for s in "02" for k in ("lora_A", "lora_B")]
    assert changed == swapped.changed == pairs
    assert swapped.replaced == sorted([*changed, "0.lora_scale.dat", "2.lora_scale.dat"])
    assert swapped.bytes_changed == sum(len(new_files[n]) for n in changed)
    assert {n: len(b) for n, b in new_files.items()} == {n: len(b) for n, b in files.items()}
    # and back again: the first adapter gives the first outputs
    back = swap_adapter(swapped.path, adapter_tensors(first), tmp_path / "back")
    t2n_core.check_archive(back.path, [x.numpy()], outputs_of(first, x))


def test_plain_scale_read_off_the_output() -> None:
    scan = find_lora(plain_model(0))
    assert [(s.path, s.rank) for s in scan.sites] == [("0", 4), ("2", 8)]
    assert adapter_tensors(plain_model(0))["2.lora_scale"].item() == pytest.approx(0.75)


@pytest.mark.parametrize("codec", [None, "q4_0"], ids=["f32", "q4_0"])
def test_plain_merged(codec: str | None, tmp_path: Path) -> None:
    model = plain_model(0)
    x = torch.randn(3, 64)
    if codec is None:
        result = export_and_check(model, x, tmp_path, lora="merged")
    else:
        reference = outputs_of(model, x)[0]
        summary = quantize_model(model, codec, lora="merged", progress=False)
        assert not summary.skipped and len(summary.quantized) == 3
        assert any("merged into their base weights" in n for n in summary.notes)
        result = export_and_check(model, x, tmp_path)
        # W + s·B·A quantized as one weight: the float output is close, not equal
        assert np.abs(outputs_of(model, x)[0] - reference).max() < 0.2
    assert not any("lora" in f for f in result.files)
    assert inspect_archive(result.path).properties.get("lora.mode") == (
        "merged" if codec is None else None
    )


def test_f16_adapters_stay_f16(tmp_path: Path) -> None:
    model = plain_model(0).half()
    result = export_and_check(model, torch.randn(3, 64).half(), tmp_path, atol=2e-2, rtol=1e-2)
    files = read_archive_files(result.path)
    assert {DatHeader.unpack(files[f"0.{k}.dat"]).type_name() for k in
            ("lora_A", "lora_B", "lora_scale")} == {"f16"}  # fmt: skip


def test_swap_refuses_misfits(tmp_path: Path) -> None:
    model = plain_model(0)
    x = torch.randn(3, 64)
    base = export_and_check(model, x, tmp_path, name="base").path
    good = adapter_tensors(model)
    base_digest = {n: hashlib.sha256(b).hexdigest() for n, b in read_archive_files(base).items()}

    rank = dict(good, **{"0.lora_A": torch.randn(5, 64), "0.lora_B": torch.randn(96, 5)})
    with pytest.raises(LoraError, match=r"0: the adapter has rank 5, the archive rank 4"):
        swap_adapter(base, rank, tmp_path / "out")
    shape = dict(good, **{"0.lora_A": torch.randn(4, 32)})
    with pytest.raises(LoraError, match=r"0.lora_A: .* shape \(4, 32\), the archive's \[4, 64\]"):
        swap_adapter(base, shape, tmp_path / "out")
    missing = {k: v for k, v in good.items() if not k.startswith("2.")}
    with pytest.raises(LoraError, match=r"no tensor for 2 of the archive's: \['2.lora_A'"):
        swap_adapter(base, missing, tmp_path / "out")
    extra = dict(good, **{"decoder.0.lora_A": torch.randn(4, 64)})
    with pytest.raises(LoraError, match=r"no adapted layer for 1 adapter tensor.*decoder.0"):
        swap_adapter(base, extra, tmp_path / "out")
    with pytest.raises(LoraError, match="not a LoRA A/B/scale tensor"):
        swap_adapter(base, dict(good, **{"4.weight": torch.randn(32, 64)}), tmp_path / "out")
    with pytest.raises(LoraError, match="is the base archive itself"):
        swap_adapter(base, good, base, overwrite=True)
    merged = export_and_check(model, x, tmp_path, name="merged", lora="merged").path
    with pytest.raises(LoraError, match="were merged"):
        swap_adapter(merged, good, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    after = {n: hashlib.sha256(b).hexdigest() for n, b in read_archive_files(base).items()}
    assert after == base_digest


class NotLora(LoraLinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + torch.relu(self.lora_B(self.lora_A(x)))


def test_a_forward_that_is_not_lora_is_refused(tmp_path: Path) -> None:
    model = nn.Sequential(NotLora(64, 32, 4, 1.0))
    for mode in ("separate", "merged"):
        with pytest.raises(LoraError, match=r"'0' \(NotLora\) does not compute"):
            t2n_core.export(model, (torch.randn(2, 64),), tmp_path / mode, lora=mode)
    with pytest.raises(LoraError, match="lora='sideways'"):
        t2n_core.export(model, (torch.randn(2, 64),), tmp_path / "x", lora="sideways")
    assert not list(tmp_path.iterdir())


def test_merging_a_quantized_base_is_refused(tmp_path: Path) -> None:
    model = plain_model(0)
    quantize_model(model, "q4_0", progress=False)
    with pytest.raises(LoraError, match="merge LoRA before quantizing"):
        t2n_core.export(model, (torch.randn(2, 64),), tmp_path / "m", lora="merged")


def test_swapped_archive_is_the_export_of_the_other_adapter(tmp_path: Path) -> None:
    first = plain_model(0)
    second = with_adapter_of(first, 1)
    x = torch.randn(3, 64)
    base = t2n_core.export(first, (x,), tmp_path / "base", progress=False).path
    full = t2n_core.export(second, (x,), tmp_path / "full", progress=False).path
    swapped = swap_adapter(base, adapter_tensors(second), tmp_path / "swapped")
    assert read_archive_files(swapped.path) == read_archive_files(full)


MODEL_FILE = """
import torch
from torch import nn


class Lora(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(64, 64)
        torch.manual_seed(seed)
        self.lora_A = nn.Linear(64, 8, bias=False)
        self.lora_B = nn.Linear(8, 64, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.3)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * 0.5


def build(seed=1):
    return nn.Sequential(Lora(seed), nn.Tanh()).eval(), torch.randn(3, 64)
"""


def test_command_line_export_and_swap(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    from t2n_core.cli import main

    (tmp_path / "lora_model.py").write_text(MODEL_FILE)
    entry = f"{tmp_path / 'lora_model.py'}:build"
    merged, base = tmp_path / "merged.nnef.tgz", tmp_path / "base.nnef.tgz"
    assert main(["export", entry, str(merged), "--codec", "q4_0", "--lora", "merged"]) == 0
    assert "merged into their base weights" in capsys.readouterr().out
    assert main(["export", entry, str(base), "--codec", "q4_0"]) == 0
    text = capsys.readouterr().out
    assert "kept apart" in text and "LoRA adapter of '0'" in text
    ns: dict = {}
    exec(MODEL_FILE, ns)
    second = ns["build"](2)[0]
    save_file({k: v.contiguous() for k, v in adapter_tensors(second).items()},
              tmp_path / "adapter.safetensors")  # fmt: skip
    out = tmp_path / "swapped.nnef.tgz"
    assert main(["adapter", "swap", str(base), str(tmp_path / "adapter.safetensors"),
                 "-o", str(out)]) == 0  # fmt: skip
    assert "2 changed" in capsys.readouterr().out
    quantize_model(second, "q4_0", progress=False)
    x = torch.randn(3, 64)
    t2n_core.check_archive(out, [x.numpy()], outputs_of(second, x))
    assert (
        main(["adapter", "swap", str(base), str(tmp_path / "adapter.safetensors"), "-o", str(out)])
        == 2
    )  # exists, no --overwrite


def test_command_line_export_many_keeps_or_merges_the_adapter(tmp_path: Path, capsys) -> None:
    """``t2n export-many --lora``: separate writes one adapter for a layer both graphs use,
    merged writes none; both graphs pass their tract check either way."""
    from t2n_core.cli import main

    (tmp_path / "lora_pair.py").write_text(MODEL_FILE + """

def pair():
    model, x = build()
    return {"a": (model, x), "b": (nn.Sequential(model, nn.Linear(64, 4)).eval(), x)}
""")  # fmt: skip
    entry = f"{tmp_path / 'lora_pair.py'}:pair"
    for mode, adapter_files in (("separate", 3), ("merged", 0)):
        out = tmp_path / f"{mode}.nnef.tgz"
        assert main(["export-many", entry, str(out), "--lora", mode]) == 0
        assert capsys.readouterr().out.count("tract check passed") == 2
        files = t2n_core.nnef.archive.list_archive(out)
        assert sum(".lora_" in name for name in files) == adapter_files, files


def test_the_model_itself_as_the_lora_layer(tmp_path: Path) -> None:
    model = LoraLinear(64, 32, 4, 2.0).eval()
    x = torch.randn(3, 64)
    result = export_and_check(model, x, tmp_path, name="separate")
    assert {"lora_A.dat", "lora_B.dat", "lora_scale.dat"} <= set(result.files)
    other = with_adapter_of(model, 5)
    swapped = swap_adapter(result.path, adapter_tensors(other), tmp_path / "swapped")
    t2n_core.check_archive(swapped.path, [x.numpy()], outputs_of(other, x))
    export_and_check(model, x, tmp_path, name="merged", lora="merged")
    with pytest.raises(LoraError, match=r"wrap it \(nn.Sequential\(model\)\)"):
        quantize_model(model, "q4_0", lora="merged", progress=False)


def test_folder_swap_links_the_unchanged_files(tmp_path: Path) -> None:
    import os

    first = plain_model(0)
    second = with_adapter_of(first, 1)
    x = torch.randn(3, 64)
    base = t2n_core.export(first, (x,), tmp_path / "base", progress=False).path
    before = read_archive_files(base)
    swapped = swap_adapter(base, adapter_tensors(second), tmp_path / "swapped")
    linked = [n for n in before if os.path.samefile(base / n, swapped.path / n)]
    assert sorted(set(before) - set(linked)) == swapped.replaced
    assert swapped.bytes_linked == sum(len(before[n]) for n in linked)
    assert "hard-linked to the base archive's" in str(swapped)
    assert read_archive_files(base) == before
    t2n_core.check_archive(swapped.path, [x.numpy()], outputs_of(second, x))
    as_tar = swap_adapter(base, adapter_tensors(second), tmp_path / "swapped.nnef.tgz")
    assert as_tar.bytes_linked == 0
    assert read_archive_files(as_tar.path) == read_archive_files(swapped.path)


def test_lora_option_without_lora_layers_is_reported(tmp_path: Path, caplog) -> None:
    x = torch.randn(3, 64)
    export_and_check(nn.Linear(64, 8), x, tmp_path, lora="merged")
    assert "lora='merged' has no effect: Linear has no LoRA layer" in caplog.text
    quantize_model(nn.Sequential(nn.Linear(64, 64)), "q4_0", lora="separate", progress=False)
    assert "lora='separate' has no effect: Sequential" in caplog.text


def test_export_many_records_each_site_once_and_swaps(tmp_path: Path) -> None:
    """Two graphs share a LoRA-adapted Linear (path 0 in one, 2 in the other), the second
    has its own at path 0 too: three uses, two sites (``a.0``, ``b.0``: the same path names
    two sites), each stored once and listed in lora.sites; equal scales (2.0) stay two files.
    A swap then gives each graph, in tract, PyTorch's outputs with the new adapters."""
    from t2n_core.lora import SUFFIXES
    from t2n_core.lora_swap import archive_sites

    torch.manual_seed(3)
    shared = LoraLinear(16, 16, 4, 2.0)
    first = nn.Sequential(shared, nn.Tanh())
    second = nn.Sequential(LoraLinear(16, 16, 2, 2.0), nn.ReLU(), shared)
    pair = nn.ModuleList([first, second]).eval()
    x = torch.randn(3, 16)
    result = t2n_core.export_many(
        {"a": (pair[0], (x,)), "b": (pair[1], (x,))}, tmp_path / "m.nnef.tgz", check=True,
        progress=False,
    )  # fmt: skip
    assert all(r.check is not None and r.check.passed for r in result.graphs.values())
    assert [(s.path, s.rank) for s in archive_sites(result.path)] == [("a.0", 4), ("b.0", 2)]
    adapter_files = sorted(n for n in result.files if ".lora_" in n)
    assert adapter_files == sorted(f"{s}.{k}.dat" for s in ("a.0", "b.0") for k in SUFFIXES)

    new = copy.deepcopy(pair)  # the copy shares its one Linear between its two graphs too
    g = torch.Generator().manual_seed(5)
    for name, p in new.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.3
    adapter = {f"a.{k}": v for k, v in adapter_tensors(new[0]).items()}
    adapter |= {f"b.{k}": v for k, v in adapter_tensors(new[1]).items() if k.startswith("0.")}
    swapped = swap_adapter(result.path, adapter, tmp_path / "swapped.nnef.tgz")
    assert swapped.changed == [f"{s}.{k}.dat" for s in ("a.0", "b.0") for k in ("lora_A", "lora_B")]
    for graph, old_model, new_model in (("a", pair[0], new[0]), ("b", pair[1], new[1])):
        expected = outputs_of(new_model, x)
        assert not np.allclose(outputs_of(old_model, x)[0], expected[0], atol=1e-2)
        t2n_core.check_archive(swapped.path, [x.numpy()], expected, graph=graph)

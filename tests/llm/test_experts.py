"""Mixture-of-experts layers: the ``gather`` form (only the router's top-k experts run per
token, their weight rows gathered, q4_0 rows straight from the compressed tensor) exports,
passes the tract check and generates ``model.generate``'s greedy tokens in tract, like the
``dense`` form of the family tests; GPT-OSS's experts, stored ``[experts, in, out]``, are
quantized too. Decode speed of the two forms: ``python -m benchmarks.bench_moe_experts``."""

from __future__ import annotations

import json
import tarfile

import pytest

from t2n_core.cli import main
from t2n_core.errors import ExportInputError
from t2n_core.llm import export_causal_lm
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
from t2n_quant import quantize_model
from t2n_quant.matmul_weights import expert_weight_attrs
from tests.llm.families import tiny
from tests.llm.test_families import check_family

#: the gather form depends on the experts' layout only (the router before it is the dense
#: form's, which ``test_families.py`` runs for every MoE family in f32 and q4_0): GPT-OSS's
#: transposed ``[experts, in, out]`` weights with biases, in f32 and q4_0; the common
#: ``[experts, out, in]`` layout without biases (Mixtral, Qwen2/3-MoE, DeepSeek-V3) in q4_0 on
#: Qwen3-MoE, in f32 on DeepSeek-V3 (a dense first layer, then routed experts), and in q4_0 on
#: Mixtral from the CLI (:func:`test_cli_export_llm_experts_gather`)
GATHER_CASES = (("gpt_oss", "f32"), ("gpt_oss", "q4_0"), ("qwen3_moe", "q4_0"),
                ("deepseek_v3", "f32"))  # fmt: skip


def _graph(path) -> str:
    with tarfile.open(path) as tar:
        return tar.extractfile("graph.nnef").read().decode()


@pytest.mark.slow  # an export + tract generation each: ~15-40 s
@pytest.mark.parametrize(
    ("name", "mode"), [pytest.param(n, m, id=f"{n}-{m}") for n, m in GATHER_CASES]
)
def test_gather_experts(name: str, mode: str, tmp_path) -> None:
    result = check_family(name, mode, tmp_path, experts="gather").result
    graph = _graph(result.path)
    experts = [line for line in graph.splitlines() if "experts" in line]
    # the expert weights are read by gathers, never sliced per expert as the dense form does
    assert any("tract_core_gather(" in line for line in experts), "\n".join(experts)
    assert not any("rows_" in line for line in experts)
    if mode == "q4_0":
        # each [experts, out, in] weight is stored as one 2-D q4_0 [experts * out, in] tensor
        # that is the direct data of a gather
        n_weights = sum(len(expert_weight_attrs(m)) for m in tiny(name).modules())
        files = read_archive_files(result.path, dat_headers_only=True)
        weights = {
            name.removesuffix(".dat"): DatHeader.unpack(raw) for name, raw in files.items()
            if ".mlp.experts." in name and name.endswith("proj.dat")
        }  # fmt: skip
        assert n_weights >= 2 and len(weights) == n_weights, sorted(weights)
        for label, header in weights.items():
            assert header.type_name() == "q4_0" and len(header.shape) == 2, header
            variable = label.replace(".", "_")
            assert any(f"tract_core_gather({variable}," in line for line in experts), label


def test_gpt_oss_experts_quantized() -> None:
    """GPT-OSS's [experts, in, out] experts are transposed and quantized by q4_0; only the
    routers (and biases) stay float. In tract (greedy tokens of ``model.generate``, no float
    matrix in the archive beyond the skipped ones): ``test_families.py::test_family[gpt_oss-q4_0]``
    and :func:`test_gather_experts` ``[gpt_oss-q4_0]``."""
    model = tiny("gpt_oss")
    summary = quantize_model(model, "q4_0", progress=False)
    quantized = {q.name: q.shape for q in summary.quantized}
    assert quantized["model.layers.0.mlp.experts.gate_up_proj"] == (4, 256, 64)
    assert quantized["model.layers.1.mlp.experts.down_proj"] == (4, 64, 128)
    left = {s.name for s in summary.skipped if not s.name.endswith("_bias")}  # [experts, out]
    assert left == {f"model.layers.{i}.mlp.router.weight" for i in range(2)}


def test_unknown_experts_form_is_refused(tmp_path) -> None:
    with pytest.raises(ExportInputError, match="experts must be one of"):
        export_causal_lm(tiny("mixtral"), tmp_path / "x.nnef.tgz", experts="sparse")
    assert not (tmp_path / "x.nnef.tgz").exists()


@pytest.mark.slow
def test_cli_export_llm_experts_gather(tmp_path, capsys) -> None:
    """``t2n export-llm --experts gather --codec q4_0`` on a saved Mixtral checkpoint: checked
    in tract, recorded in the manifest and the summary."""
    tiny("mixtral").save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out"
    argv = ["export-llm", str(tmp_path / "ckpt"), "-o", str(out), "--codec", "q4_0",
            "--experts", "gather", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "experts     gather" in printed and "check       passed" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["experts"] == "gather" and manifest["checked"]
    assert "tract_core_gather(model_model_layers_0_mlp_experts" in _graph(out / "model.nnef.tgz")


def test_scatter_experts_static_form_matches_eager() -> None:
    """JetMoE's ScatterMoE-style router (``expert_size.tolist()``, then ``split``) runs in the
    static form during capture (``t2n_core/llm/scatter_experts.py``, chosen by the modules'
    shape): the same logits as its own code, and its own code back afterwards. Export, tract
    check and generation: ``test_families.py::test_family[jetmoe-q4_0]``."""
    import torch

    from t2n_core.llm.experts import experts_implementation

    model = tiny("jetmoe")
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    gating = model.model.layers[0].mlp.router
    with torch.no_grad():
        eager = model(ids).logits
        with experts_implementation(model) as switched:
            assert switched and "forward" in vars(gating)
            static = model(ids).logits
    assert "forward" not in vars(gating)
    assert eager.abs().max() > 0.1
    torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5)

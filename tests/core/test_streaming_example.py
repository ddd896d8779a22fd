"""The included streaming keyword spotter: exported f32 and q4_0, checked whole and pulsed in
tract in 10 ms chunks (the pulsed outputs equal the whole-sequence ones after the delay)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import t2n_core
from t2n_core.examples import StreamingKeywordSpotter, streaming_keyword_spotter
from t2n_quant import quantize_model

HOP = StreamingKeywordSpotter.hop


def _export_and_stream(model, wave, path):
    result = t2n_core.export(model, (wave,), path, input_names=["wave"], output_names=["logits"],
                             streaming_axis={"wave": 1}, check=True, atol=1e-3, rtol=1e-3,
                             progress=False)  # fmt: skip
    assert result.check.passed
    assert result.inputs[0].shape == (1, "S")
    longer = torch.randn(1, 12 * HOP + 77, generator=torch.Generator().manual_seed(3))
    for x in (wave, longer):
        with torch.no_grad():
            expected = model(x).numpy()
        report = t2n_core.check_pulsed(path, [x.numpy()], [expected], pulse=HOP, atol=1e-3,
                                       rtol=1e-3)  # fmt: skip
        assert report.passed, str(report)
        # a frame of 400 samples every 160 is complete 2 chunks after the one it starts in
        assert report.delay == 2
        assert report.compared_frames == [expected.shape[1]]  # causal: every frame compared
    return result


def test_streaming_keyword_spotter_f32(tmp_path):
    model, wave = streaming_keyword_spotter()
    result = _export_and_stream(model, wave, tmp_path / "kws.nnef.tgz")
    assert result.op_histogram["tract_core_stft"] == 1 and result.op_histogram["t2n_gru"] == 1


def test_streaming_keyword_spotter_q4_0(tmp_path):
    model, wave = streaming_keyword_spotter()
    summary = quantize_model(model, "q4_0", progress=False)
    quantized = {q.name for q in summary.quantized}
    assert quantized == {"conv.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"}
    result = _export_and_stream(model, wave, tmp_path / "kws_q4_0.nnef.tgz")
    assert result.tensor_bytes["q4_0"] > 0


@pytest.mark.slow  # ~20 s: export, whole check and pulsed check of the example from the CLI
def test_streaming_example_from_the_command_line(tmp_path, capsys):
    from t2n_core.cli import main

    out = tmp_path / "kws.nnef.tgz"
    rc = main(["export", "t2n_core.examples:streaming_keyword_spotter", str(out), "--codec",
               "q4_0", "--streaming", "wave:1", "--atol", "1e-3", "--rtol", "1e-3"])  # fmt: skip
    assert rc == 0 and "tract check passed" in capsys.readouterr().out
    _, wave = streaming_keyword_spotter()
    np.savez(tmp_path / "wave.npz", wave=wave.numpy())
    rc = main(["check", str(out), "--inputs", str(tmp_path / "wave.npz"), "--pulse", str(HOP)])
    text = capsys.readouterr().out
    assert rc == 0 and f"pulsed on S in chunks of {HOP}" in text and "passed" in text

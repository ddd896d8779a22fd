"""``t2n demo``: the main job of the README on the included example."""

from t2n_core.cli import main


def test_demo_exports_quantizes_and_checks(tmp_path, capsys):
    assert main(["demo", str(tmp_path), "--codecs", "q4_0", "minmax:3:g64"]) == 0
    out = capsys.readouterr().out
    assert "| f32 | 32.00 |" in out
    assert "| q4_0 | 4.50 |" in out and "| minmax:3:g64 | 3.50 |" in out
    assert "checked in tract" in out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["f32.nnef.tgz", "minmax_3_g64.nnef.tgz", "q4_0.nnef.tgz"]


def test_demo_with_a_bad_codec_spec_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", str(tmp_path), "--codecs", "q5_k"]) == 2
    assert "unknown codec 'q5_k'" in capsys.readouterr().err

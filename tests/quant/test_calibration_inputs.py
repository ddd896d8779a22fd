"""Calibration data in the forms users pass it, and what happens when it is wrong: every
accepted form gives the same batches (and hash), bad data and bad options fail clearly,
and a failed calibration leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from t2n_quant.calibration_data import batches, fingerprint, text_batches
from t2n_quant.errors import CalibrationDataError


def _chars(s: str) -> list[int]:
    return [ord(c) % 97 for c in s]


def test_a_batch_encoding_is_a_batch_of_keyword_arguments():
    from transformers import BatchEncoding

    ids = torch.randint(0, 50, (2, 8))
    enc = BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    for data in (enc, [enc, enc]):
        found = batches(data)
        assert found[0][0] == () and torch.equal(found[0][1]["input_ids"], ids)
    assert fingerprint(batches(enc)) == fingerprint(batches(dict(enc)))


def test_calibration_text_from_a_file_named_by_a_string_or_path(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("hello world " * 40, encoding="utf-8")
    by_str = text_batches(_chars, str(f), seq_len=16)
    by_path = text_batches(_chars, f, seq_len=16)
    by_text = text_batches(_chars, "hello world " * 40, seq_len=16)
    assert all(torch.equal(a, b) for a, b in zip(by_str, by_text))
    assert all(torch.equal(a, b) for a, b in zip(by_path, by_text))


def test_unreadable_calibration_text_is_our_error(tmp_path):
    with pytest.raises(CalibrationDataError, match=r"missing\.txt"):
        text_batches(_chars, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(CalibrationDataError, match="empty"):
        text_batches(_chars, tmp_path / "empty.txt")
    with pytest.raises(CalibrationDataError, match="list of strings"):
        text_batches(_chars, [torch.zeros(3)])  # type: ignore[list-item]

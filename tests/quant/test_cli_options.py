"""The parsing of options shared by several ``t2n`` sub-commands."""

import pytest

from t2n_quant.cli_options import calibration_options
from t2n_quant.errors import ConfigSpecError


def test_calibration_options_read_booleans_numbers_and_words():
    got = calibration_options(["act_order=True", "sequential=false", "block=64", "damp=1e-2",
                               "inner=mse"])  # fmt: skip
    assert got == {"act_order": True, "sequential": False, "block": 64, "damp": 0.01,
                   "inner": "mse"}  # fmt: skip
    assert isinstance(got["block"], int)


@pytest.mark.parametrize("pair", ["act_order", "=true", "damp=", " = "])
def test_a_malformed_calibration_option_names_itself(pair):
    with pytest.raises(ConfigSpecError, match="KEY=VALUE"):
        calibration_options([pair])

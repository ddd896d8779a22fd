"""t2n_quant: quantized weights (QTensor), codecs, calibrations and model swapping.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(64, 32))
>>> summary = quantize_model(model, "q4_0", progress=False)
>>> type(model[0].weight).__name__
'QTensor'
"""

from t2n_quant import qtensor_ops as _qtensor_ops  # noqa: F401  (registers QTensor ops)
from t2n_quant.calibration import calibrate
from t2n_quant.calibration_data import text_batches
from t2n_quant.codecs import Codec, MinMaxCodec, Q4_0Codec, QParams, SymmetricCodec
from t2n_quant.config import MinMaxConfig, Q4_0Config, QuantConfig, SymmetricConfig, parse_spec
from t2n_quant.plan import Plan, plan
from t2n_quant.qtensor import QTensor
from t2n_quant.quantize import quantize_tensor
from t2n_quant.summary import QuantizationSummary
from t2n_quant.swap import quantize_model

__all__ = [
    "Codec",
    "MinMaxCodec",
    "MinMaxConfig",
    "Plan",
    "Q4_0Codec",
    "Q4_0Config",
    "QParams",
    "QTensor",
    "QuantConfig",
    "QuantizationSummary",
    "SymmetricCodec",
    "SymmetricConfig",
    "calibrate",
    "parse_spec",
    "plan",
    "quantize_model",
    "quantize_tensor",
    "text_batches",
]

"""Exception classes of t2n_quant, rooted in :class:`t2n_core.errors.T2NError`.

Each also subclasses the matching builtin, so ``except ValueError`` catches
:class:`UnsupportedCodecOptionError` as well as ``except T2NError`` does.
"""

from __future__ import annotations

from t2n_core.errors import T2NError


class UnknownCodecError(T2NError, ValueError):
    """No codec, calibration or encoder is registered under that name."""


class UnsupportedCodecOptionError(T2NError, ValueError):
    """A codec was asked for a bit width or group size it does not offer."""


class ConfigSpecError(T2NError, ValueError):
    """A quantization spec string (``"minmax:4:g32"``) could not be parsed."""


class CalibrationOptionError(ConfigSpecError, TypeError):
    """``calibration_options`` the calibration method does not take."""


class FixedCodecOptionError(UnsupportedCodecOptionError, ConfigSpecError):
    """A codec was given another value for an option it fixes (q4_0's ``bits=4``)."""


class IncompatibleShapeError(T2NError, ValueError):
    """A codec cannot take a tensor of that shape (e.g. ``k`` not a multiple of 32 for q4_0)."""


class NonFiniteWeightError(T2NError, ValueError):
    """A weight holds NaN or Inf values; no codec can represent them."""


class WeightRangeError(T2NError, OverflowError):
    """A weight's values are too large for the codec's f16 scales."""


class AlreadyQuantizedError(T2NError, TypeError):
    """Quantizing a tensor that is already a :class:`~t2n_quant.qtensor.QTensor`."""


class ImmutableTensorError(T2NError, RuntimeError):
    """An in-place op, ``.data =`` or ``requires_grad_(True)`` on a QTensor."""


class EncodingError(T2NError, NotImplementedError):
    """A QTensor's codec has no NNEF encoder, or its tensor cannot be encoded."""


class MissingDependencyError(T2NError, ImportError):
    """An optional extra is needed (matplotlib for plots: ``pip install 't2n[plots]'``)."""


class CalibrationDataError(T2NError, ValueError):
    """Calibration data is empty, malformed, or rejected by the model."""


class ComparedInputError(T2NError, ValueError):
    """The inputs given to ``compare`` are rejected by the float model."""


class PlanError(T2NError, ValueError):
    """A quantization plan names modules that do not exist or codecs that do not fit."""

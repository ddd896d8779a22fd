"""Figures of a :class:`~t2n_quant.compare.Comparison` (matplotlib, the ``t2n[plots]`` extra).

matplotlib is imported only when a figure is asked for. The figures are plain
``matplotlib.figure.Figure`` objects, not registered with pyplot: no global state, no
backend needed; ``fig.savefig(path)`` writes them, Jupyter shows them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from t2n_quant.errors import MissingDependencyError

if TYPE_CHECKING:
    from t2n_quant.compare import Comparison


def _figure(**kwargs: Any) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("plotting needs matplotlib: pip install 't2n[plots]'") from exc
    return Figure(**kwargs)


def _finite(v: float | None) -> float:
    return math.nan if v is None or math.isinf(v) else v


def plot_layers(comparison: Comparison) -> Any:
    """Per-layer output SQNR (dB), one line per config, layers in model order."""
    layers = comparison.results[0].layers if comparison.results else []
    fig = _figure(figsize=(max(7.0, 0.5 * len(layers) + 4), 5.0), layout="constrained")
    ax = fig.subplots()
    x = list(range(len(layers)))
    for r in comparison.results:
        ax.plot(x, [_finite(layer.output_sqnr) for layer in r.layers], marker="o", label=r.label)
    ax.set_xticks(x, [layer.name.removesuffix(".weight") for layer in layers],
                  rotation=60, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylabel("output SQNR vs float (dB)")
    ax.set_title(f"{comparison.model}: per-layer output SQNR (errors accumulate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_tradeoff(comparison: Comparison) -> Any:
    """Bits per weight against end-to-end SQNR, one marker style per calibration."""
    fig = _figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    markers = "osD^vP*X"
    cals = list(dict.fromkeys(r.calibration for r in comparison.results))
    for i, cal in enumerate(cals):
        rs = [r for r in comparison.results if r.calibration == cal]
        ax.scatter([r.bits_per_weight for r in rs], [_finite(r.sqnr) for r in rs],
                   marker=markers[i % len(markers)], label=cal)  # fmt: skip
        for r in rs:
            ax.annotate(r.spec, (r.bits_per_weight, _finite(r.sqnr)), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("bits per weight (stored)")
    ax.set_ylabel("end-to-end output SQNR vs float (dB)")
    ax.set_title(f"{comparison.model}: size / accuracy trade-off")
    ax.grid(alpha=0.3)
    ax.legend(title="calibration", fontsize=8)
    return fig

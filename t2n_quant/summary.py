"""``QuantizationSummary``: what ``quantize_model`` did, as text and as an HTML table."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from t2n_core.summary import human_bytes


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight that became a QTensor (``modules``: every module sharing it)."""

    name: str
    modules: tuple[str, ...]
    module_type: str
    shape: tuple[int, ...]
    codec: str
    bits_per_weight: float
    bytes_before: int
    bytes_after: int


@dataclass(frozen=True)
class SkippedWeight:
    """One weight left as it was, and why."""

    name: str
    module_type: str
    shape: tuple[int, ...]
    reason: str
    nbytes: int = 0  # as stored (float bytes for a weight left in float)


@dataclass
class QuantizationSummary:
    """The result of :func:`t2n_quant.quantize_model`; ``print()`` it, or show it in Jupyter.

    >>> s = QuantizationSummary("q4_0", "minmax")
    >>> s.bytes_before, s.bytes_after
    (0, 0)
    """

    codec: str
    calibration: str
    quantized: list[QuantizedWeight] = field(default_factory=list)
    skipped: list[SkippedWeight] = field(default_factory=list)
    fallback: str | None = None  # the codec for weights the main codec cannot take
    calibration_options: dict[str, Any] = field(default_factory=dict)
    #: data-aware calibrations: every parameter they ran with, defaults included
    calibration_parameters: dict[str, Any] = field(default_factory=dict)
    data_hash: str | None = None  # fingerprint of the calibration data (data-aware only)
    notes: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> dict[str, str]:
        """How the weights were made, as text: codec(s), calibration and its options, the
        calibration data's hash (what export records in the archive's properties)."""
        out = {"codec": self.codec, "calibration": self.calibration}
        codecs = sorted({q.codec for q in self.quantized})
        if codecs and codecs != [self.codec]:
            out["codecs"] = ",".join(codecs)
        if self.calibration_options:
            out["calibration_options"] = ",".join(
                f"{k}={v}" for k, v in sorted(self.calibration_options.items())
            )
        if self.calibration_parameters:
            out["calibration_parameters"] = ",".join(
                f"{k}={v}" for k, v in sorted(self.calibration_parameters.items())
            )
        if self.data_hash:
            out["calibration_data_sha256"] = self.data_hash
        return out

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per value over every weight considered, skipped ones included."""
        values = sum(math.prod(q.shape) for q in self.quantized)
        values += sum(math.prod(s.shape) for s in self.skipped)
        stored = self.bytes_after + sum(s.nbytes for s in self.skipped)
        return 8 * stored / values if values else 0.0

    @property
    def quantized_fraction(self) -> float:
        """Share of the considered weights' original bytes that were quantized."""
        total = self.bytes_before + sum(s.nbytes for s in self.skipped)
        return self.bytes_before / total if total else 0.0

    @property
    def bytes_before(self) -> int:
        return sum(q.bytes_before for q in self.quantized)

    @property
    def bytes_after(self) -> int:
        return sum(q.bytes_after for q in self.quantized)

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    def calibration_label(self) -> str:
        """``gptq (damp=0.01) on data sha256:1a2b...``: the calibration and its provenance."""
        label = self.calibration
        if self.calibration_options:
            label += f" ({self.provenance['calibration_options']})"
        if self.data_hash:
            label += f" on data sha256:{self.data_hash}"
        return label

    def headline(self) -> str:
        codec = self.codec
        if self.fallback is not None:
            n_fallback = sum(q.codec == self.fallback for q in self.quantized)
            codec += f" ({n_fallback} with fallback {self.fallback})"
        return (
            f"{len(self.quantized)} weight(s) quantized with {codec} "
            f"(calibration: {self.calibration_label()}): {human_bytes(self.bytes_before)} -> "
            f"{human_bytes(self.bytes_after)} ({self.ratio:.2f}x smaller); "
            f"{len(self.skipped)} skipped; {self.bits_per_weight:.2f} bits per weight overall, "
            f"{100 * self.quantized_fraction:.1f}% of weight bytes quantized"
        )

    def rows(self) -> tuple[list[list[str]], list[list[str]]]:
        done = [
            [q.name + ("" if len(q.modules) < 2 else f" (shared by {', '.join(q.modules)})"),
             q.module_type, str(q.shape), q.codec, f"{q.bits_per_weight:.3g}",
             human_bytes(q.bytes_before), human_bytes(q.bytes_after)]
            for q in self.quantized
        ]  # fmt: skip
        skipped = [[s.name, s.module_type, str(s.shape), s.reason] for s in self.skipped]
        return done, skipped

    def __str__(self) -> str:
        done, skipped = self.rows()
        lines = [self.headline()]
        heads = ["weight", "module", "shape", "codec", "bits/w", "before", "after"]
        lines += _table(heads, done) if done else []
        if skipped:
            lines.append("skipped:")
            lines += _table(["weight", "module", "shape", "reason"], skipped)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        done, skipped = self.rows()
        parts = [f"<p>{html.escape(self.headline())}</p>"]
        if done:
            heads = ["weight", "module", "shape", "codec", "bits/w", "before", "after"]
            parts.append(_html_table(heads, done))
        if skipped:
            parts.append("<p>skipped:</p>")
            parts.append(_html_table(["weight", "module", "shape", "reason"], skipped))
        parts += [f"<p>note: {html.escape(n)}</p>" for n in self.notes]
        return "\n".join(parts)


def _table(heads: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*heads).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _html_table(heads: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

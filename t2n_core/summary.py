"""Human-readable summaries of an export or of any NNEF archive."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``.

    >>> human_bytes(3 * 1024 * 1024)
    '3.0 MiB'
    """
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_summary(result: Any) -> str:
    """Text for an :class:`ExportResult` or an :class:`ArchiveInfo` (same fields)."""
    lines = [f"archive: {result.path}"]
    lines.append("inputs:")
    lines += [f"  {io}" for io in result.inputs]
    lines.append("outputs:")
    lines += [f"  {io}" for io in result.outputs]
    total_ops = sum(result.op_histogram.values())
    lines.append(f"ops ({total_ops}):")
    width = max((len(k) for k in result.op_histogram), default=0)
    for op, count in sorted(result.op_histogram.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {op:<{width}}  {count}")
    lines.append(f"tensors ({human_bytes(sum(result.tensor_bytes.values()))}):")
    for dtype, n in result.tensor_bytes.items():
        lines.append(f"  {dtype:<8} {human_bytes(n)}")
    notes = getattr(result, "notes", None) or []
    if notes:
        lines.append("notes:")
        lines += [f"  {n}" for n in notes]
    check = getattr(result, "check", None)
    if check is not None:
        lines.append(str(check))
    return "\n".join(lines)

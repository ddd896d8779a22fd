"""Generate docs/ops.md, the op-support table, from the registry.

Run ``python -m t2n_core.ops_table > docs/ops.md``; a test checks the file is current.
"""

from __future__ import annotations

from t2n_core.ops import entries

_NO_PRIMITIVE = "no tract primitive; an exact composition is not written yet"
#: public torch calls of benchmarks/op_matrix.py that do not export, and why
UNSUPPORTED: dict[str, str] = {
    "torch.i0, special.i0e, special.i1, special.i1e (Bessel)": _NO_PRIMITIVE,
    "torch.lgamma, digamma, mvlgamma (gamma family)": _NO_PRIMITIVE,
    "torch.erfinv, special.erfcx, special.log_ndtr": _NO_PRIMITIVE,
    "torch.nextafter, torch.frexp": "bit-level float manipulation; tract has no bitcast",
    "torch.bitwise_left_shift / right_shift": "not translated yet (tract shifts are checked "
    "on u8 only)",
    "torch.angle of a real tensor": "not translated yet (complex angle is supported)",
    "torch.median() over all values, torch.mode": "not translated yet (mode needs per-value "
    "counts)",
    "F.bilinear (aten._trilinear)": "not translated yet (an einsum would do)",
    "torch.cdist, F.pdist": "not translated yet (_cdist_forward / _pdist_forward)",
    "torch.polar": "builds a complex tensor through an in-place copy torch.export cannot "
    "functionalise",
    "F.rrelu": "random in training; its eval form rrelu_with_noise_functional is not "
    "translated yet",
    "scatter_reduce(reduce='mean') / include_self=False": "tract's scatters combine with the "
    "value in place by add/mul/min/max only",
    "x[bool_mask] (read or write)": "the result's shape depends on the data; use torch.where",
}


def _schema(target: object) -> str:
    schema = getattr(target, "_schema", None)
    text = str(schema) if schema is not None else getattr(target, "__qualname__", str(target))
    return text.replace("|", "\\|")


def render_table() -> str:
    lines = [
        "# Supported ATen ops",
        "",
        "Generated from the op registry by `python -m t2n_core.ops_table`; do not edit.",
        "Ops not listed are decomposed by `torch.export` into listed ones where torch can;",
        "anything left over is reported by `export` with its module path and source line.",
        "",
        "| family | overload | ATen schema |",
        "|---|---|---|",
    ]
    for entry in entries():
        target = entry.target
        name = (
            str(target) if hasattr(target, "_schema") else f"{target.__module__}.{target.__name__}"
        )
        lines.append(f"| {entry.family} | `{name}` | `{_schema(target)}` |")
    lines += [
        "",
        "## Unsupported public calls",
        "",
        "From the op matrix (`python -m benchmarks.op_matrix`, one public torch call per case,",
        "each archive checked in tract); everything else in it exports and matches PyTorch.",
        "",
        "| call | reason |",
        "|---|---|",
        *(f"| {call} | {reason} |" for call, reason in UNSUPPORTED.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table(), end="")

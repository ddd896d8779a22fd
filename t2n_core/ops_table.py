"""Generate docs/ops.md, the op-support table, from the registry.

Run ``python -m t2n_core.ops_table > docs/ops.md``; a test checks the file is current.
"""

from __future__ import annotations

from t2n_core.ops.registry import entries


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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table(), end="")

from pathlib import Path

from t2n_core.ops_table import render_table


def test_docs_op_table_is_current():
    path = Path(__file__).parents[2] / "docs" / "ops.md"
    assert path.read_text() == render_table(), (
        "docs/ops.md is stale: run `python -m t2n_core.ops_table > docs/ops.md`"
    )

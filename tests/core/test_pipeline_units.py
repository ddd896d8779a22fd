"""Unit tests of the pipeline's small pieces: names, labels, strings, member paths, symbols."""

from __future__ import annotations

import string

import pytest
import sympy
import torch

from t2n_core.encoding import encoding_of
from t2n_core.errors import (
    ArchiveExistsError,
    ArchiveFormatError,
    ArchiveTargetError,
    TranslationError,
)
from t2n_core.file_labels import MAX_LABEL, assign_file_labels
from t2n_core.ir import Graph, Variable, is_identifier, sanitize
from t2n_core.nnef.archive import check_target, member_path
from t2n_core.nnef.text import escape_string, literal, unescape_string
from t2n_core.passes import prepare_for_archive
from t2n_core.symbolic import SymbolTable
from t2n_core.writer import archive_files
from tests.helpers import export_and_check


def test_fresh_names_never_take_reserved_user_names():
    g = Graph()
    g.reserve(["v_0_weight", "x"])
    assert g.fresh_name("0.weight") == "v_0_weight_1"
    assert g.fresh_name("x") == "x_1"
    assert g.fresh_name("graph") == "v_graph"  # an NNEF keyword


@pytest.mark.parametrize(
    ("name", "ok"),
    [("x", True), ("_a1", True), ("1x", False), ("a-b", False), ("é", False),
     ("graph", False), ("tensor", False), ("", False)],
)  # fmt: skip
def test_identifier_rule(name, ok):
    assert is_identifier(name) is ok
    assert is_identifier(sanitize(name or "v"))


def _graph_with(labels: list[str]) -> Graph:
    g = Graph()
    for label in labels:
        name = g.fresh_name(label)
        g.variables[name] = Variable(name, label, torch.zeros(2))
    return g


def test_file_labels_are_safe_and_unique_ignoring_case():
    g = _graph_with(["enc.0.weight", "/abs/head.weight", "../up", "A", "a", "x" * 300, ".hidden"])
    assign_file_labels(g)
    labels = [v.label for v in g.variables.values()]
    assert labels[0] == "enc.0.weight"  # a safe state-dict name is kept
    assert all("/" not in lb and not lb.startswith(".") and len(lb) <= MAX_LABEL for lb in labels)
    assert len({lb.lower() for lb in labels}) == len(labels)


def test_labels_kept_first_hold_when_new_variables_come():
    g = _graph_with(["w"])
    first = assign_file_labels(g)
    g.variables = {"new": Variable("new", "w", torch.zeros(1)), **g.variables}
    assign_file_labels(g, keep_first=first)
    assert g.variables["w"].label == "w" and g.variables["new"].label != "w"


def test_encoding_is_computed_once_per_label():
    var = Variable("w", "w", torch.zeros(3))
    assert encoding_of(var) is encoding_of(var)
    var.label = "w2"
    assert encoding_of(var) is not None and var.encoded[0] == "w2"


def test_strings_round_trip_every_printable_character():
    assert unescape_string(escape_string(string.printable)) == string.printable
    assert literal("Bob's") == "'Bob\\'s'"


@pytest.mark.parametrize("bad", ["../x", "/x", "a/../../x", "", "..", "C:/x"])
def test_member_paths_outside_the_archive_are_refused(bad):
    with pytest.raises(ArchiveFormatError, match="outside the archive"):
        member_path(bad)


def test_member_path_normalises():
    assert member_path("./a/b.dat") == "a/b.dat"


def test_symbol_table_prints_tdim_and_refuses_unbound_symbols():
    table = SymbolTable()
    s, t = sympy.symbols("s0 s1")
    table.bind(s, "T")
    assert table.dim(4) == 4
    assert table.text(2 * s + 1) == "((2 * T) + 1)"
    with pytest.raises(TranslationError, match="does not come from a dynamic axis"):
        table.text(t)


def test_symbol_table_orders_terms_by_the_symbols_given():
    """A shared Dim symbol is printed in the order of the name torch alone would have given it
    (see ``input_plan.shared_dim_symbols``), so archives do not change with the sharing."""
    s, t = sympy.symbols("s5 s7", positive=True, integer=True)
    plain, stood_in = SymbolTable(), SymbolTable()
    for table, sorts_as in ((plain, None), (stood_in, sympy.Symbol("s1", positive=True))):
        table.bind(s, "T")
        table.bind(t, "B", sorts_as=sorts_as)
    assert plain.text(s * t) == "(T * B)" and stood_in.text(s * t) == "(B * T)"
    assert plain.text(s + t - 1) == "(T + B - 1)" and stood_in.text(s + t - 1) == "(B + T - 1)"
    assert stood_in.text(2 * t) == "(2 * B)"


def test_list_form_dynamic_axes_declare_their_symbol(tmp_path):
    result = export_and_check(
        torch.nn.Linear(4, 3), torch.randn(5, 4), tmp_path, name="m", dynamic_axes={"input": [0]},
        check_inputs=[(torch.randn(7, 4),)],
    )  # fmt: skip
    text = (result.path / "graph.nnef").read_text()
    assert "extension tract_symbol input_0;" in text
    assert result.inputs[0].shape == ("input_0", 4)


def test_graph_passes_are_a_step_before_writing():
    g = _graph_with(["w"])
    with pytest.raises(RuntimeError, match="prepare_for_archive"):
        list(archive_files(g))
    assert prepare_for_archive(g) is g and g.prepared
    names = [name for name, _ in archive_files(prepare_for_archive(g))]  # a second call: no-op
    assert names == ["graph.nnef", "w.dat"]


def test_check_target_asks_another_writer_what_it_may_replace(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ArchiveExistsError):
        check_target(out, overwrite=False, foreign=lambda p: None)
    with pytest.raises(ArchiveTargetError, match="not ours"):
        check_target(out, overwrite=True, foreign=lambda p: f"{p.name} is not ours")
    assert check_target(out, overwrite=True, foreign=lambda p: None) == out
    with pytest.raises(ArchiveTargetError, match="not an NNEF archive"):
        check_target(out, overwrite=True)  # the default: NNEF archives only

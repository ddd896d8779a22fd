"""Print torch's symbolic sizes (sympy expressions over ``s0, s1, ...``) as tract TDim text."""

from __future__ import annotations

import logging
import re
from typing import Any

import sympy
import torch

from t2n_core.errors import TranslationError
from t2n_core.ir import Dim

logger = logging.getLogger(__name__)


class SymbolTable:
    """Maps torch's shape symbols to the user's axis names (``s77`` -> ``T``)."""

    def __init__(self) -> None:
        self.names: dict[sympy.Symbol, str] = {}
        #: torch's ShapeEnv of the capture: the ranges (and checked facts) of the symbols
        self.shape_env: Any = None
        #: facts on the axes the caller vouches for (``"P + T <= 2048"``), used only to decide
        #: a ``Max`` / ``Min`` of sizes that the ranges leave open (each use is logged)
        self.facts: tuple[str, ...] = ()
        #: symbols printed in the order another symbol's name gives them (see :meth:`bind`)
        self.sorts_as: dict[sympy.Symbol, sympy.Symbol] = {}

    def bind(
        self,
        symbol: sympy.Symbol,
        name: str,
        shape_env: Any = None,
        *,
        sorts_as: sympy.Symbol | None = None,
    ) -> None:
        """``symbol`` is axis ``name``; ``sorts_as``: the symbol whose name orders the terms
        of a sum or product where ``symbol`` occurs (torch's own naming of that axis)."""
        self.names[symbol] = name
        if sorts_as is not None and sorts_as != symbol:
            self.sorts_as[symbol] = sorts_as
            self.names[sorts_as] = name
        if shape_env is not None:
            self.shape_env = shape_env

    def dim(self, size: int | torch.SymInt) -> Dim:
        """An int, or the TDim text of a symbolic size."""
        if isinstance(size, int):
            return size
        expr = size.node.expr if isinstance(size, torch.SymInt) else size
        expr = sympy.sympify(expr)
        if expr.is_Integer:
            return int(expr)
        return self.text(expr)

    def shape(self, sizes) -> tuple[Dim, ...]:
        return tuple(self.dim(s) for s in sizes)

    def assume(self, *facts: str) -> None:
        """Add facts on the axes, written with their names (``"P + T <= 2048"``)."""
        self.facts += tuple(f for f in facts if f not in self.facts)

    def text(self, expr: sympy.Expr) -> str:
        reasoner = _Reasoner(self)
        if self.sorts_as:
            expr = expr.xreplace(self.sorts_as)
        return _print(expr, self.names, reasoner)

    def _axioms(self) -> dict[str, sympy.Basic]:
        """Each fact whose axes all have a symbol here, over torch's symbols."""
        stand_ins = set(self.sorts_as.values())
        by_name = {
            name: symbol
            for symbol, name in self.names.items()
            if name.isidentifier() and symbol not in stand_ins
        }
        axioms = {}
        for fact in self.facts:
            axes = {n: sympy.Symbol(n) for n in re.findall(r"[A-Za-z_]\w*", fact)}
            relation = sympy.sympify(fact, locals=axes)
            if {str(s) for s in relation.free_symbols} <= set(by_name):
                axioms[fact] = relation.xreplace(
                    {sympy.Symbol(n): by_name[n] for n in map(str, relation.free_symbols)}
                )
        return axioms


class _Reasoner:
    """Decides inequalities between sizes: from the symbols' ranges alone, else with the facts."""

    def __init__(self, table: SymbolTable) -> None:
        self.table = table
        #: the stand-ins of :attr:`SymbolTable.sorts_as` back to torch's symbols
        self.back = {v: k for k, v in table.sorts_as.items()}

    def always(self, relation: sympy.Basic, expr: sympy.Expr) -> bool:
        shape_env = self.table.shape_env
        if shape_env is None:
            return False
        if _evaluates_true(shape_env, relation, ()):
            return True
        axioms = self.table._axioms()  # only here: a Max / Min of sizes is rare
        if axioms and _evaluates_true(shape_env, relation, tuple(axioms.values())):
            logger.info(
                "size %s written assuming %s (the caller's facts on the axes)",
                expr, " and ".join(axioms),
            )  # fmt: skip
            return True
        gap = _slack(relation)
        for fact, axiom in axioms.items():  # a weaker bound: P + T <= 2048 from P + T <= 128
            slack = _slack(axiom)
            if gap is not None and slack is not None and _evaluates_true(
                shape_env, sympy.Ge(sympy.expand(gap - slack), 0), ()
            ):  # fmt: skip
                logger.info("size %s written assuming %s (the caller's fact on the axes, "
                            "implied)", expr, fact)  # fmt: skip
                return True
        return False


def _slack(relation: sympy.Basic) -> sympy.Expr | None:
    """``b - a`` of ``a <= b`` (or ``b >= a``): the relation holds when it is >= 0."""
    if isinstance(relation, (sympy.Le, sympy.Lt)):
        return relation.rhs - relation.lhs
    if isinstance(relation, (sympy.Ge, sympy.Gt)):
        return relation.lhs - relation.rhs
    return None


def decided_extremum(expr: sympy.Expr, reasoner: _Reasoner) -> sympy.Expr | None:
    """The argument of a ``Max`` / ``Min`` of sizes that is the answer for every size the
    capture allows (the axes' ranges and the facts checked on them), or ``None``.

    ``max(0, position_bias.size(1) - query_length)`` (MPT's ALiBi slice) is ``0`` for every
    ``T >= 1``; ``max(0, max_seq_len - key_length)`` is ``max_seq_len - key_length`` given
    the fact ``P + T <= max_seq_len``. tract needs the plain expression, having no max in
    its sizes.
    """
    pick_max = type(expr).__name__ == "Max"
    for candidate in expr.args:
        others = [a for a in expr.args if a is not candidate]
        relations = [sympy.Ge(candidate, o) if pick_max else sympy.Le(candidate, o) for o in others]
        if all(reasoner.always(r, expr) for r in relations):
            return candidate
    return None


def _evaluates_true(shape_env: Any, relation: sympy.Basic, axioms: tuple) -> bool:
    try:
        return bool(shape_env._maybe_evaluate_static(relation, axioms=axioms) == sympy.true)
    except Exception:  # a private torch API: a relation it cannot decide is not decided
        return False


def _print(expr, names: dict[sympy.Symbol, str], reasoner: _Reasoner | None = None) -> str:
    if isinstance(expr, sympy.Symbol):
        if expr not in names:
            raise TranslationError(
                f"size symbol {expr} does not come from a dynamic axis of an input; "
                "an output size that depends on data values cannot be exported"
            )
        return names[expr]
    if isinstance(expr, (sympy.Integer, int)):
        return str(int(expr))
    if isinstance(expr, sympy.Add):
        terms = sorted(expr.args, key=lambda a: (a.is_number, str(a)))
        out = _print(terms[0], names, reasoner)
        for term in terms[1:]:
            if term.is_number and term < 0:
                out += f" - {-int(term)}"
            else:
                out += f" + {_print(term, names, reasoner)}"
        return f"({out})"
    if isinstance(expr, sympy.Mul):
        return "(" + " * ".join(_print(a, names, reasoner) for a in expr.args) + ")"
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
        return "(" + " * ".join([_print(expr.base, names, reasoner)] * int(expr.exp)) + ")"
    fname = type(expr).__name__
    if fname in ("FloorDiv", "CleanDiv"):
        a, b = expr.args
        return f"({_print(a, names, reasoner)} / {_print(b, names, reasoner)})"
    if fname == "CeilDiv":
        a, b = expr.args
        num, den = _print(a, names, reasoner), _print(b, names, reasoner)
        return f"(({num} + {den} - 1) / {den})"
    if fname in ("Mod", "PythonMod"):
        a, b = expr.args
        return f"({_print(a, names, reasoner)} % {_print(b, names, reasoner)})"
    if fname in ("Max", "Min"):
        decided = None
        if reasoner is not None:
            decided = decided_extremum(expr.xreplace(reasoner.back), reasoner)
        if decided is not None:
            return _print(decided.xreplace(reasoner.table.sorts_as), names, reasoner)
        raise TranslationError(
            f"size expression {expr} needs {fname.lower()}, which tract shapes cannot express"
        )
    raise TranslationError(f"size expression {expr} ({fname}) cannot be written as a tract TDim")

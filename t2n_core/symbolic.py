"""Print torch's symbolic sizes (sympy expressions over ``s0, s1, ...``) as tract TDim text."""

from __future__ import annotations

import sympy
import torch

from t2n_core.errors import TranslationError
from t2n_core.ir import Dim


class SymbolTable:
    """Maps torch's shape symbols to the user's axis names (``s77`` -> ``T``)."""

    def __init__(self) -> None:
        self.names: dict[sympy.Symbol, str] = {}

    def bind(self, symbol: sympy.Symbol, name: str) -> None:
        self.names[symbol] = name

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

    def text(self, expr: sympy.Expr) -> str:
        return _print(expr, self.names)


def _print(expr, names: dict[sympy.Symbol, str]) -> str:
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
        out = _print(terms[0], names)
        for term in terms[1:]:
            if term.is_number and term < 0:
                out += f" - {-int(term)}"
            else:
                out += f" + {_print(term, names)}"
        return f"({out})"
    if isinstance(expr, sympy.Mul):
        return "(" + " * ".join(_print(a, names) for a in expr.args) + ")"
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
        return "(" + " * ".join([_print(expr.base, names)] * int(expr.exp)) + ")"
    fname = type(expr).__name__
    if fname in ("FloorDiv", "CleanDiv"):
        a, b = expr.args
        return f"({_print(a, names)} / {_print(b, names)})"
    if fname == "CeilDiv":
        a, b = expr.args
        return f"(({_print(a, names)} + {_print(b, names)} - 1) / {_print(b, names)})"
    if fname in ("Mod", "PythonMod"):
        a, b = expr.args
        return f"({_print(a, names)} % {_print(b, names)})"
    if fname in ("Max", "Min"):
        raise TranslationError(
            f"size expression {expr} needs {fname.lower()}, which tract shapes cannot express"
        )
    raise TranslationError(f"size expression {expr} ({fname}) cannot be written as a tract TDim")

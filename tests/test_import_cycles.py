"""No import cycles between the library's modules, and every module imports on its own.

The import graph is read from the source with ``ast``: every ``import`` / ``from ... import``
statement anywhere in a module (inside functions too: a local import that only hides a cycle
is still one), except under ``if TYPE_CHECKING:``. A package ``__init__`` that imports its
modules by name through ``importlib.import_module`` (op and codec registries) imports each
of them. ``from package import name`` depends on ``package.name`` when that is a module, else
on the package itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("t2n_core", "t2n_quant")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = file
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    is_package = file.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        elif (
            is_package
            and isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")
        ):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            else:  # a computed name: any module of the package
                found.update(m for m in modules if m.startswith(f"{name}."))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, file, modules) for name, file in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 100 and "t2n_core.ops.linear" in graph["t2n_core.ops"]
    found = cycles(graph)
    detail = [
        f"{c}: " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found
    ]
    assert not found, "import cycles (move the shared piece down):\n" + "\n".join(detail)


def _imported_names() -> list[str]:
    """``module:name`` for every ``from <our module> import name`` (local imports too)."""
    modules = _modules()
    out = set()
    for file in modules.values():
        for node in _runtime_nodes(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in modules:
                out.update(f"{node.module}:{a.name}" for a in node.names if a.name != "*")
    return sorted(out)


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imports, and each name imported from one of ours exists there (a local
    import runs late: a name moved elsewhere would fail only when that code runs)."""
    code = (
        "import importlib, sys\n"
        "missing = []\n"
        "for n in sys.argv[1:]:\n"
        "    if ':' not in n:\n"
        "        importlib.import_module(n)\n"
        "        continue\n"
        "    mod, name = n.split(':')\n"
        "    if not hasattr(importlib.import_module(mod), name):\n"
        "        try:\n"
        "            importlib.import_module(f'{mod}.{name}')\n"
        "        except ImportError:\n"
        "            missing.append(n)\n"
        "sys.exit('missing: ' + ', '.join(missing) if missing else 0)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, *sorted(_modules()), *_imported_names()], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

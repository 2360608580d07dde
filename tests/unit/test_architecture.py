"""The package's shape, checked from its source: modules stay small, files never import each
other in a circle (function-level imports count), and raypipe imports its own modules at the
top of a file except where a dependency is optional or heavy."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "raypipe"
MAX_LINES = 600
MAX_LOCAL_IMPORTS = 20


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ``raypipe`` that ``name`` (a module or a name in one) is, if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool, int]]:
    """(imported raypipe module, inside a function, line) for every import of ``module`` that
runs (``if TYPE_CHECKING:`` blocks are for type checkers and never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, local: bool) -> Iterator[tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # imports for type checkers only: never run
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name)
                    if target:
                        yield target, local, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                    if target:
                        yield target, local, child.lineno
            else:
                yield from visit(child, inner)

    yield from visit(tree, False)


GRAPH = {m: [(t, local, line) for t, local, line in _imports(m, p) if t != m] for m, p in MODULES.items()}


def _file_edges() -> dict[str, list[str]]:
    """Import edges between files; an import of a module's own parent package (its
    ``__init__``, which only re-exports) is not counted."""
    return {m: sorted({t for t, _, _ in deps if not m.startswith(t + ".")}) for m, deps in GRAPH.items()}


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_no_module_is_over_600_lines() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_no_files_import_each_other_in_a_circle() -> None:
    assert _cycles(_file_edges()) == []


def test_few_function_level_imports_of_raypipe_modules() -> None:
    local = sorted({f"{m}:{line}" for m, deps in GRAPH.items() for _, is_local, line in deps if is_local})
    assert len(local) <= MAX_LOCAL_IMPORTS, "\n".join(local)


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    mod = tmp_path / "m.py"
    mod.write_text("import os\n\ndef f():\n    from raypipe.loop import core\n", encoding="utf-8")
    assert list(_imports("raypipe.x", mod)) == [("raypipe.loop.core", True, 4)]

"""Arrows point down: no import circle among the kit's modules, and common/ never imports a competition.

Every import counts, inside functions too (a lazy import still ties the two modules together), read with `ast`
from the source, so nothing is executed."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("common", "competitions", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kit_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The kit modules a file imports. `from common import api` is common.api; `from common.x import y` is
    common.x (or common.x.y when that is a module)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .y import z
                base = ".".join([package.rsplit(".", node.level - 1)[0], base]).strip(".")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # a.b.c where only a.b is a module of ours
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = kit_modules()
    return {name: imported_modules(path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, stack)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_common_imports_no_competition():
    wrong = {m: sorted(i for i in imports if i.split(".")[0] == "competitions")
             for m, imports in import_graph().items() if m.split(".")[0] == "common"}
    wrong = {m: i for m, i in wrong.items() if i}
    assert not wrong, f"common/ imports a competition: {wrong}"


def test_the_walk_sees_lazy_and_package_imports(tmp_path):
    """What the two tests above rely on: an import inside a function and `from package import module` count."""
    graph = import_graph()
    assert "common.api" in graph["common.cli"]          # from common import api
    assert "common.task" in graph["competitions.__main__"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

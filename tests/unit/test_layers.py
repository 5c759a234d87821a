"""The import graph of ``src/trackegress``: no cycles, no imports inside functions, layers that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "trackegress"
# A module may import modules of its own rank or lower ones. The longest matching prefix names the rank.
RANKS = {
    "trackegress.errors": 0, "trackegress.info": 0, "trackegress.logs": 0, "trackegress.redact": 0,
    "trackegress.configfile": 0, "trackegress.backoff": 0, "trackegress.cpuload": 0,
    "trackegress.media": 1,
    "trackegress.sinks": 2, "trackegress.storage": 2, "trackegress.room": 2, "trackegress.cluster.psrpc": 2,
    "trackegress.cluster.bus": 2,
    "trackegress.config": 3, "trackegress.request": 3, "trackegress.roomservice": 3, "trackegress.dispatcher": 3,
    "trackegress.reporting": 4, "trackegress.egress": 4, "trackegress.cluster.settings": 4,
    "trackegress.manager": 5,
    "trackegress.ops": 6, "trackegress.api": 6, "trackegress.cluster": 6,
    "trackegress.cli": 7, "trackegress.supervisor": 7, "trackegress.children": 6, "trackegress.native": 1,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in (SRC / PACKAGE).rglob("*.py")}


def _imports(tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``tree`` imports (``from a import b`` counts ``a.b`` if that is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found.update(submodules if len(submodules) == len(node.names) else {node.module, *submodules})
    return {name for name in found if name.startswith(PACKAGE + ".")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(ast.parse(path.read_text()), modules) for name, path in modules.items()}


def _rank(module: str) -> int:
    prefixes = [p for p in RANKS if module == p or module.startswith(p + ".")]
    if not prefixes:
        pytest.fail(f"{module} has no rank in RANKS: give it one")
    return RANKS[max(prefixes, key=len)]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert len(graph) > 40
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_inside_a_function_or_class() -> None:
    local = []
    for name, path in _modules().items():
        for scope in ast.walk(ast.parse(path.read_text())):
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                local += [f"{name}:{node.lineno}" for node in ast.walk(scope)
                          if isinstance(node, ast.Import | ast.ImportFrom)]
    assert local == []


def test_imports_point_down_the_layers() -> None:
    upward = [f"{source} → {target}" for source, targets in _graph().items() for target in sorted(targets)
              if _rank(target) > _rank(source)]
    assert upward == []

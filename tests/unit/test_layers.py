"""The import graph of ``src/trackegress``: no cycles, no imports inside functions, layers that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trackegress.errors import HTTP_STATUS

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "trackegress"
# A module may import modules of its own rank or lower ones. The longest matching prefix names the rank and the unit
# (a package or a top-level module): no two units may import each other, even at one rank.
RANKS = {
    "trackegress.errors": 0, "trackegress.info": 0, "trackegress.logs": 0, "trackegress.redact": 0,
    "trackegress.configfile": 0, "trackegress.backoff": 0, "trackegress.cpuload": 0,
    "trackegress.media": 1, "trackegress.psrpc": 1,
    "trackegress.sinks": 2, "trackegress.storage": 2, "trackegress.room": 2,
    "trackegress.config": 3, "trackegress.request": 3, "trackegress.roomservice": 3, "trackegress.dispatcher": 3,
    "trackegress.mux": 3,
    "trackegress.reporting": 4, "trackegress.outputs": 4,
    "trackegress.egress": 5, "trackegress.avegress": 5,
    "trackegress.manager": 6,
    "trackegress.ops": 7, "trackegress.api": 7, "trackegress.cluster": 7, "trackegress.children": 7,
    "trackegress.cli": 8, "trackegress.supervisor": 8,
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


def _unit(module: str) -> str:
    """The RANKS entry (package or top-level module) that ``module`` belongs to."""
    prefixes = [p for p in RANKS if module == p or module.startswith(p + ".")]
    if not prefixes:
        pytest.fail(f"{module} has no rank in RANKS: give it one")
    return max(prefixes, key=len)


def _rank(module: str) -> int:
    return RANKS[_unit(module)]


def _unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` between units: who imports whom, imports inside a unit left out."""
    units: dict[str, set[str]] = {}
    for source, targets in graph.items():
        if source == PACKAGE:  # trackegress/__init__.py: the docstring only
            continue
        units.setdefault(_unit(source), set()).update(_unit(t) for t in targets)
    return {unit: targets - {unit} for unit, targets in units.items()}


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


def test_no_two_units_import_each_other() -> None:
    units = _unit_graph(_graph())
    assert set(RANKS) <= units.keys(), f"RANKS names no module: {sorted(set(RANKS) - units.keys())}"
    assert _cycle(units) is None, " → ".join(_cycle(units) or [])


def test_two_packages_importing_each_other_are_a_cycle() -> None:
    graph = {"trackegress.sinks.file": {"trackegress.storage.base"}, "trackegress.storage.base": set(),
             "trackegress.storage.claims": {"trackegress.sinks.naming"}, "trackegress.sinks.naming": set()}
    assert _cycle(_unit_graph(graph)) == ["trackegress.sinks", "trackegress.storage", "trackegress.sinks"]


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


def _literal_codes(tree: ast.Module) -> list[int]:
    """Lines where a Twirp code is spelled out as a string in an ``*Error(...)`` / ``*Failure(...)`` call or in
    a comparison (``errors.py`` names them)."""
    codes = set(HTTP_STATUS) | {"malformed_request"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            values = node.args if name.endswith(("Error", "Failure", "error", "__init__")) else []
        elif isinstance(node, ast.Compare | ast.Tuple):
            values = [node.left, *node.comparators] if isinstance(node, ast.Compare) else node.elts
        else:
            continue
        lines += [v.lineno for v in values if isinstance(v, ast.Constant) and v.value in codes]
    return lines


def test_error_codes_are_named_in_the_errors_module() -> None:
    spelled = [f"{name}:{line}" for name, path in _modules().items() if name != "trackegress.errors"
               for line in _literal_codes(ast.parse(path.read_text()))]
    assert spelled == []


def test_a_spelled_out_error_code_is_found() -> None:
    tree = ast.parse('raise RequestError("not_found", "x")\nif exc.code == "unauthenticated": pass\nR = (A, "aborted")')
    assert _literal_codes(tree) == [1, 2, 3]

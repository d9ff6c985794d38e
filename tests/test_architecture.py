"""The shape of the package: no import cycle, no module reaching into another module's private names, no module
over 500 lines. The layering itself (a stage imports only the stages below it) is import-linter's contracts in
pyproject.toml, which `make lint` checks in CI."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

from conftest import ROOT

PACKAGE = ROOT / "edgeeval"
MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the groups of modules that import each other, directly or around a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    groups.append(sorted(group))
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(g for g in strongly_connected(graph) if len(g) > 1) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package() -> None:
    """Every import counts, at module level, inside functions and under TYPE_CHECKING alike."""
    graph = grimp.build_graph("edgeeval")
    imports = {module: {m for m in graph.find_modules_directly_imported_by(module) if m.startswith("edgeeval")}
               for module in graph.modules if module.startswith("edgeeval")}
    cycles = [group for group in strongly_connected(imports) if len(group) > 1]
    assert not cycles, f"modules that import each other: {cycles}"


def private_reach_ins(path: Path) -> list[str]:
    """`from edgeeval.x import _y`, and `x._y` where x is an edgeeval module this file imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, module_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeeval"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
                elif f"{node.module}.{alias.name}" in modules():
                    module_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            module_names.update(a.asname for a in node.names if a.name.startswith("edgeeval") and a.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_names
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    reach_ins = [hit for path in modules().values() for hit in private_reach_ins(path)]
    assert not reach_ins, reach_ins


def test_the_private_name_check_sees_a_reach_in(tmp_path) -> None:
    code = "from edgeeval.run import runner\nfrom edgeeval.run.runner import _work\nrunner._chunks([], 1)\n"
    (tmp_path / "bad.py").write_text(code)
    assert private_reach_ins(tmp_path / "bad.py") == ["bad.py:2: from edgeeval.run.runner import _work",
                                                      "bad.py:3: runner._chunks"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it by what its parts do"

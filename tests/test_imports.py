"""The package's modules import each other without a cycle: every import counts, at the
top, under TYPE_CHECKING or inside a function."""

from __future__ import annotations

import ast

from tests.servers import PROJECT

PACKAGES = ("mailgate", "ticketing")


def _sources() -> dict[str, str]:
    """Module name -> its source, for every module of the package."""
    found = {}
    for package in PACKAGES:
        for path in (PROJECT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue  # Alembic loads them by path, not by import
            name = ".".join(path.relative_to(PROJECT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path.read_text(encoding="utf-8")
    return found


def imports_between(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (an imported name that is a module counts
    as that module; anything else as the module it comes from)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, source in modules.items():
        for node in ast.walk(ast.parse(source)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for target in targets:
                module = known(target)
                if module is not None and module != name:
                    edges[name].add(module)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(edges[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    edges = imports_between(_sources())
    assert len(edges) > 50 and sum(map(len, edges.values())) > 200  # it read the package
    assert cycles(edges) == []


def test_a_cycle_under_type_checking_is_found() -> None:
    edges = imports_between({
        "p.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import B\n",
        "p.b": "def f():\n    from p.c import C\n",
        "p.c": "import p.a.sub\n",
        "p.d": "from p import a\n",
    })
    assert edges["p.c"] == {"p.a"}
    assert cycles(edges) == [["p.a", "p.b", "p.c"]]

"""The layers hold and no two modules need each other (docs/architecture.md).

Reads every import of the package's source — at the top, under ``TYPE_CHECKING`` and inside
functions alike, since a circle hidden in a function is still a circle — and fails on a
circle between modules or on an import that crosses a layer the wrong way.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (importer, imported): a module under the first may import nothing under the second.
FORBIDDEN = [
    ("l2_session.domain", "l2_session.infrastructure"),
    ("l2_session.domain", "l2_session.transports"),
    ("l2_session.domain", "l2_session.projections"),
    ("l2_session.domain", "l2_session.tools"),
    ("l2_session.infrastructure", "l2_session.transports"),
    ("l2_session.infrastructure", "l2_session.tools"),
    ("l2_session.domain.session", "l2_session.domain.handshake"),
    ("l2_session.domain.session", "l2_session.domain.manager"),
    ("l2_session.domain.handshake", "l2_session.domain.manager"),
    # The front door (l2_session/node.py) sits on the layers; no layer leans on it.
    *(
        (layer, "l2_session.node")
        for layer in (
            "l2_session.domain",
            "l2_session.infrastructure",
            "l2_session.projections",
            "l2_session.transports",
        )
    ),
]


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from pyproject's package-dir."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    modules: dict[str, Path] = {}
    for package, folder in config["tool"]["setuptools"]["package-dir"].items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imported_by(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, wherever in the file the import is."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved, though ruff (TID252) bans them
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from pkg import mod`` imports the module; ``from mod import name`` the module.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` names a.b.c's module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_by(name, path, modules) for name, path in modules.items()}


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_imports_of_every_kind():
    """Top-level, TYPE_CHECKING-only and function-local imports all count."""
    graph = import_graph()
    assert "l2_session.domain.session.states" in graph["l2_session.domain.manager.manager"]
    assert len(graph) > 80


def test_no_module_imports_another_that_imports_it_back():
    found = circles(import_graph())
    assert not found, "import circles (cut each by moving the shared piece down):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_layers_hold(importer, imported):
    crossing = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if under(name, importer)
        for target in targets
        if under(target, imported)
    )
    assert not crossing, "\n".join(crossing)


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []

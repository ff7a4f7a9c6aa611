"""The house rules of docs/architecture.md, checked on the source: rooms, arrows, sizes.

An import graph is walked over every module of the package (top-level and lazy imports
alike): no cycles between modules, no arrow from a lower room to a higher one, and the product
reaches mock/ only through run.py's one lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "burstcli"

# Which rooms each room may import (besides itself). models/errors/config are the floor.
FLOOR = {"models", "errors", "config", "redact"}
ALLOWED: dict[str, set[str]] = {
    "cli": {"run", "files", "live", "batch", "money", "observe", "mock"} | FLOOR,
    "run": {"files", "live", "batch", "money", "observe", "mock"} | FLOOR,
    "live": {"files", "money"} | FLOOR,
    "batch": {"files", "money"} | FLOOR,
    "observe": {"files", "live", "money"} | FLOOR,
    "money": {"files"} | FLOOR,
    "files": FLOOR,
    "mock": set(),
    "config": {"errors", "models", "redact"},
    "models": {"errors", "redact"},
    "errors": set(),
    "redact": set(),
    "__main__": {"cli"},
    "__init__": set(),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["burstcli", *parts])


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("burstcli"):
                found.append((target, node.lineno))
                for alias in node.names:  # `from . import run` names a module too
                    sub = f"{target}.{alias.name}"
                    if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists():
                        found.append((sub, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("burstcli")]
    return found


def _graph() -> dict[str, list[tuple[str, int]]]:
    return {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _ in edges if t in _graph_keys()} for m, edges in _graph().items()}
    # A package's __init__ re-exporting its own modules is not an arrow back up.
    for m in graph:
        graph[m] = {t for t in graph[m] if t != m and not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _graph_keys() -> set[str]:
    return {_module_name(p) for p in PKG.rglob("*.py")}


def test_arrows_point_one_way() -> None:
    wrong = []
    for mod, edges in _graph().items():
        src = _room(mod)
        for target, line in edges:
            dst = _room(target)
            if dst == src or dst == "__init__":
                continue
            if dst not in ALLOWED[src]:
                wrong.append(f"{mod}:{line} imports {target} ({src} may not import {dst})")
    assert not wrong, "\n".join(wrong)


def test_the_product_imports_mock_only_for_simulate() -> None:
    users = [
        f"{mod}:{line}"
        for mod, edges in _graph().items()
        if _room(mod) not in ("mock", "cli")
        for target, line in edges
        if _room(target) == "mock"
    ]
    assert len(users) == 1 and users[0].startswith("burstcli.run:"), users


def test_every_room_says_what_it_is_for() -> None:
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"{init} needs a docstring naming what it may import"


def test_no_module_is_too_big_to_read_in_a_sitting() -> None:
    big = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 650
    }
    assert not big, big

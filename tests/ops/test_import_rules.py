"""The operator tooling's imports (tongban/ops/): at module level, except a heavy optional
dependency marked ``# lazy: <why>`` (an import hidden in a function used to dodge a cycle); no
private name borrowed from another module; no import cycle between its modules."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "tongban" / "ops"
PROJECT = ("tongban", "gateway", "connectors", "ledger")
BORROWED = {("tongban/ops/natsconfig/credentials.py", "certs._issue")}
"""TEMPORARY (issue 13): until tongban/runtime/certs.py offers a public way to issue a leafnode's
client certificate."""


def modules() -> dict[str, Path]:
    """Module name → file, for every module of tongban/ops."""
    out = {}
    for path in sorted(OPS.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def imported(tree: ast.Module, module: str, is_package: bool) -> list[tuple[ast.stmt, str, str, str]]:
    """(statement, module imported or imported from, name imported from it or "", local name) of
    every import in the tree."""
    out: list[tuple[ast.stmt, str, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, a.name, "", a.asname or a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out += [(node, base, a.name, a.asname or a.name) for a in node.names]
    return out


def top_level(tree: ast.Module) -> set[int]:
    """Ids of the statements at module level, or in a module-level ``if``/``try`` (TYPE_CHECKING)."""
    ids = set()
    for stmt in tree.body:
        ids.add(id(stmt))
        if isinstance(stmt, ast.If | ast.Try):
            for child in ast.walk(stmt):
                if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    ids.add(id(child))
    return ids


def test_imports_are_at_module_level() -> None:
    hidden = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        allowed = top_level(tree)
        lines = text.splitlines()
        for node, _, _, _ in imported(tree, name, path.name == "__init__.py"):
            if id(node) not in allowed and "# lazy: " not in lines[node.lineno - 1]:
                hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hidden == []


def test_no_private_name_is_borrowed_from_another_module() -> None:
    borrowed = set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound: dict[str, str] = {}  # local name → project module it names
        for _, source, what, local in imported(tree, name, path.name == "__init__.py"):
            if source.split(".")[0] not in PROJECT:
                continue
            if what.startswith("_") and not what.startswith("__"):
                borrowed.add((str(path.relative_to(ROOT)), f"{source}.{what}"))
            if not what:
                bound[local] = source
            elif is_module(f"{source}.{what}"):
                bound[local] = f"{source}.{what}"
        for attr in ast.walk(tree):
            if (
                isinstance(attr, ast.Attribute)
                and isinstance(attr.value, ast.Name)
                and attr.value.id in bound
                and attr.attr.startswith("_")
                and not attr.attr.startswith("__")
            ):
                borrowed.add((str(path.relative_to(ROOT)), f"{attr.value.id}.{attr.attr}"))
    assert borrowed == BORROWED


def test_no_import_cycle_between_its_modules() -> None:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = set()
        for _, source, what, _ in imported(tree, name, path.name == "__init__.py"):
            target = f"{source}.{what}" if what and f"{source}.{what}" in mods else source
            if target in mods and target != name:
                targets.add(target)
        graph[name] = targets
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []

"""deploy/threat-model.md stays true: every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "deploy" / "threat-model.md"


def _named_tests() -> list[tuple[str, str, str]]:
    """(file, test, case) triples from the table: `path::test`, `path::test[case]` (one row of a
    parametrised table), and `::test` meaning the last path named."""
    out = []
    for line in MODEL.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ") or "::" not in line:
            continue
        current = ""
        for path, name, case in re.findall(r"`([\w/]*\.py)?::(test_\w+)(?:\[([\w-]+)\])?`", line):
            if path:
                current = path if "/" in path else f"tests/security/{path}"
            out.append((current, name, case))
    return out


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_named_test_exists() -> None:
    named = _named_tests()
    assert len(named) >= 60
    missing = [f"{f}::{t}" for f, t, _ in named if not f or t not in _functions(ROOT / f)]
    assert missing == []
    # A case of a parametrised table is named by its id: ``case("<id>", …)`` or ``id="<id>"``.
    no_case = [
        f"{f}::{t}[{c}]"
        for f, t, c in named
        if c
        and f'case("{c}"' not in (text := (ROOT / f).read_text(encoding="utf-8"))
        and f'id="{c}"' not in text
    ]
    assert no_case == []


def test_the_security_suite_has_the_named_negative_tests() -> None:
    tests = set()
    for f in (ROOT / "tests" / "security").glob("test_*.py"):
        tests |= {name for name in _functions(f) if name.startswith("test_")}
    assert len(tests) >= 25

"""The codebase stays readable in one sitting: size limits checked on every run (issue 9)."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 250


def _nodes() -> list[tuple[str, ast.AST]]:
    found = []
    for path in sorted(PIPELINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.append((f"{path.relative_to(PIPELINE.parent)}:{node.lineno} {node.name}", node))
    return found


def _length(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


def test_no_function_over_60_lines() -> None:
    long = [f"{where} ({_length(n)} lines)" for where, n in _nodes()
            if not isinstance(n, ast.ClassDef) and _length(n) > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, long


def test_no_class_over_250_lines() -> None:
    long = [f"{where} ({_length(n)} lines)" for where, n in _nodes()
            if isinstance(n, ast.ClassDef) and _length(n) > MAX_CLASS_LINES]  # fmt: skip
    assert not long, long

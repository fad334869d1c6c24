"""The test suite's own rule for threads, read from its source: a test that starts threads
stops them in a ``finally`` block (or joins each right after starting it, with nothing in
between that could fail), so that a failing test can't leave workers running (one such
test once looped until pytest reached 23.7 GB and was killed)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# What a finally block may call to stop or release a thread.
STOPPERS = frozenset({"join", "set", "heal", "abort"})


def _own_nodes(function: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``function``'s body, not those of functions defined inside it."""
    todo = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _called(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
        if isinstance(node.func, ast.Name):
            return node.func.id
    return None


def _starts_threads(function: ast.AST) -> bool:
    names = {_called(node) for node in _own_nodes(function)}
    return "Thread" in names and "start" in names


def _is_call_of(stmt: ast.stmt, name: str) -> bool:
    return isinstance(stmt, ast.Expr) and _called(stmt.value) == name


def _joined_at_once(function: ast.AST) -> bool:
    """Every ``X.start()`` statement is followed at once by an ``X.join(...)`` one."""
    starts = joined = 0
    for node in (function, *_own_nodes(function)):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for i, stmt in enumerate(block):
                if _is_call_of(stmt, "start"):
                    starts += 1
                    joined += i + 1 < len(block) and _is_call_of(block[i + 1], "join")
    return starts > 0 and starts == joined


def _stops_in_finally(function: ast.AST) -> bool:
    for node in _own_nodes(function):
        if isinstance(node, ast.Try) and node.finalbody:
            inside = {_called(n) for stmt in node.finalbody for n in ast.walk(stmt)}
            if inside & STOPPERS:
                return True
    return _joined_at_once(function)


def _functions() -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and _starts_threads(node):
                found.append((f"{path.relative_to(TESTS)}::{node.name}", node))
    return found


def test_the_scan_finds_the_tests_that_start_threads() -> None:
    """Not vacuous: the scan sees this suite's thread-starting tests."""
    names = [name for name, _ in _functions()]
    assert "cluster/test_integration.py::test_threads_keep_working_through_a_fault" in names
    assert len(names) >= 8


@pytest.mark.parametrize(("name", "function"), _functions(), ids=lambda v: str(v)
                         if isinstance(v, str) else "")
def test_threads_are_stopped_in_finally(name: str, function: ast.AST) -> None:
    """Every test function that starts threads joins or releases them in a finally
    block, or joins each one right after starting it."""
    assert _stops_in_finally(function), f"{name} starts threads with no finally that stops them"

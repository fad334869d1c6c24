"""What importing costs and where imports go: ``import hsm`` and the pytest plugin stay light,
the lazy names resolve, ``hsm.cli`` never imports ``hsm.testing``, and ``hsm.testing`` has no
import cycle (hidden inside a function or not)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hsm
import hsm.testing

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hsm"
HEAVY = ("pkcs11", "hsm.client", "prometheus_client")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules loaded by ``code`` in a fresh interpreter."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(loaded, list)
    return loaded


def test_import_hsm_and_the_plugin_load_no_pkcs11_client_or_metrics() -> None:
    """`import hsm, hsm.testing.plugin` (what pytest does in every session of a project that
    installs hsm) loads neither pkcs11, the client nor prometheus_client."""
    assert _loaded_after("import hsm, hsm.testing.plugin") == []
    assert _loaded_after("import hsm.testing; hsm.testing.Harness; hsm.testing.harness_up") == []
    assert _loaded_after("import hsm; hsm.HSMError; hsm.__version__") == []


def test_a_lazy_name_loads_its_module_when_used() -> None:
    """hsm.open, hsm.Client: the client (and pkcs11) once asked for, not before."""
    assert set(_loaded_after("import hsm; hsm.open")) >= {"pkcs11", "hsm.client"}


@pytest.mark.parametrize("package", [hsm, hsm.testing], ids=["hsm", "hsm.testing"])
def test_every_public_name_resolves(package: object) -> None:
    """Every name in __all__ is there (lazily or not), dir() lists it; others raise
    AttributeError, so that `from hsm import submodule` still imports submodules."""
    names = getattr(package, "__all__")  # noqa: B009 - typed as object here
    for name in names:
        assert getattr(package, name) is not None, name
    assert set(names) <= set(dir(package))
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(package, "no_such_name")  # noqa: B009


def test_lazy_names_are_the_real_objects() -> None:
    """A lazily imported name is the very object its module defines."""
    from hsm.client import Client, open
    from hsm.testing.faults import FaultInjector
    from hsm.testing.harness import harness_up
    from hsm.testing.layout import HarnessError

    assert hsm.Client is Client
    assert hsm.open is open
    assert hsm.testing.FaultInjector is FaultInjector
    assert hsm.testing.harness_up is harness_up
    assert hsm.testing.HarnessError is HarnessError


# -- the import graph, read from the source ---------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The hsm modules an import statement names (``from P import m``: P.m if a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        names = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base
                 for alias in node.names]
    return [name for name in names if name == "hsm" or name.startswith("hsm.")]


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported when ``path`` is imported, modules imported inside its functions)."""
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # never run
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).update(_targets(child))
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return top, inner


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    top: dict[str, set[str]] = {}
    inner: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        top[name], inner[name] = _imports(path)
    return top, inner


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_hsm_cli_never_imports_hsm_testing() -> None:
    """The core command line finds hsm.testing's commands through entry points only."""
    top, inner = _graph()
    for name in top:
        if name == "hsm.cli" or name.startswith("hsm.cli."):
            imported = top[name] | inner[name]
            assert not [m for m in imported if m.startswith("hsm.testing")], name
            reach = _reachable(top, name)
            assert not [m for m in reach if m.startswith("hsm.testing")], name


def test_hsm_testing_has_no_import_cycle() -> None:
    """No module of hsm.testing imports itself again through others, and no import inside a
    function hides such a cycle (the import it defers would reach back to its module)."""
    top, inner = _graph()
    ours = [name for name in top if name.startswith("hsm.testing")]
    assert len(ours) > 10
    for name in ours:
        assert name not in _reachable(top, name), f"{name} imports itself again"
        for deferred in inner[name]:
            back = {deferred} | _reachable(top, deferred)
            assert name not in back, f"{name} defers importing {deferred}, which imports it"

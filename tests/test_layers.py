"""The layering rules, checked on the source tree's imports (with ``ast``, nothing run):
only :mod:`hsm.pkcs11` touches python-pkcs11, and the keys layer imports only downward."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkcs11.exceptions import PKCS11Error

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hsm"
EDGE = PACKAGE / "pkcs11"
KEYS = PACKAGE / "keys"
# What the keys layer may import from this package: below it, and itself.
KEYS_MAY_IMPORT = ("hsm.errors", "hsm.context", "hsm.pkcs11", "hsm.keys")


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(tree: ast.AST) -> Iterator[tuple[ast.stmt, str]]:
    """Every import statement anywhere in ``tree`` (functions included), with the module it
    reads (``from a import b`` reads ``a``; ``import a.b`` reads ``a.b``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, "relative imports are not used in hsm"
            yield node, node.module


def _is_pkcs11(module: str) -> bool:
    return module == "pkcs11" or module.startswith("pkcs11.")


def _outside_edge() -> list[Path]:
    return [p for p in _modules(PACKAGE) if EDGE not in p.parents]


def _bindings(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Module-level names bound by imports: name -> (module, attribute or None)."""
    bound: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = (alias.name, None)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                bound[alias.asname or alias.name] = (node.module, alias.name)
    return bound


def _caught(handler: ast.ExceptHandler) -> list[ast.expr]:
    if handler.type is None:
        return []
    if isinstance(handler.type, ast.Tuple):
        return list(handler.type.elts)
    return [handler.type]


def _resolve(expr: ast.expr, bound: dict[str, tuple[str, str | None]],
             module: str) -> object | None:
    """The object an ``except`` clause names (a name or a dotted attribute), if importable."""
    chain: list[str] = []
    while isinstance(expr, ast.Attribute):
        chain.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    if expr.id in bound:
        source, attribute = bound[expr.id]
        obj: object = importlib.import_module(source)
        if attribute is not None:
            obj = getattr(obj, attribute)
    else:
        obj = getattr(importlib.import_module(module), expr.id, None)
    for attribute in chain:
        obj = getattr(obj, attribute, None)
    return obj


def test_the_tree_is_found() -> None:
    """The scans below see the package, its edge and its keys layer."""
    assert _modules(EDGE)
    assert _modules(KEYS)
    assert len(_outside_edge()) > 20


def test_only_the_edge_imports_pkcs11() -> None:
    """No module outside hsm/pkcs11 imports python-pkcs11, at module level or in a function."""
    offenders = [f"{path.relative_to(ROOT)}:{node.lineno}: {module}"
                 for path in _outside_edge()
                 for node, module in _imports(_tree(path)) if _is_pkcs11(module)]
    assert offenders == []


def test_the_edge_does_import_pkcs11() -> None:
    """The scan is not vacuous: the edge's modules do import python-pkcs11."""
    assert any(_is_pkcs11(module) for path in _modules(EDGE)
               for _, module in _imports(_tree(path)))


def test_no_module_outside_the_edge_catches_pkcs11_exceptions() -> None:
    """Every ``except`` clause outside hsm/pkcs11 names this package's errors or builtins,
    never a python-pkcs11 exception (not even one re-exported by another module)."""
    offenders = []
    for path in _outside_edge():
        tree = _tree(path)
        bound = _bindings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ExceptHandler):
                continue
            for expr in _caught(node):
                caught = _resolve(expr, bound, _name(path))
                if isinstance(caught, type) and issubclass(caught, PKCS11Error):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                     f"{ast.unparse(expr)}")
    assert offenders == []


def test_the_exception_scan_sees_pkcs11_exceptions() -> None:
    """The scan is not vacuous: it resolves the edge's own handlers to pkcs11 exceptions."""
    path = EDGE / "objects.py"
    tree = _tree(path)
    bound = _bindings(tree)
    caught = [_resolve(expr, bound, _name(path)) for node in ast.walk(tree)
              if isinstance(node, ast.ExceptHandler) for expr in _caught(node)]
    assert PKCS11Error in caught


@pytest.mark.parametrize("path", _modules(KEYS), ids=lambda p: p.name)
def test_the_keys_layer_imports_only_downward(path: Path) -> None:
    """A keys module imports from this package only hsm.errors, hsm.context, hsm.pkcs11 and
    other hsm.keys modules, and only at module level (no import inside a function to dodge
    a cycle)."""
    tree = _tree(path)
    top = {id(node) for node in tree.body}
    for node, module in _imports(tree):
        if module != "hsm" and not module.startswith("hsm."):
            continue
        assert any(module == allowed or module.startswith(allowed + ".")
                   for allowed in KEYS_MAY_IMPORT), f"{path.name}:{node.lineno} imports {module}"
        assert id(node) in top, f"{path.name}:{node.lineno} imports {module} inside a block"


def test_the_keys_layer_has_no_import_cycle() -> None:
    """The hsm.keys modules import each other without a cycle (keyring and keywrap included);
    ``from hsm.keys import X`` of a name that is not a module counts as importing the
    package, which imports every module."""
    modules = {_name(path): path for path in _modules(KEYS)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(_tree(path)):  # imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t in modules} - {name}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
    assert graph["hsm.keys.keyring"]
    assert done == set(modules)


# -- the whole package -----------------------------------------------------------------------

# Each layer of DESIGN.md with its rank: a module imports only from lower ranks (and from
# its own layer). ``hsm`` itself (the curated top-level names) comes last.
RANKS = {
    "hsm.errors": 0, "hsm.context": 1, "hsm.pkcs11": 2, "hsm.config": 3, "hsm.keys": 3,
    "hsm.cluster": 4, "hsm.envelope": 4, "hsm.kms": 5, "hsm.client": 6, "hsm.cli": 7,
    "hsm.testing": 8,
    "hsm": 9,
}
ALL = {_name(path): path for path in _modules(PACKAGE)}


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _runtime_imports(tree: ast.Module) -> Iterator[tuple[ast.stmt, str]]:
    """Imports that run (``if TYPE_CHECKING:`` blocks left out), each with the module it
    loads: ``from a import b`` loads ``a.b`` where that is a module of ours, else ``a``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield node, full if full in ALL else node.module


def _ours(module: str) -> bool:
    return module == "hsm" or module.startswith("hsm.")


def test_every_layer_has_a_rank() -> None:
    """Every module of the package belongs to a layer this test knows."""
    assert {_layer(name) for name in ALL} <= set(RANKS)


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_go_only_downward(name: str) -> None:
    """No module imports from a layer above its own (hsm.cli never imports hsm.testing, the
    cluster never imports the client); ``from hsm import __version__`` is the one exception."""
    tree = _tree(ALL[name])
    own = RANKS[_layer(name)]
    for node, module in _runtime_imports(tree):
        if not _ours(module) or _layer(module) == _layer(name):
            continue
        if module == "hsm" and isinstance(node, ast.ImportFrom) \
                and [a.name for a in node.names] == ["__version__"]:
            continue
        assert RANKS[_layer(module)] < own, f"{name}:{node.lineno} imports {module} (upward)"


def test_the_package_has_no_import_cycle() -> None:
    """No chain of imports (inside functions too, type-checking blocks aside) leads from a
    module back to itself."""
    graph = {name: {m for _, m in _runtime_imports(_tree(path)) if m in ALL} - {name}
             for name, path in ALL.items()}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())
    assert done == set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_long_modules_say_why(name: str) -> None:
    """A module over ~400 lines says in its docstring why it is not split."""
    path = ALL[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines <= 410:
        return
    doc = ast.get_docstring(_tree(path)) or ""
    assert "400-line" in doc or "400 lines" in doc, \
        f"{name} has {lines} lines and no reason in its docstring"

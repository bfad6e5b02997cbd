"""The layers import one way: scoring <- evolve.ga <- evolve.store / evolve.experiments <- cli.

The GA's side (evolve.ga and the API that runs it, evolve.api) never imports evolve.experiments:
a run's generation 0 decodes with scoring.decoding, not with the baselines.

Walks the AST of every module (imports inside functions included), so a lazy import cannot
sneak a dependency past the rule either.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer -> the first-party packages its modules may import (besides their own)
ALLOWED: dict[str, tuple[str, ...]] = {
    "scoring": ("scoring",),
    "evolve.ga": ("scoring", "evolve.ga"),
    "evolve.store": ("scoring", "evolve.ga", "evolve.store"),
    "evolve.experiments": ("scoring", "evolve.ga", "evolve.store", "evolve.experiments"),
    "evolve.web": ("scoring", "evolve.ga", "evolve.store", "evolve.experiments", "evolve.web"),
    "evolve": ("scoring", "evolve"),  # the facade (evolve/__init__.py, evolve/api.py)
    "cli": ("scoring", "evolve", "cli"),
}
FIRST_PARTY = ("scoring", "evolve", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    best = ""
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m for m in found if m.split(".")[0] in FIRST_PARTY]


MODULES = sorted(p for pkg in FIRST_PARTY for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    layer = _layer(_module_name(path))
    assert layer, f"{path} is in no known layer"
    allowed = ALLOWED[layer]
    bad = [m for m in _imports(path) if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert not bad, f"{_module_name(path)} ({layer}) imports {bad}"


# The GA's side: the GA itself and the API that runs it (generation 0 included, which decodes
# with `scoring.decoding`). The experiments consume the GA; nothing of a run imports them.
GA_SIDE = ("evolve.ga", "evolve.api", "evolve")
EXPERIMENTS = "evolve.experiments"


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if _module_name(p) in GA_SIDE or _module_name(p).startswith("evolve.ga.")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_ga_side_never_imports_the_experiments(path: Path) -> None:
    bad = [m for m in _imports(path) if m == EXPERIMENTS or m.startswith(EXPERIMENTS + ".")]
    assert not bad, f"{_module_name(path)} imports {bad}"
    # nor names one for a lazy import (the facade's export table imports by name)
    named = [
        node.value
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"evolve\.experiments(\.\w+)*", node.value)
    ]
    assert not named, f"{_module_name(path)} names {named}"


def test_the_ga_side_is_checked() -> None:
    names = {
        _module_name(p)
        for p in MODULES
        if _module_name(p) in GA_SIDE or _module_name(p).startswith("evolve.ga.")
    }
    assert {"evolve", "evolve.api", "evolve.ga.engine", "evolve.ga.population"} <= names


def test_every_package_is_checked() -> None:
    names = {_module_name(p) for p in MODULES}
    for expected in ("scoring.pll", "evolve.ga.engine", "evolve.store.recorder", "cli.main"):
        assert expected in names


def test_checker_rejects_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "engine.py"
    fake.write_text("def f():\n    from evolve.store import LogStore\n    import cli.main\n")
    allowed = ALLOWED[_layer("evolve.ga.engine")]
    bad = [m for m in _imports(fake) if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert bad == ["evolve.store", "cli.main"]


# -- SQLite only in the store ----------------------------------------------------------------------
# House rule 3: every read and write of a database goes through evolve.store. Outside it no
# module imports an SQLite binding, and no code holds SQL text (docstrings may show examples).

SQLITE_MODULES = ("sqlite3", "_sqlite3", "sqlite_utils", "apsw")
STORE = ROOT / "evolve" / "store"
OUTSIDE_STORE = sorted(
    p for p in [*MODULES, *(ROOT / "bench").rglob("*.py")] if STORE not in p.parents
)
SQL_TEXT = re.compile(
    r"\b(SELECT\b[\s\S]*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(TABLE|VIEW|INDEX|TRIGGER)|DROP\s+(TABLE|VIEW|INDEX)|PRAGMA\s+\w+)\b"
)


def _sqlite_imports(path: Path) -> list[str]:
    """SQLite bindings `path` imports, by statement or through importlib/__import__."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return [m for m in found if m.split(".")[0] in SQLITE_MODULES]


def _sql_texts(path: Path) -> list[str]:
    """String constants of `path` (f-string parts included) that hold SQL, docstrings aside."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and SQL_TEXT.search(node.value)
    ]


@pytest.mark.parametrize("path", OUTSIDE_STORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_store_touches_sqlite(path: Path) -> None:
    assert not _sqlite_imports(path), f"{path.relative_to(ROOT)} imports {_sqlite_imports(path)}"
    assert not _sql_texts(path), f"{path.relative_to(ROOT)} holds SQL: {_sql_texts(path)[0]!r}"


def test_the_sqlite_guard_sees_the_web_and_the_cli() -> None:
    names = {_module_name(p) for p in OUTSIDE_STORE}
    for expected in ("evolve.web.plugin", "evolve.web.app", "evolve.api", "cli.common"):
        assert expected in names
    assert not any(n.startswith("evolve.store") for n in names)


def test_sqlite_checker_rejects_imports_and_sql_text(tmp_path: Path) -> None:
    fake = tmp_path / "page.py"
    fake.write_text(
        '"""Reads SELECT id FROM runs (a docstring may say so)."""\n'
        "import importlib\n"
        "def f(conn, run):\n"
        "    import sqlite3\n"
        "    from sqlite_utils.db import Table\n"
        "    importlib.import_module('_sqlite3')\n"
        "    return conn.execute(f'SELECT * FROM runs WHERE id = {run}')\n"
    )
    assert _sqlite_imports(fake) == ["sqlite3", "sqlite_utils.db", "_sqlite3"]
    assert _sql_texts(fake) == ["SELECT * FROM runs WHERE id = "]

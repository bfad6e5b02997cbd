"""The layers import one way: scoring <- evolve.ga <- evolve.store / evolve.experiments <- cli.

Walks the AST of every module (imports inside functions included), so a lazy import cannot
sneak a dependency past the rule either.
"""

from __future__ import annotations

import ast
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

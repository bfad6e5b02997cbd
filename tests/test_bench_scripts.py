"""The bench scripts still fit the code they drive (cheap: no model is loaded or run).

bench/ holds scripts, not a package, and no other test runs most of them, so a rename in the
library breaks them silently: bench/causal_speed.py kept monkeypatching
`evolve.ga.engine.load_causal` after the model loaders moved to `evolve.ga.wiring`. Each script
is imported as a module (its imports and its module-level configs run) and checked:

- every attribute it reads or assigns on one of our modules or classes exists, and one it
  assigns on a module (a monkeypatch) is a global that module's code reads, else the patch
  changes nothing;
- every call of one of our callables that the script names passes arguments its signature
  accepts (keyword names, number of positional arguments; also inside `functools.partial`);
- the attributes it reads on our objects at run time (`USES`, written out by hand from the
  scripts: the AST cannot tell their types) exist on the classes;
- ``--help`` exits 0 in a subprocess with this Python (imports everything, parses the options).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evolve.api import RunSummary
from evolve.experiments.amplify import BeamSet, Lookahead
from evolve.experiments.baselines import BaselineText
from evolve.experiments.stunting import Amplified, StuntConfig
from evolve.ga.engine import Engine, Generation
from evolve.ga.evaluate import EvalStats, Evaluator, NewScore
from evolve.ga.proposers import CausalProposer, FillRequest
from evolve.ga.workers import WorkerPool
from evolve.store import LogStore
from evolve.store.recorder import Recorder
from scoring.causal import CausalScorer, PrefixCache
from scoring.models import LoadedModel
from scoring.pll import PLLScorer, PLLStats
from scoring.results import TokenScores
from scoring.typical import TypicalScorer

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))
OURS = {"scoring", "evolve", "cli", *SCRIPTS}  # scale.py imports pll_speed as a module

# Attributes each script reads on our objects (instances whose type the AST cannot see).
USES: dict[str, list[tuple[type, list[str]]]] = {
    "pll_speed": [
        (PLLScorer, ["clear_cache", "stats", "score_ids", "gathers_head"]),
        (PLLStats, ["reset", "forward_passes", "forward_rows", "forward_tokens"]),
        (TokenScores, ["total"]),
        (LoadedModel, ["model", "tokenizer", "name"]),
    ],
    "amplify_speed": [
        (Lookahead, ["start_id"]),
        (BeamSet, ["tokens"]),
        (LoadedModel, ["model", "tokenizer"]),
    ],
    "degeneration": [
        (RunSummary, ["run_id"]),
        (LogStore, ["best", "last_generation", "population", "__enter__", "__exit__"]),
        (BaselineText, ["text", "method"]),
        (CausalScorer, ["score"]),
        (PLLScorer, ["score"]),
        (TypicalScorer, ["score"]),
        (TokenScores, ["mean"]),
    ],
    "scale": [
        (Engine, ["fitness_label", "run"]),
        (Recorder, ["__call__"]),
        (WorkerPool, ["wait_seconds", "critical_seconds"]),
        (Generation, ["seconds", "texts", "stats"]),
        (EvalStats, ["n_evaluated"]),
        (LoadedModel, ["model", "tokenizer"]),
    ],
    "search_vs_beam": [
        (RunSummary, ["best"]),
        (BaselineText, ["text"]),
        (CausalScorer, ["score"]),
        (PLLScorer, ["score"]),
        (TokenScores, ["total", "n_tokens"]),
        (LoadedModel, ["model"]),
    ],
    "mlm_heldout": [
        (LoadedModel, ["model", "tokenizer"]),
        (CausalScorer, ["score"]),
        (PLLScorer, ["score"]),
    ],
    "stunt_batching": [
        (LoadedModel, ["model"]),
        (Amplified, ["first"]),
        (StuntConfig, ["variant", "amplifier_spec"]),
    ],
    "ga_overhead": [
        (Engine, ["evaluator", "fitness_label", "proposer", "run"]),
        (Evaluator, ["channels"]),
        (FillRequest, ["positions"]),
        (Generation, ["seconds"]),
        (PLLScorer, ["score_ids"]),
        (Recorder, ["__call__"]),
        (LoadedModel, ["tokenizer"]),
    ],
    "causal_speed": [
        (Generation, ["texts", "new_scores"]),
        (NewScore, ["scorer", "text", "score"]),
        (TokenScores, ["total", "token_logprobs", "n_tokens"]),
        (CausalScorer, ["score", "score_ids"]),
        (PrefixCache, ["clear"]),
        (LoadedModel, ["model", "tokenizer"]),
    ],
}


def load_script(stem: str) -> types.ModuleType:
    """bench/<stem>.py as a module, under its own name (scale.py imports pll_speed so)."""
    if stem in sys.modules:
        return sys.modules[stem]
    spec = importlib.util.spec_from_file_location(stem, BENCH / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module  # dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(stem, None)
        raise
    return module


@pytest.fixture(scope="module")
def scripts() -> Iterator[dict[str, types.ModuleType]]:
    saved_path = list(sys.path)
    before = set(sys.modules)
    yield {stem: load_script(stem) for stem in SCRIPTS}
    sys.path[:] = saved_path  # scale.py puts bench/ on the path
    for stem in SCRIPTS:
        if stem not in before:
            sys.modules.pop(stem, None)


def is_ours(obj: Any) -> bool:
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return isinstance(name, str) and name.split(".")[0] in OURS


def has_attribute(cls: type, name: str) -> bool:
    """A class attribute, a dataclass field, an annotated attribute, or ``self.name = ...``
    in a method of the class or of a base."""
    if hasattr(cls, name):
        return True
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return True
        if dataclasses.is_dataclass(klass) and name in {f.name for f in dataclasses.fields(klass)}:
            return True
        if klass is object or not is_ours(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr == name
            ):
                return True
    return False


def reads_global(module: types.ModuleType, name: str) -> bool:
    """Whether code inside a function of ``module`` reads the global ``name`` (annotations
    do not count: under ``from __future__ import annotations`` they are never evaluated)."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text())
    annotations: set[int] = set()
    for node in ast.walk(tree):
        part: ast.expr | None = None
        if isinstance(node, ast.arg | ast.AnnAssign):
            part = node.annotation
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            part = node.returns
        if part is not None:
            annotations.update(id(n) for n in ast.walk(part))
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Name)
                    and node.id == name
                    and isinstance(node.ctx, ast.Load)
                    and id(node) not in annotations
                ):
                    return True
    return False


def resolve(node: ast.expr, namespace: types.ModuleType) -> Any:
    """The object a chain of names (``a.b.c``) means in the script's module namespace, or None
    where it is not a module-level name (a local, a call's result)."""
    if isinstance(node, ast.Name):
        return getattr(namespace, node.id, None)
    if isinstance(node, ast.Attribute):
        base = resolve(node.value, namespace)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def local_names(tree: ast.Module) -> set[str]:
    """Names bound inside functions (arguments, assignments): a chain rooted at one of them
    is not the module-level object of the same name."""
    names: set[str] = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = func.args
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None:
                    names.add(a.arg)
            for node in ast.walk(func):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
    return names


def problems(script: Path, module: types.ModuleType) -> list[str]:
    """What in ``script`` (imported as ``module``) no longer matches our code, one per line."""
    tree = ast.parse(script.read_text())
    shadowed = local_names(tree)
    found: list[str] = []

    def root(node: ast.expr) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        where = f"{script.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and root(node) not in shadowed:
            owner = resolve(node.value, module)
            if isinstance(owner, types.ModuleType) and is_ours(owner):
                if not hasattr(owner, node.attr):
                    found.append(f"{where}: {owner.__name__} has no {node.attr}")
                elif isinstance(node.ctx, ast.Store) and not reads_global(owner, node.attr):
                    found.append(
                        f"{where}: patches {owner.__name__}.{node.attr}, which no function "
                        "there reads as a global (the patch would change nothing)"
                    )
            elif isinstance(owner, type) and is_ours(owner) and not has_attribute(owner, node.attr):
                found.append(f"{where}: {owner.__qualname__} has no {node.attr}")
        if isinstance(node, ast.Call) and root(node.func) not in shadowed:
            func, args = resolve(node.func, module), list(node.args)
            if func is functools.partial and args:
                func = resolve(args[0], module) if root(args[0]) not in shadowed else None
                args = args[1:]
            elif func is dataclasses.replace and args and isinstance(args[0], ast.Call):
                func = resolve(args[0].func, module)  # replace(Config(), field=...)
                args = []
            if func is None or not callable(func) or not is_ours(func):
                continue
            keywords = {k.arg: None for k in node.keywords if k.arg is not None}
            positional = [] if any(isinstance(a, ast.Starred) for a in args) else args
            try:
                inspect.signature(func).bind_partial(*[None] * len(positional), **keywords)
            except TypeError as err:
                name = getattr(func, "__qualname__", repr(func))
                found.append(f"{where}: {name}({', '.join(keywords)}): {err}")
    for cls, names in USES.get(script.stem, []):
        found += [
            f"{script.name}: {cls.__qualname__} has no {n}"
            for n in names
            if not has_attribute(cls, n)
        ]
    return found


def test_every_script_is_listed() -> None:
    assert set(USES) == set(SCRIPTS)


@pytest.mark.parametrize("stem", SCRIPTS)
def test_script_matches_our_code(stem: str, scripts: dict[str, types.ModuleType]) -> None:
    assert problems(BENCH / f"{stem}.py", scripts[stem]) == []


def test_causal_speed_patches_what_wiring_uses(scripts: dict[str, types.ModuleType]) -> None:
    """The names causal_speed.py swaps (`path`) are the ones the engine's wiring calls, and
    its partial of the proposer passes an argument the proposer takes."""
    import evolve.ga.wiring as wiring

    assert scripts["causal_speed"].wiring is wiring
    for name in ("load_causal", "CausalScorer", "CausalProposer"):
        assert hasattr(wiring, name) and reads_global(wiring, name), name
    assert "batched" in inspect.signature(CausalProposer).parameters


def test_the_check_finds_stale_names(tmp_path: Path) -> None:
    """The check itself: a patch of a name the module lacks, a patch of a name the module
    only uses in annotations, a wrong keyword (direct and in `replace`) and a missing class
    attribute are each reported, and nothing else."""
    script = tmp_path / "stale.py"
    script.write_text(
        "from dataclasses import replace\n"
        "import evolve.ga.engine as engine\n"
        "import evolve.ga.wiring as wiring\n"
        "from evolve.ga.config import FitnessConfig\n"
        "from evolve.ga.engine import Engine\n"
        "from scoring.causal import CausalScorer\n"
        "def main(lm):\n"
        "    engine.load_causal = None\n"
        "    wiring.Scorer = None\n"
        "    wiring.load_causal = None\n"
        "    CausalScorer(lm, prefix_cach=True)\n"
        "    CausalScorer(lm, prefix_cache=True)\n"
        "    replace(FitnessConfig(), objectiv='pll')\n"
        "    return Engine.bulid, Engine.build\n"
    )
    spec = importlib.util.spec_from_file_location("stale", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = problems(script, module)
    assert any("evolve.ga.engine has no load_causal" in p for p in found), found
    assert any("evolve.ga.wiring.Scorer" in p and "change nothing" in p for p in found), found
    assert any("prefix_cach'" in p for p in found), found
    assert any("objectiv'" in p for p in found), found
    assert any("Engine has no bulid" in p for p in found), found
    assert len(found) == 5, found


@pytest.mark.parametrize("stem", SCRIPTS)
def test_help_exits_0(stem: str) -> None:
    # bench/ is on the script's path, the project root maybe not (an uninstalled checkout)
    root = str(BENCH.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{stem}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout

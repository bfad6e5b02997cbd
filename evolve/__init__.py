"""mlm-evolve: evolve text with a masked language model (see README.md).

The public API, for notebooks and scripts (`evolve.api`):

    from evolve import RunConfig, run_ga
    run = run_ga(RunConfig(prompt="Cheddar is", population=8, generations=3, seed=0))
    run.best(5)

Names are loaded on first use, so importing one subpackage (`evolve.ga`, `evolve.store`)
does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunConfig": "evolve.ga.config",
    "MutationConfig": "evolve.ga.config",
    "CrossoverConfig": "evolve.ga.config",
    "FitnessConfig": "evolve.ga.config",
    "Engine": "evolve.ga.engine",
    "Generation": "evolve.ga.engine",
    "LogStore": "evolve.store",
    "Candidate": "evolve.api",
    "Run": "evolve.api",
    "RunInterrupted": "evolve.api",
    "run_ga": "evolve.api",
    "resume_ga": "evolve.api",
    "start_run": "evolve.api",
    "resume_run": "evolve.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'evolve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

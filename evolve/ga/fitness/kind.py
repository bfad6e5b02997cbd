"""`FitnessKind`: what one kind of fitness reads and how it combines it.

A kind declares, from the fitness options alone (`FitnessConfig`):

- ``reads``: the score roles its objective combines (`PLL`, `CAUSAL`, `TYPICAL`). A role is
  one scorer of the run, built by `evolve.ga.wiring` from the loaded models; the objective
  gets each role's scorer name and finds its scores under that name in the score record
  (`Individual.scores`), so nothing downstream needs to know which class scored;
- ``combine``: the objective (`evolve.ga.objectives`) over those scorers, which turns the
  score record into the DEAP fitness values, the scalar of reports and the MH energy;
- ``pareto``: whether its values are several objectives for NSGA-II selection (the engine
  then makes Pareto individuals and runs the NSGA-II step) or one value to maximise;
- ``problem``: a one-line reason why the fitness options cannot make this kind, checked by
  `RunConfig.validate` with every other option.

The repetition penalty (``rep_penalty``) wraps whatever a kind combines, so kinds do not
handle it (`evolve.ga.fitness.build_objective`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evolve.ga.objectives import Normalise, Objective

if TYPE_CHECKING:  # the config imports the kinds (its choices), so only for annotations
    from evolve.ga.config import FitnessConfig

# Score roles: which scorer a value comes from. `evolve.ga.wiring` builds one scorer per role
# a run's kind reads: PLL under the masked LM, log p(continuation | prompt) under the causal
# LM, and local typicality under the model `typical_model` names.
PLL, CAUSAL, TYPICAL = "pll", "causal", "typical"
ROLES = (PLL, CAUSAL, TYPICAL)

Names = Mapping[str, str]  # role -> the run's scorer name for it


def no_problem(cfg: FitnessConfig) -> str | None:
    return None


@dataclass(frozen=True)
class FitnessKind:
    """One kind of fitness: the value of ``--fitness`` that names it, and its declaration."""

    name: str
    summary: str  # what it maximises, in a few words: --fitness's help lists them
    reads: Callable[[FitnessConfig], tuple[str, ...]]  # the score roles it combines
    combine: Callable[[FitnessConfig, Names], Objective]  # its objective over those scorers
    pareto: bool = False  # several values under NSGA-II selection, else one maximised value
    problem: Callable[[FitnessConfig], str | None] = no_problem  # why the options cannot fit


def normalise_of(cfg: FitnessConfig) -> Normalise:
    """How every kind turns a model score into a value: per token, or total plus a prior."""
    return Normalise(cfg.normalise, cfg.length_bonus)


def weighted_terms(cfg: FitnessConfig, names: Names) -> tuple[tuple[float, str], ...]:
    """(weight, scorer) of the multi-model kinds: PLL and causal, and typicality when its
    weight is positive (a third term; 0 by default keeps the two-model kinds as they were)."""
    terms: tuple[tuple[float, str], ...] = (
        (cfg.pll_weight, names[PLL]),
        (cfg.causal_weight, names[CAUSAL]),
    )
    if cfg.typical_weight > 0:
        terms = (*terms, (cfg.typical_weight, names[TYPICAL]))
    return terms


def weighted_reads(cfg: FitnessConfig) -> tuple[str, ...]:
    """The roles `weighted_terms` reads."""
    return (PLL, CAUSAL, TYPICAL) if cfg.typical_weight > 0 else (PLL, CAUSAL)

"""Fitness kinds: one module per value of ``--fitness``, and the registry that lists them.

Each kind (`FitnessKind`, `evolve.ga.fitness.kind`) declares the score roles it reads and
how it combines them into an objective. Everything else asks the registry instead of
listing kinds:

- the config (`evolve.ga.config`): the choices of `FitnessConfig.objective` (so the CLI's
  ``--fitness`` choices and help), which models a run loads, and each kind's own checks;
- the wiring (`evolve.ga.wiring`): builds one scorer per role the kind reads;
- the engine (`evolve.ga.engine`): gets the objective from `build_objective` with the names
  of the scorers the wiring built, by role, and knows only the score record and whether the
  kind is Pareto (NSGA-II) or single-valued.

Why this shape: before, a new kind touched five files (the engine picked scorers out by
their classes; objectives, wiring, CLI and config each listed every kind). A kind is data
(a frozen dataclass of small functions), not a subclass, because it has no state and the
config must read its name and checks before any model exists. Roles stay few and fixed in
the wiring, since scorers need loaded models and their options; a kind over the existing
scorers is one module here plus one line in `KINDS`. A kind that needs a new scorer also
gives the wiring that scorer's role (docs/DESIGN.md, "Adding a fitness kind").

``word_l2r`` is not a kind of its own: it is the PLL scorer's variant (`FitnessConfig.variant`),
which changes the scores the ``pll`` kind (and sum, nsga2) read, not how they are combined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolve.ga.fitness import causal, nsga2, pll, typical, weighted_sum
from evolve.ga.fitness.kind import CAUSAL, PLL, ROLES, TYPICAL, FitnessKind, Names
from evolve.ga.objectives import Objective, RepetitionPenalty

if TYPE_CHECKING:
    from evolve.ga.config import FitnessConfig

# The registry, in the order --help lists the kinds.
KINDS: dict[str, FitnessKind] = {
    k.name: k for k in (pll.KIND, causal.KIND, weighted_sum.KIND, nsga2.KIND, typical.KIND)
}
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def help_text() -> str:
    """--fitness's help: each kind with its summary."""
    listed = [f"{k.name} ({k.summary})" for k in KINDS.values()]
    return f"What is maximised: {', '.join(listed[:-1])} or {listed[-1]}."


def build_objective(cfg: FitnessConfig, names: Names) -> Objective:
    """The objective `cfg` asks for, over the run's scorers (``names``: role -> scorer name;
    roles the kind does not read are ignored), with the repetition penalty if one is set."""
    inner = KINDS[cfg.objective].combine(cfg, names)
    if cfg.rep_penalty > 0:
        return RepetitionPenalty(inner, cfg.rep_penalty, cfg.rep_n)
    return inner


__all__ = [
    "CAUSAL",
    "KINDS",
    "KIND_NAMES",
    "PLL",
    "ROLES",
    "TYPICAL",
    "FitnessKind",
    "Names",
    "build_objective",
    "help_text",
]

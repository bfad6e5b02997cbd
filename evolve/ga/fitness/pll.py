"""``pll``: the masked LM's pseudo-log-likelihood of the continuation (Salazar et al. 2020),
in the variant `FitnessConfig.variant` names (``word_l2r``, Kauf & Ivanova 2023, is the same
kind: the variant changes the scorer, not how its score becomes the fitness)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolve.ga.fitness.kind import PLL, FitnessKind, Names, normalise_of
from evolve.ga.objectives import LogLikelihood, Objective

if TYPE_CHECKING:
    from evolve.ga.config import FitnessConfig


def combine(cfg: FitnessConfig, names: Names) -> Objective:
    return LogLikelihood(names[PLL], normalise_of(cfg))


KIND = FitnessKind(
    name="pll",
    summary="MLM pseudo-log-likelihood, Salazar et al. 2020",
    reads=lambda cfg: (PLL,),
    combine=combine,
)

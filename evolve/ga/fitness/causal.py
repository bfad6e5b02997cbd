"""``causal``: the causal LM's log p(continuation | prompt)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolve.ga.fitness.kind import CAUSAL, FitnessKind, Names, normalise_of
from evolve.ga.objectives import LogLikelihood, Objective

if TYPE_CHECKING:
    from evolve.ga.config import FitnessConfig


def combine(cfg: FitnessConfig, names: Names) -> Objective:
    return LogLikelihood(names[CAUSAL], normalise_of(cfg))


KIND = FitnessKind(
    name="causal",
    summary="log p(continuation | prompt)",
    reads=lambda cfg: (CAUSAL,),
    combine=combine,
)

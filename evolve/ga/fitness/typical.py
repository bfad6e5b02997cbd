"""``typical``: local typicality (Meister et al. 2022) under the model `typical_model` names:
minus the distance of each token's surprisal from the entropy there (`scoring.typical`;
docs/degeneration.md). Under the MLM it reads the entropies of the PLL pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolve.ga.fitness.kind import TYPICAL, FitnessKind, Names, normalise_of
from evolve.ga.objectives import Objective, Typicality

if TYPE_CHECKING:
    from evolve.ga.config import FitnessConfig


def combine(cfg: FitnessConfig, names: Names) -> Objective:
    return Typicality(names[TYPICAL], normalise_of(cfg))


KIND = FitnessKind(
    name="typical",
    summary="local typicality, Meister et al. 2022, under `typical_model`; docs/degeneration.md",
    reads=lambda cfg: (TYPICAL,),
    combine=combine,
)

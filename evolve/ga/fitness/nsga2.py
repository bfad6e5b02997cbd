"""``nsga2``: Pareto selection (NSGA-II) over the PLL value, the causal value (and the
typicality value when ``typical_weight`` > 0) and the population's diversity, which the loop
sets (`evolve.ga.pareto`). The weights only make the scalar that reports show."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolve.ga.fitness.kind import FitnessKind, Names, normalise_of, weighted_reads, weighted_terms
from evolve.ga.objectives import Objective, Pareto

if TYPE_CHECKING:
    from evolve.ga.config import FitnessConfig


def combine(cfg: FitnessConfig, names: Names) -> Objective:
    return Pareto(weighted_terms(cfg, names), normalise_of(cfg))


KIND = FitnessKind(
    name="nsga2",
    summary="Pareto over pll, causal, diversity and, with --typical-weight, typicality",
    reads=weighted_reads,
    combine=combine,
    pareto=True,
)

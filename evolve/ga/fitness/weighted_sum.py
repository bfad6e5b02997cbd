"""``sum``: ``pll_weight * pll + causal_weight * causal`` (+ ``typical_weight * typical``),
each value normalised alike (per token by default, so the models weigh ~1:1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolve.ga.fitness.kind import FitnessKind, Names, normalise_of, weighted_reads, weighted_terms
from evolve.ga.objectives import Objective, WeightedSum

if TYPE_CHECKING:
    from evolve.ga.config import FitnessConfig


def combine(cfg: FitnessConfig, names: Names) -> Objective:
    return WeightedSum(weighted_terms(cfg, names), normalise_of(cfg))


def problem(cfg: FitnessConfig) -> str | None:
    if cfg.pll_weight + cfg.causal_weight + cfg.typical_weight > 0:
        return None
    return "fitness sum needs a positive pll_weight or causal_weight (or typical_weight)"


KIND = FitnessKind(
    name="sum",
    summary="weighted",
    reads=weighted_reads,
    combine=combine,
    problem=problem,
)

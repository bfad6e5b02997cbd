"""Multi-objective selection (``--fitness nsga2``): DEAP's NSGA-II over PLL, causal and diversity.

Three objectives, all maximised (fitness weights (1, 1, 1)), four with ``--typical-weight``
above 0 (typicality before diversity, weights (1, 1, 1, 1)):

1. the PLL value of the continuation under the masked LM;
2. its causal-LM value, log p(continuation | prompt);
3. (with ``--typical-weight`` > 0) its local typicality;
4. its diversity, always the last value: the mean token-level Jaccard distance to the rest of the population (the
   other members it is selected among), ``1 - |A & B| / |A | B|`` over the sets of token ids.
   A clone scores 0 against its twin, so copies of one good text stop crowding the front.

The two model values come from `evolve.ga.evaluate.Evaluator` (cached per text); diversity
depends on the company, so the loop recomputes it for every member of the pool each time it
selects (`set_diversity`).

The loop is NSGA-II's (Deb et al. 2002) on DEAP's tools: parents by binary tournament on
(Pareto rank, crowding distance) of the current population (`crowded_tournament`), then cross
and mutate as in the simple loop, then the survivors are ``tools.selNSGA2`` of parents +
offspring. Ranks and crowding of the current population are recomputed from its fitness
values each generation (`rank_and_crowding`), so a resumed run, whose population comes back
from the store with the same values, selects the same parents.

The individuals get `ParetoFitness` (three weights) or `ParetoTypicalFitness` (four), defined
here rather than with the single-objective `Fitness` in `evolve.ga.individual` (no
`deap.creator` globals either way). DEAP weighs ``values`` by zipping them with the class's
``weights``, so a fitness class with fewer weights than values would drop the rest silently.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from deap import base, tools

from evolve.ga.individual import Individual

# The objectives' names by their count: diversity is always the last (`set_diversity`).
OBJECTIVES: dict[int, tuple[str, ...]] = {
    3: ("pll", "causal", "diversity"),
    4: ("pll", "causal", "typical", "diversity"),
}


class ParetoFitness(base.Fitness):
    """(PLL value, causal value, diversity), each maximised."""

    weights = (1.0, 1.0, 1.0)


class ParetoTypicalFitness(base.Fitness):
    """(PLL value, causal value, typicality, diversity), each maximised."""

    weights = (1.0, 1.0, 1.0, 1.0)


# by the objective's value count
FITNESS_OF: dict[int, type[base.Fitness]] = {3: ParetoFitness, 4: ParetoTypicalFitness}


class ParetoIndividual(Individual):
    """An `Individual` whose fitness has the NSGA-II objectives (``objectives`` of them)."""

    def __init__(self, ids: object = (), objectives: int = 3) -> None:
        super().__init__(ids)
        self.fitness = FITNESS_OF[objectives]()


def jaccard_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """1 - |A & B| / |A | B| of the two token-id sets (0.0 for two empty ones)."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return 1.0 - len(sa & sb) / union if union else 0.0


def diversity(pop: Sequence[Sequence[int]]) -> list[float]:
    """Each member's mean Jaccard distance to the others (0.0 for a population of one)."""
    n = len(pop)
    if n < 2:
        return [0.0] * n
    sets = [set(ids) for ids in pop]
    out = [0.0] * n
    for i in range(n):
        for j in range(i + 1, n):
            union = len(sets[i] | sets[j])
            d = 1.0 - len(sets[i] & sets[j]) / union if union else 0.0
            out[i] += d
            out[j] += d
    return [d / (n - 1) for d in out]


def set_diversity(pop: Sequence[Individual]) -> None:
    """Replace the last objective of every (evaluated) member by its diversity in ``pop``."""
    for ind, d in zip(pop, diversity(pop), strict=True):
        ind.fitness.values = (*ind.fitness.values[:-1], d)


def pareto_ranks(pop: Sequence[Individual]) -> list[int]:
    """Non-dominated rank of each member (0 = the Pareto front), by DEAP's sortNondominated."""
    if not pop:
        return []
    fronts = tools.sortNondominated(list(pop), len(pop))
    rank_of = {id(ind): r for r, front in enumerate(fronts) for ind in front}
    return [rank_of[id(ind)] for ind in pop]


def rank_and_crowding(pop: Sequence[Individual]) -> tuple[list[int], list[float]]:
    """Pareto rank and crowding distance (within its front) of each member."""
    ranks = pareto_ranks(pop)
    fronts: dict[int, list[Individual]] = {}
    for ind, r in zip(pop, ranks, strict=True):
        fronts.setdefault(r, []).append(ind)
    for front in fronts.values():
        tools.emo.assignCrowdingDist(front)
    return ranks, [float(ind.fitness.crowding_dist) for ind in pop]


def crowded_tournament(pop: Sequence[Individual], k: int) -> list[Individual]:
    """k binary tournaments with NSGA-II's crowded comparison: lower rank wins, then the
    larger crowding distance, then the first drawn (global `random`)."""
    ranks, crowding = rank_and_crowding(pop)
    chosen = []
    for _ in range(k):
        i, j = random.randrange(len(pop)), random.randrange(len(pop))
        better_j = (ranks[j], -crowding[j]) < (ranks[i], -crowding[i])
        chosen.append(pop[j] if better_j else pop[i])
    return chosen


def select_survivors(pool: Sequence[Individual], k: int) -> list[Individual]:
    """NSGA-II survivor selection (``tools.selNSGA2``) of k members from the pool."""
    return tools.selNSGA2(list(pool), k)

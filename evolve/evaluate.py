"""Fitness evaluation: score only invalid individuals, in one batch, through a cache.

The PLL scorer packs every masked copy of every text into shared forward passes, so the
whole generation's new texts go to it in one call. Identical continuations (common after
crossover of relatives) are scored once, and a run-level cache keyed by token ids keeps
every text scored earlier in the run, so a text costs model time only the first time.

That cache is also what makes resuming exact: packed scores differ in the last float bits
(~1e-6) with the company a text keeps in its batch, so a resumed run must send the model
exactly the batches the uninterrupted run would have. `warm` refills the cache from the
run's stored individuals, which leaves the same texts to score as before the interruption.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from evolve.config import FitnessConfig
from evolve.individual import Individual
from scoring.models import LoadedModel
from scoring.pll import PLLScorer


@dataclass(frozen=True)
class EvalStats:
    n_invalid: int  # individuals that needed a fitness
    n_evaluated: int  # distinct texts actually sent through the model
    n_cache_hits: int  # distinct texts answered from the run's cache


@dataclass(frozen=True)
class Score:
    """What fitness needs of a PLL result; also what the store keeps per individual."""

    total: float
    n_tokens: int

    @property
    def mean(self) -> float:
        return self.total / self.n_tokens if self.n_tokens else float("-inf")


class Evaluator:
    """Turns continuations (MLM token ids) into fitness values under a FitnessConfig."""

    def __init__(self, cfg: FitnessConfig, mlm: LoadedModel, prompt_ids: Sequence[int]) -> None:
        self.cfg = cfg
        self.prompt_ids = tuple(prompt_ids)
        self.scorer = PLLScorer(mlm, variant=cfg.variant, dtype="bf16" if cfg.bf16 else "fp32")
        self.scorer_name = f"pll/{cfg.variant}/{mlm.name}"
        self.known: dict[tuple[int, ...], Score] = {}

    def fitness_of(self, score: Score) -> float:
        if self.cfg.normalise == "mean":
            return score.mean
        return score.total + self.cfg.length_bonus * score.n_tokens

    def warm(self, entries: Iterable[tuple[Sequence[int], float, int]]) -> None:
        """Prime the cache with (token ids, PLL total, n tokens) scored earlier in the run."""
        for ids, total, n_tokens in entries:
            self.known.setdefault(tuple(ids), Score(total, n_tokens))

    def evaluate(self, population: Sequence[Individual]) -> EvalStats:
        invalid = [ind for ind in population if not ind.fitness.valid]
        distinct = list(dict.fromkeys(tuple(ind) for ind in invalid))
        todo = [ids for ids in distinct if ids not in self.known]
        for ids, res in zip(todo, self.scorer.score_ids(todo, self.prompt_ids), strict=True):
            self.known[ids] = Score(res.total, res.n_tokens)
        for ind in invalid:
            score = self.known[tuple(ind)]
            ind.fitness.values = (self.fitness_of(score),)
            ind.scores = {"pll": score.total, "pll_mean": score.mean, "n_tokens": score.n_tokens}
        return EvalStats(len(invalid), len(todo), len(distinct) - len(todo))

"""Fitness evaluation: score only invalid individuals, in one batch per model, through a cache.

The fitness is made of up to two model scores of each continuation given the prompt:

- ``pll``: pseudo-log-likelihood under the masked LM (`scoring.pll.PLLScorer`);
- ``causal``: log p(continuation | prompt) under the causal LM (`scoring.causal.CausalScorer`).

Each score becomes a value the same way (`FitnessConfig.normalise`): per token (``mean``), or
the total plus ``length_bonus`` nats per token (``total``). The objective then is one value
(``pll``, ``causal``), their weighted sum (``sum``, both per token by default, so they are on
comparable scales), or for ``nsga2`` the three objectives (pll value, causal value, diversity)
of which the evaluator fills the first two; the loop sets diversity (`evolve.ga.pareto`), which
depends on the population rather than the text.

Individuals are ids of the run's representation (`evolve.ga.representation`). A scorer whose
tokenizer is the representation's scores those ids as they are, with the prompt ids as
context; the other reads the continuation through text. Either way the scores are cached by
the individual's ids, so a text costs model time only the first time in a run.

All texts a generation needs go to each model in one call: the PLL scorer packs every masked
copy of every text into shared forward passes, the causal scorer batches by length. Identical
continuations (common after crossover of relatives) are scored once.

The cache is also what makes resuming exact: batched scores differ in the last float bits
(~1e-6) with the company a text keeps in its batch, so a resumed run must send the models
exactly the batches the uninterrupted run would have. `warm` refills the caches (PLL and
causal alike) from the scores stored with the run's individuals, which leaves the same texts
to score as before the interruption.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evolve.ga.config import FitnessConfig
from evolve.ga.individual import Individual
from evolve.ga.representation import Representation
from scoring.causal import CausalScorer
from scoring.models import LoadedModel
from scoring.pll import PLLScorer

# Keys of each score in `Individual.scores` (and in the store): total, per token, tokens. PLL
# keeps the names it had before causal scores existed, so older runs still warm the cache.
SCORE_KEYS: dict[str, tuple[str, str, str]] = {
    "pll": ("pll", "pll_mean", "n_tokens"),
    "causal": ("causal", "causal_mean", "causal_n_tokens"),
}
OBJECTIVE_FLOOR = -1e9  # nsga2: a score of an empty text (-inf per token) as a finite number


@dataclass(frozen=True)
class EvalStats:
    n_invalid: int  # individuals that needed a fitness
    n_evaluated: int  # distinct texts sent through at least one model
    n_cache_hits: int  # distinct texts answered from the run's caches alone


@dataclass(frozen=True)
class Score:
    """What fitness needs of a model score; also what the store keeps per individual."""

    total: float
    n_tokens: int

    @property
    def mean(self) -> float:
        return self.total / self.n_tokens if self.n_tokens else float("-inf")


class _Channel:
    """One model score of continuations (ids of the representation), cached by those ids."""

    def __init__(
        self, kind: str, scorer: PLLScorer | CausalScorer, name: str, rep: Representation
    ) -> None:
        self.kind = kind  # "pll" or "causal"
        self.scorer = scorer
        self.name = name  # e.g. pll/original/tiny-bert, causal/smollm2-135m
        self.rep = rep
        self.native = scorer.lm is rep.lm  # same tokenizer: score the ids as they are
        tok = scorer.lm.tokenizer
        self.prefix = (
            rep.prompt_ids
            if self.native
            else tuple(int(i) for i in tok.encode(rep.prompt, add_special_tokens=False))
        )
        self.known: dict[tuple[int, ...], Score] = {}

    def own_ids(self, ids: tuple[int, ...]) -> list[int]:
        """The continuation in the scorer's tokens (through text when they differ)."""
        if self.native:
            return list(ids)
        text = self.rep.text_of(ids)
        return [int(i) for i in self.scorer.lm.tokenizer.encode(text, add_special_tokens=False)]

    def score(self, todo: Sequence[tuple[int, ...]]) -> None:
        """Score the given ids in one scorer call and remember the results."""
        if not todo:
            return
        results = self.scorer.score_ids([self.own_ids(ids) for ids in todo], self.prefix)
        for ids, res in zip(todo, results, strict=True):
            self.known[ids] = Score(res.total, res.n_tokens)

    def record(self, score: Score) -> dict[str, Any]:
        total, mean, n = SCORE_KEYS[self.kind]
        return {
            total: score.total,
            # JSON has no infinities: the mean of an empty text is stored as null.
            mean: score.mean if math.isfinite(score.mean) else None,
            n: score.n_tokens,
        }

    def warm(self, ids: tuple[int, ...], scores: Mapping[str, Any]) -> None:
        total, _, n = SCORE_KEYS[self.kind]
        if scores.get(total) is not None and scores.get(n) is not None:
            self.known.setdefault(ids, Score(float(scores[total]), int(scores[n])))


class Evaluator:
    """Turns continuations (representation ids) into fitness values under a FitnessConfig.

    ``mlm`` / ``causal``: the loaded models, each needed only when the objective uses it.
    """

    def __init__(
        self,
        cfg: FitnessConfig,
        rep: Representation,
        mlm: LoadedModel | None = None,
        causal: LoadedModel | None = None,
    ) -> None:
        self.cfg = cfg
        self.rep = rep
        self.channels: dict[str, _Channel] = {}
        if cfg.uses_pll:
            if mlm is None:
                raise ValueError(f"fitness {cfg.objective} needs the masked LM")
            pll = PLLScorer(mlm, variant=cfg.variant, dtype="bf16" if cfg.bf16 else "fp32")
            self.channels["pll"] = _Channel("pll", pll, f"pll/{cfg.variant}/{mlm.name}", rep)
        if cfg.uses_causal:
            if causal is None:
                raise ValueError(f"fitness {cfg.objective} needs the causal LM")
            clm = CausalScorer(causal)
            self.channels["causal"] = _Channel("causal", clm, f"causal/{causal.name}", rep)

    # -- names and values -----------------------------------------------------------------

    @property
    def scorer_name(self) -> str:
        """What the fitness is, for the run record, e.g. ``causal/smollm2-135m/total``."""
        norm = self.cfg.normalise
        if self.cfg.normalise == "total" and self.cfg.length_bonus:
            norm = f"total{self.cfg.length_bonus:+g}/token"
        obj = self.cfg.objective
        if obj in ("pll", "causal"):
            return f"{self.channels[obj].name}/{norm}"
        p, c = self.channels["pll"].name, self.channels["causal"].name
        if obj == "sum":
            return f"sum({self.cfg.pll_weight:g}*{p} + {self.cfg.causal_weight:g}*{c})/{norm}"
        return f"nsga2({p}, {c}, diversity)/{norm}"

    def value(self, score: Score) -> float:
        """A model score as a fitness value: per token, or total plus the length prior."""
        if self.cfg.normalise == "mean":
            return score.mean
        return score.total + self.cfg.length_bonus * score.n_tokens

    def values_of(self, ids: tuple[int, ...]) -> tuple[float, ...]:
        """The fitness values of cached ids (nsga2: diversity 0.0, set later by the loop)."""
        obj = self.cfg.objective
        if obj in ("pll", "causal"):
            return (self.value(self.channels[obj].known[ids]),)
        p = self.value(self.channels["pll"].known[ids])
        c = self.value(self.channels["causal"].known[ids])
        if obj == "sum":
            return (self.cfg.pll_weight * p + self.cfg.causal_weight * c,)
        return (max(p, OBJECTIVE_FLOOR), max(c, OBJECTIVE_FLOOR), 0.0)

    def scalar(self, ind: Individual) -> float:
        """One number per individual for tables, statistics and `best`: the fitness, or for
        nsga2 the weighted sum of its two model objectives (selection itself is Pareto)."""
        values = ind.fitness.values
        if self.cfg.objective == "nsga2":
            return self.cfg.pll_weight * values[0] + self.cfg.causal_weight * values[1]
        return values[0]

    def energy(self, scores: Mapping[str, Any]) -> float:
        """Metropolis-Hastings energy: minus the (weighted) total log-likelihood."""
        obj = self.cfg.objective
        if obj == "pll":
            return -float(scores["pll"])
        if obj == "causal":
            return -float(scores["causal"])
        return -(
            self.cfg.pll_weight * float(scores["pll"])
            + self.cfg.causal_weight * float(scores["causal"])
        )

    # -- evaluation -----------------------------------------------------------------------

    def warm(self, entries: Iterable[tuple[Sequence[int], Mapping[str, Any]]]) -> None:
        """Prime the caches with (token ids, stored scores) of texts scored earlier in the run."""
        for ids, scores in entries:
            key = tuple(int(i) for i in ids)
            for channel in self.channels.values():
                channel.warm(key, scores)

    def evaluate(self, population: Sequence[Individual]) -> EvalStats:
        """Set fitness and scores of every invalid individual; one scorer call per model."""
        invalid = [ind for ind in population if not ind.fitness.valid]
        distinct = list(dict.fromkeys(tuple(ind) for ind in invalid))
        sent: set[tuple[int, ...]] = set()
        for channel in self.channels.values():
            todo = [ids for ids in distinct if ids not in channel.known]
            channel.score(todo)
            sent.update(todo)
        for ind in invalid:
            key = tuple(ind)
            scores: dict[str, Any] = {}
            for channel in self.channels.values():
                scores.update(channel.record(channel.known[key]))
            ind.fitness.values = self.values_of(key)
            ind.scores = scores
        return EvalStats(len(invalid), len(sent), len(distinct) - len(sent))

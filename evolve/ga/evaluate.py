"""Fitness evaluation: score only invalid individuals, in one batch per model, through caches.

The fitness is made of model scores of each continuation given the prompt (PLL under the
masked LM, `scoring.pll.PLLScorer`; log p(continuation | prompt) under the causal LM,
`scoring.causal.CausalScorer`), which an `Objective` (`evolve.ga.objectives`) turns into
fitness values. Scores are `scoring.results.TokenScores`, keyed by scorer name.

A text's score under a scorer is computed once per run: the evaluator keeps every score it
has computed or been given in its run cache, sends only the texts still unknown to the model
(all of a generation in one call per scorer; identical continuations once), and keeps the new
ones in `fresh` until the loop hands them, with their generation, to whoever records the run
(the store writes them in the generation's transaction: the one record of model scores).

This is also what keeps resuming exact: batched scores differ in the last float bits (~1e-6)
with the company a text keeps in its batch, so a resumed run must never rescore a text in
another batch. `warm` refills the cache with every score the run stored, which leaves the same
texts to score as before the interruption. (The store keeps the first score of a text under a
scorer: if another run in the same database scored one of this run's texts first, a resume
reads that score, equal within ~1e-6.)

Individuals are ids of the run's representation (`evolve.ga.representation`). A scorer
whose tokenizer is the representation's scores those ids as they are, with the prompt ids as
context; the other reads the continuation through text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evolve.ga.individual import Individual
from evolve.ga.objectives import Objective
from evolve.ga.representation import Representation
from scoring.base import Scorer
from scoring.results import TokenScores
from scoring.template import text_ids


@dataclass(frozen=True)
class NewScore:
    """A score computed in this generation: what the record of the run must keep."""

    scorer: str
    text: str
    score: TokenScores


@dataclass(frozen=True)
class EvalStats:
    n_invalid: int  # individuals that needed a fitness
    n_evaluated: int  # distinct texts sent through at least one model
    n_cache_hits: int  # distinct texts answered from the run's cache alone


class _Channel:
    """One scorer of the run with its cache of texts scored so far."""

    def __init__(self, scorer: Scorer, rep: Representation) -> None:
        self.scorer = scorer
        self.name = scorer.name
        self.rep = rep
        self.native = scorer.lm is rep.lm  # same tokenizer: score the ids as they are
        tok = scorer.lm.tokenizer
        self.prefix_ids = (
            rep.prompt_ids
            if self.native
            else tuple(text_ids(tok, rep.prompt))
        )
        self.known: dict[str, TokenScores] = {}

    def own_ids(self, ids: Sequence[int], text: str) -> list[int]:
        """The continuation in the scorer's tokens (through text when they differ)."""
        if self.native:
            return list(ids)
        return text_ids(self.scorer.lm.tokenizer, text)

    def score(self, todo: Mapping[str, Sequence[int]]) -> dict[str, TokenScores]:
        """Score the given texts (text -> representation ids) in one scorer call."""
        texts = list(todo)
        results = self.scorer.score_ids([self.own_ids(todo[t], t) for t in texts], self.prefix_ids)
        made = dict(zip(texts, results, strict=True))
        self.known.update(made)
        return made


class Evaluator:
    """Turns continuations (representation ids) into fitness values under an Objective."""

    def __init__(
        self,
        objective: Objective,
        rep: Representation,
        scorers: Sequence[Scorer],
    ) -> None:
        self.objective = objective
        self.rep = rep
        self.fresh: list[NewScore] = []  # computed since the last `take_fresh`
        self.channels = {s.name: _Channel(s, rep) for s in scorers}
        missing = set(objective.scorers) - set(self.channels)
        if missing:
            raise ValueError(f"objective {objective.label} needs scorers {sorted(missing)}")

    def scalar(self, ind: Individual) -> float:
        """One number per individual for tables, statistics and `best`."""
        return self.objective.scalar(ind.fitness.values)

    def energy(self, ind: Individual) -> float:
        """Metropolis-Hastings energy of an evaluated individual."""
        return self.objective.energy(ind.scores, self.rep.text_of(ind))

    def warm(self, stored: Mapping[str, Mapping[str, TokenScores]]) -> None:
        """Prime the cache with scores the run stored earlier ({text: {scorer: score}})."""
        for text, by_scorer in stored.items():
            for name, score in by_scorer.items():
                channel = self.channels.get(name)
                if channel is not None:
                    channel.known.setdefault(text, score)

    def take_fresh(self) -> list[NewScore]:
        """The scores computed since the last call (and forget them)."""
        fresh, self.fresh = self.fresh, []
        return fresh

    def evaluate(self, population: Sequence[Individual]) -> EvalStats:
        """Set fitness and scores of every invalid individual; one scorer call per model."""
        invalid = [ind for ind in population if not ind.fitness.valid]
        texts = [self.rep.text_of(ind) for ind in invalid]
        ids_of: dict[str, Sequence[int]] = {}
        for text, ind in zip(texts, invalid, strict=True):
            ids_of.setdefault(text, ind)
        sent: set[str] = set()
        for channel in self.channels.values():
            unknown = [t for t in ids_of if t not in channel.known]
            if unknown:
                made = channel.score({t: ids_of[t] for t in unknown})
                self.fresh.extend(NewScore(channel.name, t, s) for t, s in made.items())
                sent.update(unknown)
        for text, ind in zip(texts, invalid, strict=True):
            ind.scores = {name: ch.known[text] for name, ch in self.channels.items()}
            ind.fitness.values = self.objective.values(ind.scores, text)
        return EvalStats(len(invalid), len(sent), len(ids_of) - len(sent))

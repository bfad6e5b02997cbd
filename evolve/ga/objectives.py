"""Objectives: what the GA maximises, as small strategy objects over model scores.

An individual's scores are `scoring.TokenScores` keyed by scorer name (e.g.
``pll/original/tiny-bert``, ``causal/smollm2-135m``). An objective turns them into:

- ``values``: the DEAP fitness values (one, or several for Pareto selection);
- ``scalar``: one number per individual for tables, statistics and `best`;
- ``energy``: the Metropolis-Hastings energy, minus the (weighted) total log-likelihood.

Each model score becomes a value the same way (`Normalise`): per token (``mean``), or the
total plus ``length_bonus`` nats per token (``total``). Which objective a run uses, over
which scorers, is its fitness kind's choice (`evolve.ga.fitness`); a kind that combines
scores in a new way adds its class here.

Against degeneration (docs/degeneration.md): `Typicality` is the locally typical objective
(Meister et al. 2022; `scoring.typical`), alone or as one more weighted term of `WeightedSum`
and `Pareto`; `RepetitionPenalty` wraps any objective and subtracts ``weight * rep-n`` of
the continuation's text (`scoring.metrics.rep_n`) from every value. Objectives get the text
beside the scores for that (``values(scores, text)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from scoring.metrics import rep_n
from scoring.results import TokenScores

if TYPE_CHECKING:  # the config imports the fitness kinds, which import this module
    from evolve.ga.config import FitnessConfig

OBJECTIVE_FLOOR = -1e9  # Pareto values: an empty text's -inf per token as a finite number

Scores = Mapping[str, TokenScores]


@dataclass(frozen=True)
class Normalise:
    """How a model score becomes a value: per token, or total plus a length prior."""

    mode: str = "mean"
    length_bonus: float = 0.0

    def value(self, s: TokenScores) -> float:
        if self.mode == "mean":
            return s.mean
        return s.total + self.length_bonus * s.n_tokens

    @property
    def label(self) -> str:
        if self.mode == "total" and self.length_bonus:
            return f"total{self.length_bonus:+g}/token"
        return self.mode


class Objective(Protocol):
    @property
    def scorers(self) -> tuple[str, ...]: ...  # scorer names whose scores it reads

    @property
    def n_values(self) -> int: ...  # length of the DEAP fitness tuple

    @property
    def label(self) -> str: ...  # what the fitness is, stored as the run's `fitness`

    def values(self, scores: Scores, text: str = "") -> tuple[float, ...]: ...

    def scalar(self, values: Sequence[float]) -> float: ...

    def energy(self, scores: Scores, text: str = "") -> float: ...


@dataclass(frozen=True)
class LogLikelihood:
    """One model's score: PLL under the MLM, or log p(continuation | prompt) causally."""

    scorer: str
    norm: Normalise
    n_values: int = 1

    @property
    def scorers(self) -> tuple[str, ...]:
        return (self.scorer,)

    @property
    def label(self) -> str:
        return f"{self.scorer}/{self.norm.label}"

    def values(self, scores: Scores, text: str = "") -> tuple[float, ...]:
        return (self.norm.value(scores[self.scorer]),)

    def scalar(self, values: Sequence[float]) -> float:
        return values[0]

    def energy(self, scores: Scores, text: str = "") -> float:
        return -scores[self.scorer].total


@dataclass(frozen=True)
class WeightedSum:
    """``sum(w_i * value_i)`` over several scorers (both per token by default: ~1:1)."""

    terms: tuple[tuple[float, str], ...]
    norm: Normalise
    n_values: int = 1

    @property
    def scorers(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.terms)

    @property
    def label(self) -> str:
        inner = " + ".join(f"{w:g}*{name}" for w, name in self.terms)
        return f"sum({inner})/{self.norm.label}"

    def values(self, scores: Scores, text: str = "") -> tuple[float, ...]:
        return (sum(w * self.norm.value(scores[name]) for w, name in self.terms),)

    def scalar(self, values: Sequence[float]) -> float:
        return values[0]

    def energy(self, scores: Scores, text: str = "") -> float:
        return -sum(w * scores[name].total for w, name in self.terms)


@dataclass(frozen=True)
class Pareto:
    """NSGA-II over each scorer's value plus population diversity (set by the loop, see
    `evolve.ga.pareto`); the scalar for reports is the weighted sum of the model values."""

    terms: tuple[tuple[float, str], ...]
    norm: Normalise

    @property
    def n_values(self) -> int:
        return len(self.terms) + 1

    @property
    def scorers(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.terms)

    @property
    def label(self) -> str:
        return f"nsga2({', '.join(self.scorers)}, diversity)/{self.norm.label}"

    def values(self, scores: Scores, text: str = "") -> tuple[float, ...]:
        model = (max(self.norm.value(scores[name]), OBJECTIVE_FLOOR) for _, name in self.terms)
        return (*model, 0.0)

    def scalar(self, values: Sequence[float]) -> float:
        return sum(w * v for (w, _), v in zip(self.terms, values, strict=False))

    def energy(self, scores: Scores, text: str = "") -> float:
        return -sum(w * scores[name].total for w, name in self.terms)


@dataclass(frozen=True)
class Typicality(LogLikelihood):
    """Local typicality: the mean (or total) of ``-|surprisal - entropy|`` per token under
    one model (`scoring.typical`); 0 is perfectly typical. Its MH energy is minus the total,
    a pseudo-energy like the others."""


@dataclass(frozen=True)
class RepetitionPenalty:
    """Any objective minus ``weight * rep_n(text, n)`` on each model value (rep-n: the share
    of the continuation's word n-grams that repeat an earlier one, 0..1). The MH energy adds
    the penalty per token of the first scorer's count, so it scales like a total."""

    inner: Objective
    weight: float
    n: int = 2

    @property
    def scorers(self) -> tuple[str, ...]:
        return self.inner.scorers

    @property
    def n_values(self) -> int:
        return self.inner.n_values

    @property
    def label(self) -> str:
        return f"{self.inner.label}-{self.weight:g}*rep{self.n}"

    def penalty(self, text: str) -> float:
        return self.weight * rep_n(text, self.n)

    def values(self, scores: Scores, text: str = "") -> tuple[float, ...]:
        vals = self.inner.values(scores, text)
        pen = self.penalty(text)
        if isinstance(self.inner, Pareto):  # the last value is diversity, set by the loop
            return (*(v - pen for v in vals[:-1]), vals[-1])
        return tuple(v - pen for v in vals)

    def scalar(self, values: Sequence[float]) -> float:
        return self.inner.scalar(values)

    def energy(self, scores: Scores, text: str = "") -> float:
        first = scores[self.scorers[0]]
        return self.inner.energy(scores, text) + self.penalty(text) * first.n_tokens


def build_objective(
    cfg: FitnessConfig, pll: str | None, causal: str | None, typical: str | None = None
) -> Objective:
    """The objective a FitnessConfig asks for, given the scorer names of the run's models
    by position (``typical``: the typicality scorer's, when the fitness uses one); the
    engine passes them by role to `evolve.ga.fitness.build_objective`, which this calls."""
    from evolve.ga import fitness  # the kinds import this module

    roles = {fitness.PLL: pll, fitness.CAUSAL: causal, fitness.TYPICAL: typical}
    return fitness.build_objective(cfg, {k: v for k, v in roles.items() if v is not None})

"""The result type every scorer returns: a total log-probability and its per-token parts.

PLL (scoring.pll) and causal log-probability (scoring.causal) report the same shape, so
fitness, comparison and storage code handle either without caring which model scored.
A scorer that has the model's whole distribution at each scored token anyway (PLL does) can
attach its entropies (``entropies``, nats), from which `scoring.typical` computes typicality
without another forward pass; they are not part of a score's identity (equality) nor stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenScores:
    """The sum and the per-token log-probabilities (nats) of one scored continuation."""

    total: float
    token_logprobs: tuple[float, ...]
    n_tokens: int
    # entropy (nats) of the model's distribution at each scored token, when the scorer had it
    entropies: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_logprobs(cls, logprobs: Iterable[float]) -> TokenScores:
        """The scores of a continuation from its per-token log-probabilities (exact sum)."""
        lps = tuple(float(x) for x in logprobs)
        return cls(float(math.fsum(lps)), lps, len(lps))

    @property
    def mean(self) -> float:
        """Mean log-probability per token; ``-inf`` for an empty continuation (never best)."""
        return self.total / self.n_tokens if self.n_tokens else -math.inf


EMPTY = TokenScores(0.0, (), 0)  # the score of an empty continuation: nothing to predict

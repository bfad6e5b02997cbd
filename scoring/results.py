"""The result type every scorer returns: a total log-probability and its per-token parts.

PLL (scoring.pll) and causal log-probability (scoring.causal) report the same shape, so
fitness, comparison and storage code handle either without caring which model scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenScores:
    """The sum and the per-token log-probabilities (nats) of one scored continuation."""

    total: float
    token_logprobs: tuple[float, ...]
    n_tokens: int

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

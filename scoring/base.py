"""TEMPORARY (replaced at merge by the scoring redesign): the Scorer protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from scoring.results import TokenScores


class Scorer(Protocol):
    name: str
    lm: Any

    def score_ids(
        self, continuations: Sequence[Sequence[int]], prefix_ids: Sequence[int] = ()
    ) -> list[TokenScores]: ...

    def score(self, texts: Sequence[str], prefix: str = "") -> list[TokenScores]: ...

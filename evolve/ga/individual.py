"""Fitness and individual classes for DEAP, defined explicitly (no `deap.creator` globals).

An individual is the continuation after the fixed prompt, held as a list of token ids of
the run's representation tokenizer (the proposer's model; the MLM's by default). The prompt
is never part of it, so no operator can touch it. Beside the ids it carries its lineage:
which operator made it, from which stored parents, and which token span was rewritten.
The store writes that record when the individual is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deap import base

from scoring.results import TokenScores


class Fitness(base.Fitness):
    """Single objective, maximised (PLL or log-probability: higher is more plausible)."""

    weights = (1.0,)


@dataclass
class Origin:
    """How an individual came to be; several edits in one generation are merged."""

    # init | seed | copy | elite | mut_span | mut_insert | mut_delete | cx_one_point |
    # cx_two_point | mh_reject; edits of one generation joined with '+' (cx_one_point+mut_span)
    op: str = "init"
    parents: tuple[int, ...] = ()  # store ids of the parents (empty for the initial population)
    span: tuple[int, int] | None = None  # [start, end) of the rewritten tokens, in the child
    detail: dict[str, Any] = field(default_factory=dict)  # proposer, MH acceptance, cut points


class Individual(list):
    """Token ids of the continuation, plus fitness, lineage and per-scorer scores."""

    def __init__(self, ids: Any = ()) -> None:
        super().__init__(ids)
        self.fitness = Fitness()
        self.origin = Origin()
        # The id a recorder gave it (the store's row id), or the engine's own counter when
        # nothing records the run; None until its generation is complete.
        self.db_id: int | None = None
        self.scores: dict[str, TokenScores] = {}  # by scorer name, e.g. "pll/original/tiny-bert"


def record_edit(
    ind: Individual,
    op: str,
    parents: tuple[int, ...],
    span: tuple[int, int] | None,
    **detail: Any,
) -> None:
    """Note an edit on `ind` and invalidate its fitness (DEAP's operator contract).

    If `ind` was already edited in this generation (crossover then mutation), the ops are
    joined with '+' and the first parents kept, so the stored lineage shows both edits.
    """
    if not ind.fitness.valid and ind.origin.op not in ("init", "seed"):
        ind.origin.op = f"{ind.origin.op}+{op}"
        ind.origin.span = span
        ind.origin.detail.update(detail)
    else:
        ind.origin = Origin(op=op, parents=parents, span=span, detail=dict(detail))
    del ind.fitness.values
    ind.scores = {}

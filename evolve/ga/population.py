"""Population helpers shared by every loop: clones that remember their parent, duplicate
suppression, survivors that prefer distinct texts, and generation 0.

Generation 0 comes from one of three places: user-given seed texts, the proposer's own fills
of an all-placeholder continuation, or texts made elsewhere and handed in by an injected
`StartTexts` callable (the causal LM's beam/greedy/sampled decoding of the prompt with
`scoring.decoding`, wired and stored in `evolve.api`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from evolve.ga.individual import Individual, Origin
from evolve.ga.operators import OperatorContext, mutate_batch
from evolve.ga.representation import Representation
from scoring.errors import UserError

DEDUPE_TRIES = 3  # re-mutations of a duplicate before we accept it as it is


@dataclass(frozen=True)
class StartText:
    """One starting text made outside the GA, with what to record about where it came from."""

    text: str
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"baseline_id": 7}


# (method, how many) -> starting texts; method is "beam", "greedy" or "sample".
StartTexts = Callable[[str, int], Sequence[StartText]]

Factory = Callable[[Sequence[int]], Individual]


def copy_of(ind: Individual, op: str, make: Factory) -> Individual:
    """A clone that records `ind` as its single parent; kept as is unless varied."""
    child = make(ind)
    if ind.fitness.valid:
        child.fitness.values = ind.fitness.values
    child.scores = dict(ind.scores)
    child.db_id = ind.db_id
    child.origin = Origin(op=op, parents=(ind.db_id,) if ind.db_id is not None else ())
    return child


def dedupe(pop: list[Individual], ctx: OperatorContext, others: Sequence[Individual] = ()) -> None:
    """Re-mutate varied children that repeat another member (duplicate suppression).

    Only unevaluated children are re-mutated: an unchanged copy or elite may repeat."""
    for _ in range(DEDUPE_TRIES):
        seen = {tuple(ind) for ind in others}
        dups = []
        for ind in pop:
            key = tuple(ind)
            if key in seen and not ind.fitness.valid:
                dups.append(ind)
            seen.add(key)
        if not dups:
            return
        mutate_batch(dups, ctx=ctx)


def best_distinct(pop: Sequence[Individual], k: int) -> list[Individual]:
    """The k fittest, preferring distinct texts so survivors do not collapse to clones."""
    ranked = sorted(pop, key=lambda ind: ind.fitness.values[0], reverse=True)
    seen: set[tuple[int, ...]] = set()
    distinct: list[Individual] = []
    repeats: list[Individual] = []
    for ind in ranked:
        (repeats if tuple(ind) in seen else distinct).append(ind)
        seen.add(tuple(ind))
    return (distinct + repeats)[:k]


def from_seed_texts(
    texts: Sequence[str], n: int, rep: Representation, min_len: int, max_len: int, make: Factory
) -> list[Individual]:
    """Generation 0 from user-given texts, repeated to fill the population."""
    seeds = []
    for text in texts:
        ids = rep.encode(text)[:max_len]
        if len(ids) < min_len:
            raise UserError(
                f"seed text {text[:40]!r} has {len(ids)} tokens, fewer than min_len {min_len}"
            )
        seeds.append(ids)
    pop = [make(seeds[i % len(seeds)]) for i in range(n)]
    for ind in pop:
        ind.origin = Origin(op="seed")
    return pop


def from_proposer(n: int, length: int, ctx: OperatorContext, make: Factory) -> list[Individual]:
    """Generation 0 as the proposer's own fills of an all-placeholder continuation."""
    assert ctx.mask_id is not None
    pop = [make([ctx.mask_id] * length) for _ in range(n)]
    filled = ctx.proposer.fill([ctx.request(list(ind), range(length)) for ind in pop])
    for ind, ids in zip(pop, filled, strict=True):
        ind[:] = ctx.continuation_of(ids)
        ind.origin = Origin(op="init", detail={"proposer": ctx.proposer.name})
    return pop


def from_texts(
    method: str,
    made: Sequence[StartText],
    n: int,
    rep: Representation,
    ctx: OperatorContext,
    make: Factory,
) -> list[Individual]:
    """Generation 0 from texts made elsewhere (cycled to n): each is encoded into the
    representation, cut at max_len, and one shorter than min_len extended by the proposer."""
    if not made:
        raise UserError(f"init {method!r} produced no starting text")
    pop: list[Individual] = []
    short: list[tuple[Individual, int]] = []
    for i in range(n):
        start = made[i % len(made)]
        ids = rep.encode(start.text)[: ctx.max_len]
        ind = make(ids)
        ind.origin = Origin(op="init", detail={"init": method, **start.detail})
        if len(ids) < ctx.min_len:
            short.append((ind, len(ids)))
        pop.append(ind)
    if short:
        assert ctx.mask_id is not None
        filled = ctx.proposer.fill(
            [
                ctx.request([*ind, *[ctx.mask_id] * (ctx.min_len - k)], range(k, ctx.min_len))
                for ind, k in short
            ]
        )
        for (ind, k), ids in zip(short, filled, strict=True):
            ind[:] = ctx.continuation_of(ids)
            ind.origin.detail.update(extended=ctx.min_len - k, proposer=ctx.proposer.name)
    if ctx.no_repeat_ngram:  # decodings repeat themselves: refill under the guard
        broken = [(ind, ctx.repeat_breaks(ind)) for ind in pop]
        broken = [(ind, at) for ind, at in broken if at]
        if broken:
            filled = ctx.proposer.fill([ctx.request(list(ind), at) for ind, at in broken])
            for (ind, at), ids in zip(broken, filled, strict=True):
                ind[:] = ctx.continuation_of(ids)
                ind.origin.detail.update(unrepeated=at, proposer=ctx.proposer.name)
    return pop

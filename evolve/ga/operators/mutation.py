"""Span mutation: mask 1..max_span continuation tokens and refill them (with indels)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evolve.ga.individual import Individual, record_edit
from evolve.ga.operators.context import (
    MUT_OPS,
    MutOp,
    OperatorContext,
)


@dataclass(frozen=True)
class MutationPlan:
    """One chosen edit: replace ``removed`` tokens at ``start`` with ``inserted`` new ones."""

    op: MutOp
    start: int
    removed: int
    inserted: int
    log_select_forward: float  # log P(choose this edit | parent)
    log_select_reverse: float  # log P(choose the undoing edit | child)


def _allowed(op: MutOp, n: int, ctx: OperatorContext) -> bool:
    if op == "mut_span":
        return n >= 1
    if op == "mut_insert":
        return n + 1 <= ctx.max_len
    return n >= 1 and n - 1 >= ctx.min_len


def _variant_weights(n: int, ctx: OperatorContext) -> dict[MutOp, float]:
    base: dict[MutOp, float] = {
        "mut_span": 1.0 - ctx.indel_prob,
        "mut_insert": ctx.indel_prob / 2,
        "mut_delete": ctx.indel_prob / 2,
    }
    return {op: (w if _allowed(op, n, ctx) else 0.0) for op, w in base.items()}


def _removed_range(op: MutOp, n: int, ctx: OperatorContext) -> tuple[int, int]:
    """Inclusive range of span lengths (tokens removed) an edit of kind ``op`` draws from.

    An insertion removes 0..max_span-1 tokens and puts back one more; a deletion removes
    1..max_span and puts back one fewer. So insertion (k) and deletion (k+1) undo each other.
    """
    if op == "mut_insert":
        return 0, min(ctx.max_span - 1, n)
    return 1, min(ctx.max_span, n)


def _inserted(op: MutOp, removed: int) -> int:
    return removed + {"mut_span": 0, "mut_insert": 1, "mut_delete": -1}[op]


def _log_select(op: MutOp, n: int, removed: int, ctx: OperatorContext) -> float:
    """log P(the GA's random kernel picks this variant, span length and start | length n)."""
    weights = _variant_weights(n, ctx)
    total = sum(weights.values())
    lo, hi = _removed_range(op, n, ctx)
    if weights[op] <= 0 or total <= 0 or not lo <= removed <= hi:
        return -math.inf
    return math.log(weights[op] / total) - math.log(hi - lo + 1) - math.log(n - removed + 1)


_REVERSE: dict[MutOp, MutOp] = {
    "mut_span": "mut_span",
    "mut_insert": "mut_delete",
    "mut_delete": "mut_insert",
}


def plan_mutation(n: int, ctx: OperatorContext, op: MutOp | None = None) -> MutationPlan | None:
    """Draw an edit for a continuation of length ``n`` (global `random`).

    ``op`` forces a variant; one the length bounds forbid falls back to ``mut_span``.
    None when no edit is possible (an empty continuation with no room to insert).
    """
    if op is not None:
        if op not in MUT_OPS:
            raise ValueError(f"unknown mutation {op!r}; choose from {', '.join(MUT_OPS)}")
        chosen: MutOp | None = op if _allowed(op, n, ctx) else None
        if chosen is None and _allowed("mut_span", n, ctx):
            chosen = "mut_span"
    else:
        weights = _variant_weights(n, ctx)
        total = sum(weights.values())
        chosen = None
        if total > 0:
            r = random.random() * total
            for name, w in weights.items():
                if w > 0:
                    chosen = name
                    if r < w:
                        break
                    r -= w
    if chosen is None:
        return None
    lo, hi = _removed_range(chosen, n, ctx)
    removed = random.randint(lo, hi)
    start = random.randint(0, n - removed)
    inserted = _inserted(chosen, removed)
    return MutationPlan(
        op=chosen,
        start=start,
        removed=removed,
        inserted=inserted,
        log_select_forward=_log_select(chosen, n, removed, ctx),
        log_select_reverse=_log_select(_REVERSE[chosen], n - removed + inserted, inserted, ctx),
    )


def _json_float(x: float) -> float | None:
    """Lineage detail is stored as JSON, which has no infinities: -inf becomes None."""
    return float(x) if math.isfinite(x) else None


def mutate_batch(
    inds: Sequence[Individual], *, ctx: OperatorContext, op: MutOp | None = None
) -> list[Individual]:
    """Mutate every individual in place with one proposer call; returns them as a list.

    Each gets a random edit (`plan_mutation`; ``op`` forces a variant), its span masked and
    refilled, its fitness invalidated and its origin recorded: op, parents ``(db_id,)``,
    span ``[start, start + inserted)`` in the child, and detail (proposer, tokens removed,
    and with ``ctx.with_logq`` the MH log-probabilities).
    """
    inds = list(inds)
    todo: list[tuple[Individual, MutationPlan]] = []
    for ind in inds:
        plan = plan_mutation(len(ind), ctx, op)
        if plan is not None:
            todo.append((ind, plan))
    if not todo:
        return inds
    assert ctx.mask_id is not None
    requests = []
    for ind, p in todo:
        cont = [*ind[: p.start], *([ctx.mask_id] * p.inserted), *ind[p.start + p.removed :]]
        # a same-length refill could give the parent back: ask for a change where possible
        avoid = ind[p.start : p.start + p.removed] if p.inserted == p.removed else None
        requests.append(ctx.request(cont, range(p.start, p.start + p.inserted), avoid))
    log_fwd = log_rev = [0.0] * len(todo)
    if ctx.with_logq:
        # The undoing edit masks the same context with `removed` masks and must put the old
        # tokens back: score them under the proposal (before the individuals change).
        back = [ctx.request(list(ind), range(p.start, p.start + p.removed)) for ind, p in todo]
        old = [list(ind[p.start : p.start + p.removed]) for ind, p in todo]
        log_rev = ctx.proposer.logprob_of(back, old)
        filled, log_fwd = ctx.proposer.fill(requests, return_logq=True)
    else:
        filled = ctx.proposer.fill(requests)
    for k, ((ind, p), ids) in enumerate(zip(todo, filled, strict=True)):
        new = ctx.continuation_of(ids)
        if p.inserted == 0 and ctx.no_repeat_ngram and not ctx.repeats(new) <= ctx.repeats(ind):
            continue  # a pure deletion joined two n-grams into a repeat: the guard refuses it
        fresh = ind.fitness.valid or ind.origin.op in ("init", "seed")
        parents = (ind.db_id,) if ind.db_id is not None else ()
        ind[:] = new
        detail: dict[str, Any] = {"proposer": ctx.proposer.name, "removed": p.removed}
        if ctx.with_logq and fresh:
            detail["log_q_forward"] = _json_float(p.log_select_forward + log_fwd[k])
            detail["log_q_reverse"] = _json_float(p.log_select_reverse + log_rev[k])
        record_edit(ind, p.op, parents, (p.start, p.start + p.inserted), **detail)
        if not fresh:
            # A second edit in one generation: the child is no longer one proposal away
            # from its parent, so MH must not judge it with the first edit's numbers.
            ind.origin.detail.pop("log_q_forward", None)
            ind.origin.detail.pop("log_q_reverse", None)
    return inds


def mut_span(ind: Individual, *, ctx: OperatorContext) -> tuple[Individual]:
    """Mutate one individual (a span refill, or an indel with ``ctx.indel_prob``)."""
    mutate_batch([ind], ctx=ctx)
    return (ind,)


def mut_insert(ind: Individual, *, ctx: OperatorContext) -> tuple[Individual]:
    """Refill a span with one token more (``mut_span`` when already at ``max_len``)."""
    mutate_batch([ind], ctx=ctx, op="mut_insert")
    return (ind,)


def mut_delete(ind: Individual, *, ctx: OperatorContext) -> tuple[Individual]:
    """Refill a span with one token fewer (``mut_span`` when already at ``min_len``)."""
    mutate_batch([ind], ctx=ctx, op="mut_delete")
    return (ind,)

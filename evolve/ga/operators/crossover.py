"""Word-boundary one/two-point crossover with seam repair.

Under the n-gram guard (``ctx.no_repeat_ngram``) a splice can join two halves that each are
free of repeats into a child that is not (``the cat sat`` + ``on the cat``). The seam repair
then also refills the last token of every n-gram that repeats an earlier one
(`OperatorContext.repeat_breaks`), in the same proposer call, under the guard; a child that
still holds a repeated n-gram after that (it cannot, short of a proposer that ignores its
policy) is rejected: it stays a copy of its parent.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evolve.ga.individual import Individual, record_edit
from evolve.ga.operators.context import (
    CX_POINTS,
    CxPoints,
    OperatorContext,
)

# -- crossover -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossoverPlan:
    """Two children and where they were cut (indices into the parents and the children)."""

    op: str  # cx_one_point | cx_two_point
    cuts_a: tuple[int, ...]  # cut indices in parent a
    cuts_b: tuple[int, ...]  # cut indices in parent b
    child_a: tuple[int, ...]
    child_b: tuple[int, ...]
    span_a: tuple[int, int]  # region of child_a that came from parent b
    span_b: tuple[int, int]  # region of child_b that came from parent a
    seams_a: tuple[int, ...]  # cut positions inside child_a (repaired)
    seams_b: tuple[int, ...]
    truncated: bool = False


def _interior_starts(ids: Sequence[int], ctx: OperatorContext) -> list[int]:
    starts = ctx.word_starts(ids)
    return [i for i in range(1, len(ids)) if starts[i]]


def _in_bounds(n: int, ctx: OperatorContext) -> bool:
    return ctx.min_len <= n <= ctx.max_len


def _one_point(
    a: Sequence[int], b: Sequence[int], ca: list[int], cb: list[int], ctx: OperatorContext
) -> CrossoverPlan | None:
    na, nb = len(a), len(b)
    pairs = [(i, j) for i in ca for j in cb]
    ok = [(i, j) for i, j in pairs if _in_bounds(i + nb - j, ctx) and _in_bounds(j + na - i, ctx)]
    truncated = False
    if not ok:  # only too-long children left: cut them back at a word boundary later
        ok = [(i, j) for i, j in pairs if min(i + nb - j, j + na - i) >= ctx.min_len]
        truncated = True
    if not ok:
        return None
    i, j = random.choice(ok)
    child_a, child_b = (*a[:i], *b[j:]), (*b[:j], *a[i:])
    plan = CrossoverPlan(
        op="cx_one_point",
        cuts_a=(i,),
        cuts_b=(j,),
        child_a=child_a,
        child_b=child_b,
        span_a=(i, len(child_a)),
        span_b=(j, len(child_b)),
        seams_a=(i,),
        seams_b=(j,),
    )
    return _truncate(plan, ctx) if truncated else plan


def _two_point(
    a: Sequence[int], b: Sequence[int], ca: list[int], cb: list[int], ctx: OperatorContext
) -> CrossoverPlan | None:
    na, nb = len(a), len(b)
    by_len: dict[int, list[tuple[int, int]]] = {}
    for x, j1 in enumerate(cb):
        for j2 in cb[x + 1 :]:
            by_len.setdefault(j2 - j1, []).append((j1, j2))
    options: list[tuple[tuple[int, int], list[int]]] = []
    for x, i1 in enumerate(ca):
        for i2 in ca[x + 1 :]:
            la = i2 - i1
            fits = [
                lb
                for lb in by_len
                if _in_bounds(na - la + lb, ctx) and _in_bounds(nb - lb + la, ctx)
            ]
            if fits:
                options.append(((i1, i2), fits))
    if not options:
        return None
    (i1, i2), fits = random.choice(options)
    j1, j2 = random.choice([pair for lb in fits for pair in by_len[lb]])
    child_a = (*a[:i1], *b[j1:j2], *a[i2:])
    child_b = (*b[:j1], *a[i1:i2], *b[j2:])
    end_a, end_b = i1 + (j2 - j1), j1 + (i2 - i1)
    return CrossoverPlan(
        op="cx_two_point",
        cuts_a=(i1, i2),
        cuts_b=(j1, j2),
        child_a=child_a,
        child_b=child_b,
        span_a=(i1, end_a),
        span_b=(j1, end_b),
        seams_a=(i1, end_a),
        seams_b=(j1, end_b),
    )


def _cut_back(
    child: tuple[int, ...], span: tuple[int, int], seams: tuple[int, ...], ctx: OperatorContext
) -> tuple[tuple[int, ...], tuple[int, int], tuple[int, ...]]:
    """Shorten a too-long child to at most max_len, at the last word start that allows."""
    if len(child) <= ctx.max_len:
        return child, span, seams
    starts = ctx.word_starts(child)
    ends = [w for w in range(ctx.min_len, ctx.max_len + 1) if starts[w]]
    w = ends[-1] if ends else ctx.max_len
    return child[:w], (min(span[0], w), min(span[1], w)), tuple(s for s in seams if s < w)


def _truncate(plan: CrossoverPlan, ctx: OperatorContext) -> CrossoverPlan:
    ca, sa, ka = _cut_back(plan.child_a, plan.span_a, plan.seams_a, ctx)
    cb, sb, kb = _cut_back(plan.child_b, plan.span_b, plan.seams_b, ctx)
    return CrossoverPlan(
        op=plan.op,
        cuts_a=plan.cuts_a,
        cuts_b=plan.cuts_b,
        child_a=ca,
        child_b=cb,
        span_a=sa,
        span_b=sb,
        seams_a=ka,
        seams_b=kb,
        truncated=True,
    )


def plan_crossover(
    a: Sequence[int], b: Sequence[int], ctx: OperatorContext, points: CxPoints | None = None
) -> CrossoverPlan | None:
    """Choose cut points (at word starts, inside both parents) and build the two children.

    ``points`` overrides ``ctx.cx_points``. Two-point falls back to one-point when no pair
    of segments keeps both children within [min_len, max_len]; one-point picks cut pairs
    that do, else truncates a too-long child at a word boundary. None when the parents
    cannot be crossed (a one-word parent, or only too-short children possible).
    """
    mode = points or ctx.cx_points
    if mode not in CX_POINTS:
        raise ValueError(f"unknown crossover points {mode!r}; choose from {', '.join(CX_POINTS)}")
    ca, cb = _interior_starts(a, ctx), _interior_starts(b, ctx)
    if not ca or not cb:
        return None
    two = mode == "two" or (mode == "random" and random.random() < 0.5)
    plan = _two_point(a, b, ca, cb, ctx) if two else None
    return plan or _one_point(a, b, ca, cb, ctx)


@dataclass
class _Child:
    ind: Individual
    ids: list[int]
    span: tuple[int, int]
    repair: list[int]  # child positions re-masked and refilled around the cuts
    parents: tuple[int, ...]
    plan: CrossoverPlan


def _repair_positions(n: int, seams: Sequence[int], width: int) -> list[int]:
    found = {p for c in seams for p in range(max(0, c - width), min(n, c + width))}
    return sorted(found)


def crossover_batch(
    pairs: Sequence[tuple[Individual, Individual]],
    *,
    ctx: OperatorContext,
    points: CxPoints | None = None,
) -> list[tuple[Individual, Individual]]:
    """Cross every pair in place, repairing all seams with one proposer call.

    Both children record op ``cx_one_point`` or ``cx_two_point``, parents ``(a.db_id,
    b.db_id)``, span = the region that came from the other parent, and detail with the cut
    points in each parent (``cut_a``, ``cut_b``) and the repaired child positions. Pairs
    that cannot be crossed are left unchanged (fitness kept).
    """
    pairs = list(pairs)
    planned: list[tuple[Individual, Individual, CrossoverPlan]] = []
    for a, b in pairs:
        if a is b:
            continue
        plan = plan_crossover(list(a), list(b), ctx, points)
        if plan is not None:
            planned.append((a, b, plan))
    if not planned:
        return pairs
    children: list[_Child] = []
    for a, b, plan in planned:
        parents = tuple(p for p in (a.db_id, b.db_id) if p is not None)  # before either changes
        for ind, ids, span, seams in (
            (a, plan.child_a, plan.span_a, plan.seams_a),
            (b, plan.child_b, plan.span_b, plan.seams_b),
        ):
            repair = _repair_positions(len(ids), seams, ctx.seam)
            if ctx.no_repeat_ngram:
                repair = sorted({*repair, *ctx.repeat_breaks(ids, repair)})
            children.append(_Child(ind, list(ids), span, repair, parents, plan))
    todo = [c for c in children if c.repair]
    if todo:
        filled = ctx.proposer.fill([ctx.request(c.ids, c.repair) for c in todo])
        for c, row in zip(todo, filled, strict=True):
            c.ids = ctx.continuation_of(row)
    for c in children:
        if ctx.no_repeat_ngram and ctx.repeats(c.ids):
            continue  # rejected: the individual stays its parent, fitness kept
        c.ind[:] = c.ids
        detail: dict[str, Any] = {
            "proposer": ctx.proposer.name,
            "cut_a": list(c.plan.cuts_a),
            "cut_b": list(c.plan.cuts_b),
            "repaired": c.repair,
        }
        if c.plan.truncated:
            detail["truncated"] = True
        record_edit(c.ind, c.plan.op, c.parents, c.span, **detail)
    return pairs


def cx_span(
    a: Individual, b: Individual, *, ctx: OperatorContext, points: CxPoints | None = None
) -> tuple[Individual, Individual]:
    """Word-boundary one- or two-point crossover of one pair with seam repair."""
    crossover_batch([(a, b)], ctx=ctx, points=points)
    return a, b

"""Variation operators on continuations: MLM span mutation and word-boundary crossover.

They follow DEAP's operator contract: individuals are modified in place, a tuple is
returned, and each changed individual gets its fitness invalidated and its lineage
(op, parents, rewritten span, detail) recorded through `evolve.individual.record_edit`.
Individuals hold only the continuation, so the prompt cannot be touched; it is passed to the
proposer as context through `OperatorContext`.

- Mutation masks a random span of 1..max_span continuation tokens and lets the proposer
  refill it (``mut_span``). With probability ``indel_prob`` the refill has one token more
  (``mut_insert``, the span may then be empty: a pure insertion) or one fewer (``mut_delete``,
  a one-token span then simply disappears), keeping the length within [min_len, max_len].
- Crossover cuts both parents where a word starts (never inside a word), exchanges the tails
  (one-point) or middle segments (two-point), and repairs each seam by re-masking ``seam``
  tokens on each side of every cut and refilling them.

The batched forms (`mutate_batch`, `crossover_batch`) make one proposer call for all their
individuals; the single forms wrap them. Positions and spans come from the global `random`
module (as in DEAP), token sampling from torch's global RNG, so one seed reproduces a run.

Metropolis-Hastings (Goyal et al. 2022): with ``with_logq`` each plain mutation also records
``log_q_forward`` and ``log_q_reverse`` in its lineage detail: the log-probability of the move
and of the move that would undo it, each the probability of choosing that edit (variant,
span length, start) plus the proposer's probability of the tokens it puts in. `mh_accept`
then decides with the energy -PLL.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from evolve.individual import Individual, record_edit
from evolve.proposers import FillRequest, InputTemplate, Proposer
from scoring.errors import UserError
from scoring.words import word_starts

CxPoints = Literal["one", "two", "random"]
CX_POINTS: tuple[CxPoints, ...] = ("one", "two", "random")
MutOp = Literal["mut_span", "mut_insert", "mut_delete"]
MUT_OPS: tuple[MutOp, ...] = ("mut_span", "mut_insert", "mut_delete")


@dataclass(frozen=True, kw_only=True)
class OperatorContext:
    """Everything the operators need besides the individuals; pass it as ``ctx=``."""

    proposer: Proposer
    prompt_ids: tuple[int, ...]  # fixed prompt (MLM ids, no specials): context, never edited
    tokenizer: Any  # the MLM's tokenizer (word boundaries, special-token template)
    max_span: int = 3  # longest span a mutation rewrites
    min_len: int = 1  # continuation length bounds kept by indels and crossover
    max_len: int = 64
    mask_id: int | None = None  # None: the tokenizer's mask token
    indel_prob: float = 0.0  # share of mutations that insert or delete one token
    cx_points: CxPoints = "random"  # one-point, two-point, or either with equal chance
    seam: int = 1  # tokens re-masked on each side of a crossover cut (0 = no repair)
    with_logq: bool = False  # record MH proposal log-probabilities on mutated children
    template: InputTemplate | None = None  # None: read off the tokenizer

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
        if self.mask_id is None:
            mask = getattr(self.tokenizer, "mask_token_id", None)
            if mask is None:
                raise UserError("the tokenizer has no mask token; span operators need one")
            object.__setattr__(self, "mask_id", int(mask))
        if self.template is None:
            object.__setattr__(self, "template", InputTemplate.from_tokenizer(self.tokenizer))
        if self.max_span < 1:
            raise UserError(f"max_span must be at least 1 (got {self.max_span})")
        if not 1 <= self.min_len <= self.max_len:
            raise UserError(f"need 1 <= min_len <= max_len (got {self.min_len}, {self.max_len})")
        if not 0.0 <= self.indel_prob <= 1.0:
            raise UserError(f"indel_prob must be within [0, 1] (got {self.indel_prob})")
        if self.cx_points not in CX_POINTS:
            raise UserError(
                f"unknown crossover points {self.cx_points!r}; choose from {', '.join(CX_POINTS)}"
            )
        if self.seam < 0:
            raise UserError(f"seam must be >= 0 (got {self.seam})")

    @property
    def offset(self) -> int:
        """Model input position of continuation token 0."""
        assert self.template is not None
        return self.template.offset(self.prompt_ids)

    def request(self, cont_ids: Sequence[int], positions: Iterable[int]) -> FillRequest:
        """A fill request for a continuation; ``positions`` are continuation indices.

        The positions are set to the mask id in the request's input.
        """
        assert self.template is not None and self.mask_id is not None
        ids = self.template.build(self.prompt_ids, cont_ids)
        off = self.offset
        pos = tuple(off + int(p) for p in positions)
        for p in pos:
            ids[p] = self.mask_id
        return FillRequest(tuple(ids), pos)

    def continuation_of(self, input_ids: Sequence[int]) -> list[int]:
        """The continuation ids out of a filled model input."""
        assert self.template is not None
        return self.template.continuation(input_ids, self.prompt_ids)

    def word_starts(self, cont_ids: Sequence[int]) -> list[bool]:
        """Whether each continuation token begins a word, judged with the prompt before it
        (so a continuation that goes on with the prompt's last word is not cut there)."""
        return word_starts(self.tokenizer, [*self.prompt_ids, *cont_ids])[len(self.prompt_ids) :]


class _Random(Protocol):
    def random(self) -> float: ...


# -- mutation ------------------------------------------------------------------------------


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
        requests.append(ctx.request(cont, range(p.start, p.start + p.inserted)))
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
        fresh = ind.fitness.valid or ind.origin.op in ("init", "seed")
        parents = (ind.db_id,) if ind.db_id is not None else ()
        ind[:] = ctx.continuation_of(ids)
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
            children.append(_Child(ind, list(ids), span, repair, parents, plan))
    todo = [c for c in children if c.repair]
    if todo:
        filled = ctx.proposer.fill([ctx.request(c.ids, c.repair) for c in todo])
        for c, ids in zip(todo, filled, strict=True):
            c.ids = ctx.continuation_of(ids)
    for c in children:
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


# -- Metropolis-Hastings -------------------------------------------------------------------


def mh_accept(
    old_energy: float,
    new_energy: float,
    log_q_forward: float | None,
    log_q_reverse: float | None,
    rng: _Random | None = None,
) -> bool:
    """Metropolis-Hastings acceptance of a proposed move (Goyal et al. 2022).

    Accept with probability ``min(1, exp(E_old - E_new) * q(old | new) / q(new | old))``,
    energies being e.g. ``-PLL``. ``None`` log-probabilities mean ``-inf`` (as stored in the
    lineage detail): a move that cannot be undone is rejected. A draw from ``rng`` (default:
    the global `random` module) is taken only when the ratio is below 1.
    """
    fwd = -math.inf if log_q_forward is None else float(log_q_forward)
    rev = -math.inf if log_q_reverse is None else float(log_q_reverse)
    if fwd == -math.inf or rev == -math.inf:
        return False  # undoable (rev) or impossible (fwd) moves never pass
    log_alpha = (float(old_energy) - float(new_energy)) + (rev - fwd)
    if math.isnan(log_alpha):
        return False
    if log_alpha >= 0:
        return True
    return (rng or random).random() < math.exp(log_alpha)

"""Span mutation, word-boundary crossover and MH acceptance (evolve.ga.operators)."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest

from evolve.ga.individual import Individual
from evolve.ga.operators import (
    OperatorContext,
    crossover_batch,
    cx_span,
    mh_accept,
    mut_delete,
    mut_insert,
    mut_span,
    mutate_batch,
    plan_mutation,
)
from evolve.ga.operators.context import MUT_OPS
from evolve.ga.operators.mutation import _log_select
from evolve.ga.proposers import FillRequest, MLMProposer
from evolve.ga.seeding import seed_everything
from scoring.errors import UserError
from scoring.models import LoadedModel, load_mlm, load_model

PROMPT = "Mozzarella is white. Cheddar is"
TEXTS = [
    " yellow and tastes sharp when it is old",
    " the capital of france is paris, a city on the seine",
    " a genetic algorithm selects the fittest individuals",
    " unbelievably, the cheesemongers were reorganising their warehouses yesterday",
]


class SpyProposer:
    """Wraps a real proposer; records every call and checks the prompt is never masked."""

    def __init__(self, inner: MLMProposer, prompt_ids: Sequence[int]) -> None:
        self.inner = inner
        self.name = inner.name
        self.prompt_ids = list(prompt_ids)
        self.calls: list[list[FillRequest]] = []
        self.logprob_calls = 0

    def _check(self, requests: Sequence[FillRequest]) -> None:
        off = len(self.inner.template.head)
        for r in requests:
            assert list(r.input_ids[off : off + len(self.prompt_ids)]) == self.prompt_ids
            assert all(p >= off + len(self.prompt_ids) for p in r.positions)
            assert all(r.input_ids[p] == self.inner.mask_id for p in r.positions)

    def fill(self, requests: Sequence[FillRequest], *, return_logq: bool = False) -> Any:
        self._check(requests)
        self.calls.append(list(requests))
        return self.inner.fill(requests, return_logq=return_logq)  # type: ignore[call-overload]

    def logprob_of(self, requests: Sequence[FillRequest], targets: Any) -> list[float]:
        self._check(requests)
        self.logprob_calls += 1
        return self.inner.logprob_of(requests, targets)


@pytest.fixture(params=["bert", "roberta"])
def lm(request, tiny_bert_dir, tiny_roberta_dir) -> LoadedModel:
    folder = tiny_bert_dir if request.param == "bert" else tiny_roberta_dir
    return load_model(str(folder), "mlm")


@pytest.fixture
def bert(tiny_bert_dir) -> LoadedModel:
    return load_model(str(tiny_bert_dir), "mlm")


def make_ctx(lm: LoadedModel, **over: Any) -> OperatorContext:
    prompt = lm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    order = over.pop("order", "l2r")
    temperature = over.pop("temperature", 1.0)
    spy = SpyProposer(MLMProposer(lm, temperature=temperature, order=order), prompt)
    base: dict[str, Any] = {
        "proposer": spy,
        "prompt_ids": tuple(prompt),
        "tokenizer": lm.tokenizer,
        "max_span": 3,
        "min_len": 3,
        "max_len": 30,
    }
    base.update(over)
    return OperatorContext(**base)


def population(lm: LoadedModel, ctx: OperatorContext) -> list[Individual]:
    pop = []
    for k, text in enumerate(TEXTS):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][: ctx.max_len]
        ind = Individual(ids)
        ind.fitness.values = (-1.0 - k,)
        ind.db_id = 100 + k
        pop.append(ind)
    return pop


def specials(lm: LoadedModel) -> set[int]:
    return set(lm.tokenizer.all_special_ids)


# -- mutation ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["l2r", "parallel"])
def test_mut_span_rewrites_one_span_and_records_it(lm, order):
    ctx = make_ctx(lm, order=order)
    seed_everything(0)
    for ind in population(lm, ctx):
        before = list(ind)
        out = mut_span(ind, ctx=ctx)
        assert out == (ind,) and out[0] is ind
        assert not ind.fitness.valid and ind.scores == {}
        o = ind.origin
        assert o.op == "mut_span" and o.parents == (ind.db_id,)
        start, end = o.span
        assert 0 <= start < end <= len(ind) and 1 <= end - start <= ctx.max_span
        assert len(ind) == len(before)
        assert ind[:start] == before[:start] and ind[end:] == before[end:]
        assert not set(ind[start:end]) & specials(lm)
        assert o.detail["proposer"] == "mlm" and o.detail["removed"] == end - start
        assert "log_q_forward" not in o.detail
    assert len(ctx.proposer.calls) == len(TEXTS)


def test_insert_and_delete_move_the_length_by_one_within_bounds(lm):
    ctx = make_ctx(lm, min_len=5, max_len=12)
    seed_everything(1)
    for ind in population(lm, ctx):
        n = len(ind)
        mut_insert(ind, ctx=ctx)
        o = ind.origin
        if n < ctx.max_len:
            assert o.op == "mut_insert" and len(ind) == n + 1
            assert o.span[1] - o.span[0] == o.detail["removed"] + 1
        else:  # no room: falls back to a plain span refill
            assert o.op == "mut_span" and len(ind) == n
        ind.fitness.values = (0.0,)
        n = len(ind)
        mut_delete(ind, ctx=ctx)
        o = ind.origin
        assert o.op == "mut_delete" and len(ind) == n - 1
        assert o.span[1] - o.span[0] == o.detail["removed"] - 1
    at_min = Individual(population(lm, ctx)[0][: ctx.min_len])
    mut_delete(at_min, ctx=ctx)
    assert at_min.origin.op == "mut_span" and len(at_min) == ctx.min_len


def test_random_indels_keep_lengths_in_bounds(bert):
    ctx = make_ctx(bert, min_len=4, max_len=7, indel_prob=1.0, max_span=2)
    seed_everything(2)
    start = bert.tokenizer(" a b c d e", add_special_tokens=False)["input_ids"]
    pop = [Individual(start) for _ in range(6)]
    ops = set()
    for _ in range(25):
        mutate_batch(pop, ctx=ctx)
        for ind in pop:
            assert ctx.min_len <= len(ind) <= ctx.max_len
            ops.add(ind.origin.op)
            ind.fitness.values = (0.0,)
    assert ops == {"mut_insert", "mut_delete"}


def test_mutate_batch_makes_one_proposer_call_and_reproduces(lm):
    results = []
    for _ in range(2):
        ctx = make_ctx(lm, indel_prob=0.5)
        pop = population(lm, ctx)
        lengths = [len(ind) for ind in pop]
        seed_everything(7)
        assert mutate_batch(pop, ctx=ctx) == pop
        assert len(ctx.proposer.calls) == 1 and len(ctx.proposer.calls[0]) == len(pop)
        for ind, n in zip(pop, lengths, strict=True):
            o = ind.origin
            inserted = o.span[1] - o.span[0]
            assert len(ind) == n - o.detail["removed"] + inserted
            assert {"mut_span": 0, "mut_insert": 1, "mut_delete": -1}[o.op] == len(ind) - n
        results.append([(list(ind), ind.origin) for ind in pop])
    assert results[0] == results[1]


@pytest.mark.parametrize("order", ["l2r", "parallel"])
def test_batched_greedy_mutation_equals_one_at_a_time(lm, order):
    ctx = make_ctx(lm, order=order, temperature=0.0, indel_prob=0.4)
    batch, single = population(lm, ctx), population(lm, ctx)
    random.seed(11)
    mutate_batch(batch, ctx=ctx)
    random.seed(11)
    for ind in single:
        mut_span(ind, ctx=ctx)
    assert [list(i) for i in batch] == [list(i) for i in single]
    assert [i.origin for i in batch] == [i.origin for i in single]


def test_mutation_log_q_is_recorded_once_per_generation(bert):
    ctx = make_ctx(bert, with_logq=True, indel_prob=0.5, order="parallel")
    seed_everything(4)
    pop = population(bert, ctx)
    mutate_batch(pop, ctx=ctx)
    assert ctx.proposer.logprob_calls == 1 and len(ctx.proposer.calls) == 1
    for ind in pop:
        d = ind.origin.detail
        assert d["log_q_forward"] is not None and d["log_q_forward"] < 0
        assert d["log_q_reverse"] is None or d["log_q_reverse"] < 0
    mutate_batch(pop[:1], ctx=ctx)  # a second edit before evaluation: no MH numbers
    assert "+" in pop[0].origin.op and "log_q_forward" not in pop[0].origin.detail


def test_span_mutation_log_q_matches_the_proposer(bert):
    """For a same-length refill the span choice cancels; the token parts are the proposer's."""
    ctx = make_ctx(bert, with_logq=True, order="parallel")
    seed_everything(5)
    ind = population(bert, ctx)[0]
    before = list(ind)
    mut_span(ind, ctx=ctx)
    s, e = ind.origin.span
    req = ctx.request(before, range(s, e))
    prop = ctx.proposer.inner
    n, k = len(before), e - s
    select = -math.log(min(ctx.max_span, n)) - math.log(n - k + 1)
    d = ind.origin.detail
    assert d["log_q_forward"] == pytest.approx(select + prop.logprob_of([req], [ind[s:e]])[0])
    assert d["log_q_reverse"] == pytest.approx(select + prop.logprob_of([req], [before[s:e]])[0])


@pytest.mark.parametrize("indel_prob", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("n", [3, 5, 8])
def test_edit_choice_probabilities_form_the_sampled_distribution(bert, indel_prob, n):
    """The selection probabilities used for MH sum to 1 and match how edits are drawn."""
    ctx = make_ctx(bert, min_len=3, max_len=8, indel_prob=indel_prob, max_span=3)
    prob = {
        (op, start, removed): math.exp(_log_select(op, n, removed, ctx))
        for op in MUT_OPS
        for removed in range(0, n + 1)
        for start in range(0, n - removed + 1)
    }
    assert sum(prob.values()) == pytest.approx(1.0, abs=1e-9)
    seed_everything(6)
    draws = 4000
    counts = dict.fromkeys(prob, 0)
    for _ in range(draws):
        p = plan_mutation(n, ctx)
        assert p is not None
        counts[(p.op, p.start, p.removed)] += 1
        assert p.log_select_forward == pytest.approx(math.log(prob[(p.op, p.start, p.removed)]))
    for key, c in counts.items():
        assert c / draws == pytest.approx(prob[key], abs=0.03), key


def test_insert_and_delete_are_each_others_reverse(bert):
    ctx = make_ctx(bert, min_len=3, max_len=9, indel_prob=0.4, max_span=3)
    seed_everything(8)
    seen = set()
    for _ in range(300):
        n = random.randint(3, 9)
        p = plan_mutation(n, ctx)
        assert p is not None
        m = n - p.removed + p.inserted
        reverse = {"mut_span": "mut_span", "mut_insert": "mut_delete", "mut_delete": "mut_insert"}
        assert p.log_select_reverse == pytest.approx(_log_select(reverse[p.op], m, p.inserted, ctx))
        assert math.isfinite(p.log_select_forward) and math.isfinite(p.log_select_reverse)
        seen.add(p.op)
    assert seen == {"mut_span", "mut_insert", "mut_delete"}


# -- crossover -----------------------------------------------------------------------------


def _splice_ok(child: list[int], expected: list[int], repaired: list[int]) -> bool:
    return len(child) == len(expected) and all(
        c == e for k, (c, e) in enumerate(zip(child, expected, strict=True)) if k not in repaired
    )


@pytest.mark.parametrize("points", ["one", "two"])
def test_crossover_cuts_at_word_starts_and_records_both_parents(lm, points):
    ctx = make_ctx(lm, min_len=3, max_len=30)
    seed_everything(9)
    pop = population(lm, ctx)
    pairs = [(pop[0], pop[1]), (pop[2], pop[3])]
    originals = [(list(a), list(b), a.db_id, b.db_id) for a, b in pairs]
    assert crossover_batch(pairs, ctx=ctx, points=points) == pairs
    assert len(ctx.proposer.calls) == 1 and len(ctx.proposer.calls[0]) == 4  # both seams
    for (a, b), (pa, pb, ida, idb) in zip(pairs, originals, strict=True):
        op = {"one": "cx_one_point", "two": "cx_two_point"}[points]
        cuts_a, cuts_b = a.origin.detail["cut_a"], a.origin.detail["cut_b"]
        assert b.origin.detail["cut_a"] == cuts_a and len(cuts_a) == len(cuts_b)
        starts_a, starts_b = ctx.word_starts(pa), ctx.word_starts(pb)
        assert all(0 < c < len(pa) and starts_a[c] for c in cuts_a)
        assert all(0 < c < len(pb) and starts_b[c] for c in cuts_b)
        for child in (a, b):
            assert child.origin.op == op and child.origin.parents == (ida, idb)
            assert not child.fitness.valid
            assert ctx.min_len <= len(child) <= ctx.max_len
            assert not set(child) & specials(lm)
        if points == "one":
            (i,), (j,) = cuts_a, cuts_b
            exp_a, exp_b = pa[:i] + pb[j:], pb[:j] + pa[i:]
            assert a.origin.span == (i, len(exp_a)) and b.origin.span == (j, len(exp_b))
        else:
            (i1, i2), (j1, j2) = cuts_a, cuts_b
            exp_a, exp_b = pa[:i1] + pb[j1:j2] + pa[i2:], pb[:j1] + pa[i1:i2] + pb[j2:]
            assert a.origin.span == (i1, i1 + j2 - j1) and b.origin.span == (j1, j1 + i2 - i1)
        for child, exp in ((a, exp_a), (b, exp_b)):
            repaired = child.origin.detail["repaired"]
            assert _splice_ok(list(child), exp, repaired)
            cuts = [child.origin.span[0]] + ([child.origin.span[1]] if points == "two" else [])
            assert repaired == sorted({p for c in cuts for p in (c - 1, c) if 0 <= p < len(exp)})


def test_crossover_without_seam_repair_is_an_exact_splice(bert):
    ctx = make_ctx(bert, seam=0, cx_points="random")
    seed_everything(10)
    pop = population(bert, ctx)
    pa, pb = list(pop[0]), list(pop[1])
    a, b = cx_span(pop[0], pop[1], ctx=ctx)
    assert ctx.proposer.calls == []
    cuts_a, cuts_b = a.origin.detail["cut_a"], a.origin.detail["cut_b"]
    if len(cuts_a) == 1:
        assert list(a) == pa[: cuts_a[0]] + pb[cuts_b[0] :]
        assert list(b) == pb[: cuts_b[0]] + pa[cuts_a[0] :]
    else:
        assert list(a) == pa[: cuts_a[0]] + pb[cuts_b[0] : cuts_b[1]] + pa[cuts_a[1] :]
    assert sorted(list(a) + list(b)) == sorted(pa + pb)
    assert a.origin.detail["repaired"] == []


def test_crossover_keeps_lengths_in_tight_bounds(bert):
    ctx = make_ctx(bert, min_len=8, max_len=10, cx_points="random", order="parallel")
    whole_words = [
        i
        for t, i in sorted(bert.tokenizer.get_vocab().items())
        if t.isalpha() and i not in specials(bert)
    ]
    seed_everything(12)
    pairs = []
    for trial in range(20):
        a = Individual(random.choices(whole_words, k=random.randint(8, 10)))
        b = Individual(random.choices(whole_words, k=random.randint(8, 10)))
        a.db_id, b.db_id = 2 * trial, 2 * trial + 1
        pairs.append((a, b))
    crossover_batch(pairs, ctx=ctx)
    for a, b in pairs:
        assert 8 <= len(a) <= 10 and 8 <= len(b) <= 10
        assert a.origin.op.startswith("cx_") and b.origin.op == a.origin.op


def test_crossover_truncates_a_too_long_child_at_a_word_start(bert, monkeypatch):
    ctx = make_ctx(bert, min_len=2, max_len=8, seam=0, cx_points="one")
    a, b = Individual(range(20, 28)), Individual(range(40, 48))
    a.db_id, b.db_id = 1, 2
    # a may be cut only before its sixth token, b only after its first: child a is too long.
    fake = {tuple(a): [True, False, False, False, False, True, False, False]}
    fake[tuple(b)] = [True, True, False, False, False, False, False, False]

    def word_starts(self: OperatorContext, ids: Sequence[int]) -> list[bool]:
        ids = tuple(ids)
        if ids in fake:
            return fake[ids]
        return [k % 3 == 0 for k in range(len(ids))]  # children: words of three tokens

    monkeypatch.setattr(OperatorContext, "word_starts", word_starts)
    cx_span(a, b, ctx=ctx)
    assert list(b) == [40, 25, 26, 27]
    assert list(a) == [20, 21, 22, 23, 24, 41]  # 5 + 7 tokens, cut back at the word start 6
    assert a.origin.detail["truncated"] and a.origin.span == (5, 6)
    assert b.origin.span == (1, 4)


def test_uncrossable_pairs_are_left_alone(bert):
    ctx = make_ctx(bert)
    a = Individual(bert.tokenizer(" cheddar", add_special_tokens=False)["input_ids"][:1])
    b = Individual(bert.tokenizer(" yellow and old", add_special_tokens=False)["input_ids"])
    a.fitness.values = b.fitness.values = (1.0,)
    assert cx_span(a, b, ctx=ctx) == (a, b)
    assert a.fitness.valid and b.fitness.valid and a.origin.op == "init"
    assert ctx.proposer.calls == []


def test_crossover_reproduces_under_a_seed(lm):
    out = []
    for _ in range(2):
        ctx = make_ctx(lm)
        pop = population(lm, ctx)
        seed_everything(21)
        crossover_batch([(pop[0], pop[1]), (pop[2], pop[3])], ctx=ctx)
        out.append([(list(i), i.origin) for i in pop])
    assert out[0] == out[1]


def test_context_validation(bert):
    good = make_ctx(bert)
    for bad in (
        {"max_span": 0},
        {"min_len": 0},
        {"min_len": 5, "max_len": 4},
        {"indel_prob": 1.5},
        {"cx_points": "three"},
        {"seam": -1},
    ):
        with pytest.raises(UserError):
            dataclasses.replace(good, **bad)
    assert good.mask_id == bert.tokenizer.mask_token_id
    req = good.request([7, 8, 9], [1])
    assert req.input_ids[req.positions[0]] == good.mask_id
    assert good.continuation_of(list(req.input_ids)) == [7, good.mask_id, 9]


# -- Metropolis-Hastings ---------------------------------------------------------------------


def test_mh_accepts_improvements_with_a_symmetric_proposal():
    rng = random.Random(0)
    assert mh_accept(10.0, 9.0, -3.0, -3.0, rng)
    assert mh_accept(10.0, 10.0, -3.0, -3.0, rng)
    # An improvement can still be refused when it is much easier to propose than to undo.
    assert not mh_accept(10.0, 9.0, -1.0, -50.0, random.Random(0))
    # Impossible reverse moves (stored as None) and NaNs are refused without a draw.
    assert not mh_accept(10.0, 0.0, -1.0, None, rng)
    assert not mh_accept(10.0, 0.0, -1.0, -math.inf, rng)
    assert not mh_accept(math.nan, 0.0, -1.0, -1.0, rng)


@pytest.mark.parametrize("delta, ratio", [(0.5, 0.0), (2.0, -1.0), (0.1, 0.7)])
def test_mh_acceptance_rate_is_exp_of_the_log_ratio(delta, ratio):
    """Worse by delta in energy, log q_rev - log q_fwd = ratio: accept at exp(ratio - delta)."""
    random.seed(3)
    n = 20000
    accepted = sum(mh_accept(1.0, 1.0 + delta, -2.0, -2.0 + ratio) for _ in range(n))
    want = min(1.0, math.exp(ratio - delta))
    assert accepted / n == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / n) + 1e-3)


# -- the packaged model ----------------------------------------------------------------------


@pytest.mark.real
def test_tiny_bert_preset_mutates_into_words():
    lm = load_mlm()
    prompt = "Mozzarella is white\nSo you can see it at night\nCheddar is"
    prompt_ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cont = lm.tokenizer(" yellow so you can see it in the day", add_special_tokens=False)
    ctx = OperatorContext(
        proposer=MLMProposer(lm, temperature=1.0, top_k=50),
        prompt_ids=tuple(prompt_ids),
        tokenizer=lm.tokenizer,
        max_span=3,
        min_len=4,
        max_len=16,
        indel_prob=0.3,
    )
    seed_everything(0)
    pop = [Individual(cont["input_ids"]) for _ in range(6)]
    for _ in range(3):
        mutate_batch(pop, ctx=ctx)
        for ind in pop:
            ind.fitness.values = (0.0,)
    for ind in pop:
        tokens = lm.tokenizer.convert_ids_to_tokens(list(ind))
        assert not any(re.fullmatch(r"\[.*\]", t) for t in tokens), tokens
        text = lm.tokenizer.decode(list(ind))
        assert text.strip() and re.fullmatch(r"[a-z0-9 ,.;:'!?()\-#\"&/$%]+", text), text
        words = re.findall(r"[a-z]+", text)
        assert len(words) >= 3


def test_a_same_length_mutation_tells_the_proposer_the_old_tokens(bert):
    """A refill of the same length carries the span's old tokens (`FillRequest.avoid`), so a
    choosing proposer can return a change; an indel changes the length and carries none."""
    ctx = make_ctx(bert, indel_prob=0.5)
    spy = ctx.proposer
    assert isinstance(spy, SpyProposer)
    off = len(spy.inner.template.head) + len(spy.prompt_ids)
    seen = {"same": 0, "indel": 0}
    for seed in range(4):
        seed_everything(seed)
        pop = population(bert, ctx)
        before = [list(ind) for ind in pop]
        mutate_batch(pop, ctx=ctx)
        assert len(spy.calls[-1]) == len(pop)
        for old, new, req in zip(before, pop, spy.calls[-1], strict=True):
            if len(new) == len(old):
                lo, hi = req.positions[0] - off, req.positions[-1] - off + 1
                assert req.avoid == tuple(old[lo:hi])
                seen["same"] += 1
            else:
                assert req.avoid is None
                seen["indel"] += 1
    assert seen["same"] and seen["indel"]

"""Levers against degeneration: the n-gram guard, banned tokens, typicality, rep penalty.

The guard's promise is checked as a property over many random fills on tiny random models
(MLM in both fill orders, causal proposer, crossover, deletions, generation 0); typicality
against a direct computation; MH proposal probabilities under the guard by reversibility
(the probability `logprob_of` gives a proposal equals the one `fill` reported for it).
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch

from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.ga.engine import Engine
from evolve.ga.individual import Individual
from evolve.ga.objectives import RepetitionPenalty, Typicality, WeightedSum, build_objective
from evolve.ga.operators import OperatorContext, crossover_batch, mutate_batch
from evolve.ga.proposers import CausalProposer, MLMProposer
from evolve.ga.proposers.sampling import (
    SamplingPolicy,
    has_repeated_ngram,
    ngram_bans,
    repeated_ngram_ends,
)
from evolve.ga.seeding import rng_scope, seed_everything
from scoring import metrics
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model
from scoring.pll import PLLScorer
from scoring.results import TokenScores
from scoring.template import special_template
from scoring.typical import TypicalCausalScorer, TypicalScorer, typicality

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"


@pytest.fixture(scope="module")
def bert(tiny_bert_dir: Path) -> LoadedModel:
    return load_model(str(tiny_bert_dir), "mlm")


@pytest.fixture(scope="module")
def roberta(tiny_roberta_dir: Path) -> LoadedModel:
    return load_model(str(tiny_roberta_dir), "mlm")


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


def ctx_for(lm: LoadedModel, proposer, n: int, **kw) -> OperatorContext:
    prompt = lm.tokenizer.encode(PROMPT, add_special_tokens=False)
    mask = lm.tokenizer.mask_token_id if lm.kind == "mlm" else lm.tokenizer.eos_token_id
    return OperatorContext(
        proposer=proposer,
        prompt_ids=prompt,
        tokenizer=lm.tokenizer,
        mask_id=mask,
        no_repeat_ngram=n,
        min_len=2,
        max_len=24,
        **kw,
    )


def clean(ctx: OperatorContext, cont) -> bool:
    region = [*ctx.guard_context, *cont]
    return not has_repeated_ngram(region, ctx.no_repeat_ngram)


# -- the ban rule itself --------------------------------------------------------------------


def test_ngram_bans_by_hand():
    a, b, c = 1, 2, 3
    assert ngram_bans([a, b, c, a, None], 4, 2) == {b}  # "a b" occurs: after a, b is banned
    assert ngram_bans([a, None, a], 1, 2) == {a}  # "a a" would occur twice
    assert ngram_bans([a, b, None, b], 2, 2) == {a, b}  # "a b" again, or "b b" twice
    assert ngram_bans([a, b, None, None], 2, 3) == set()  # the trigram is not complete yet
    assert ngram_bans([a, b, c, None], 3, 1) == {a, b, c}  # unigrams: no token twice
    assert ngram_bans([None, b, c, b, c], 0, 3) == {c}  # "c b c" is there already
    assert ngram_bans([c, b, c, None, b, c], 3, 2) == {b, c}  # "c b" exists; so does "b c"


def test_ngram_bans_agree_with_brute_force():
    rnd = random.Random(0)
    for _ in range(400):
        n = rnd.randint(1, 3)
        region: list[int | None] = [rnd.randint(0, 4) for _ in range(rnd.randint(n, 10))]
        if has_repeated_ngram([t for t in region], n):  # the rule assumes a clean start
            continue
        index = rnd.randrange(len(region))
        for p in rnd.sample(range(len(region)), k=min(len(region), rnd.randint(0, 2))):
            region[p] = None
        region[index] = None
        want = set()
        for t in range(5):
            trial = list(region)
            trial[index] = t
            grams = [
                tuple(trial[s : s + n])
                for s in range(len(trial) - n + 1)
                if None not in trial[s : s + n]
            ]
            if len(set(grams)) < len(grams):
                want.add(t)
        assert ngram_bans(region, index, n) == want, (region, index, n)


def test_repeated_ngram_ends_break_every_repeat():
    rnd = random.Random(1)
    for _ in range(300):
        n = rnd.randint(1, 3)
        region = [rnd.randint(0, 3) for _ in range(rnd.randint(1, 12))]
        ends = repeated_ngram_ends(region, n)
        kept = [None if i in ends else t for i, t in enumerate(region)]
        grams = [
            tuple(kept[s : s + n]) for s in range(len(kept) - n + 1) if None not in kept[s : s + n]
        ]
        assert len(set(grams)) == len(grams)


def test_policy_bans_before_top_k_and_greedy():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0]])
    p = SamplingPolicy(temperature=0, no_repeat_ngram=2)
    assert int(p.sample(p.logprobs(logits, [{0}]))) == 1
    k = SamplingPolicy(top_k=2, no_repeat_ngram=2)
    lp = k.logprobs(logits, [{0}])
    assert torch.isinf(lp[0, 0]) and torch.isfinite(lp[0, 1:3]).all() and torch.isinf(lp[0, 3])
    with pytest.raises(UserError, match="no_repeat_ngram"):
        SamplingPolicy(no_repeat_ngram=-1)


# -- the guard never emits a repeated n-gram -------------------------------------------------


@pytest.mark.parametrize("order", ["l2r", "parallel"])
@pytest.mark.parametrize("model", ["bert", "roberta"])
def test_mlm_fills_never_repeat_an_ngram(model, order, request):
    lm = request.getfixturevalue(model)
    for n in (1, 2, 3):
        # top-k 3 from a tiny random model repeats itself readily without the guard
        plain = ctx_for(lm, MLMProposer(lm, top_k=3, order=order), n)
        guarded = ctx_for(lm, MLMProposer(lm, top_k=3, order=order, no_repeat_ngram=n), n)
        seed_everything(n)
        rnd = random.Random(n)
        conts = [[plain.mask_id] * rnd.randint(4, 14) for _ in range(24)]
        unguarded = plain.proposer.fill([plain.request(c, range(len(c))) for c in conts])
        if n == 1:  # longer n-grams repeat too rarely by chance to demand one
            assert any(not clean(plain, plain.continuation_of(ids)) for ids in unguarded)
        made = guarded.proposer.fill([guarded.request(c, range(len(c))) for c in conts])
        made = [guarded.continuation_of(ids) for ids in made]
        assert all(clean(guarded, c) for c in made)
        for _ in range(3):  # refill random positions of clean texts: still clean
            reqs = [
                guarded.request(c, rnd.sample(range(len(c)), k=rnd.randint(1, len(c))))
                for c in made
            ]
            made = [guarded.continuation_of(ids) for ids in guarded.proposer.fill(reqs)]
            assert all(clean(guarded, c) for c in made)


def test_causal_fills_never_repeat_an_ngram(gpt2):
    for n in (1, 2):
        prop = CausalProposer(gpt2, candidates=3, top_k=3, no_repeat_ngram=n)
        ctx = ctx_for(gpt2, prop, n)
        seed_everything(n)
        rnd = random.Random(n)
        conts = [[ctx.mask_id] * rnd.randint(3, 10) for _ in range(12)]
        made = prop.fill([ctx.request(c, range(len(c))) for c in conts])
        made = [ctx.continuation_of(ids) for ids in made]
        assert all(clean(ctx, c) for c in made)
        for _ in range(3):
            reqs = [
                ctx.request(c, sorted(rnd.sample(range(len(c)), k=rnd.randint(1, len(c)))))
                for c in made
            ]
            made = [ctx.continuation_of(ids) for ids in prop.fill(reqs)]
            assert all(clean(ctx, c) for c in made)


def test_crossover_and_mutation_under_the_guard_keep_children_clean(bert):
    n = 2
    ctx = ctx_for(bert, MLMProposer(bert, top_k=3, no_repeat_ngram=n), n, indel_prob=0.5)
    seed_everything(3)
    rnd = random.Random(3)
    random.seed(3)
    words = bert.tokenizer.encode("the cat sat on the mat and a dog", add_special_tokens=False)
    pop = []
    for _ in range(16):  # clean parents made of few words: splices readily repeat bigrams
        ids: list[int] = []
        while len(ids) < 8:
            ids.append(rnd.choice(words))
            if not clean(ctx, ids):
                ids.pop()
                if len(set(words)) <= len(ids):
                    break
        pop.append(Individual(ids))
    assert all(clean(ctx, ind) for ind in pop)
    for _ in range(10):
        pairs = [(pop[i], pop[i + 1]) for i in range(0, len(pop), 2)]
        crossover_batch(pairs, ctx=ctx)
        assert all(clean(ctx, ind) for ind in pop)
        mutate_batch(pop, ctx=ctx)
        assert all(clean(ctx, ind) for ind in pop)
        rnd.shuffle(pop)


def test_a_pure_deletion_that_would_repeat_is_refused(bert):
    ctx = ctx_for(bert, MLMProposer(bert, no_repeat_ngram=2), 2)
    vocab = bert.tokenizer.get_vocab()
    special = set(bert.tokenizer.all_special_ids)
    words = sorted(i for t, i in vocab.items() if t.isalpha() and i not in special)
    a, b, x, c = words[:4]
    random.seed(0)
    refused = 0
    for _ in range(200):
        ind = Individual([a, b, c, a, x, b])  # deleting x makes "a b" twice
        mutate_batch([ind], ctx=ctx, op="mut_delete")
        assert clean(ctx, ind) or list(ind) == [a, b, c, a, x, b]
        refused += list(ind) == [a, b, c, a, x, b]
    assert refused > 0


# -- MH under the guard: the proposal probabilities are those of the draw -------------------


@pytest.mark.parametrize("order", ["l2r", "parallel"])
def test_guarded_proposal_probabilities_are_reversible(bert, order):
    n = 2
    prop = MLMProposer(bert, top_k=5, order=order, no_repeat_ngram=n)
    ctx = ctx_for(bert, prop, n)
    seed_everything(5)
    rnd = random.Random(5)
    base = [ctx.mask_id] * 10
    olds = [ctx.continuation_of(ids) for ids in prop.fill([ctx.request(base, range(10))] * 8)]
    spans = [sorted(rnd.sample(range(10), k=rnd.randint(1, 4))) for _ in olds]
    fwd = [ctx.request(c, s) for c, s in zip(olds, spans, strict=True)]
    filled, logq = prop.fill(fwd, return_logq=True)
    news = [ctx.continuation_of(ids) for ids in filled]
    new_tokens = [[c[p] for p in s] for c, s in zip(news, spans, strict=True)]
    # forward: the probability of the tokens drawn, recomputed, is what fill reported
    again = prop.logprob_of(fwd, new_tokens)
    assert again == pytest.approx(logq, abs=1e-4)
    assert all(math.isfinite(v) for v in logq)
    # reverse: from the new text, putting the old tokens back is a possible move of the
    # same kernel (the old text was clean), and its probability is that of a fresh draw
    back = [ctx.request(c, s) for c, s in zip(news, spans, strict=True)]
    old_tokens = [[c[p] for p in s] for c, s in zip(olds, spans, strict=True)]
    rev = prop.logprob_of(back, old_tokens)
    assert all(math.isfinite(v) for v in rev)
    # a reverse move into a text with a repeated bigram has probability 0 under the guard
    x, y = olds[0][0], olds[0][1]
    req = ctx.request([x, y, ctx.mask_id, ctx.mask_id], [2, 3])
    full = MLMProposer(bert, order=order)  # no top-k: only the guard can forbid it
    assert math.isfinite(full.logprob_of([req], [[x, y]])[0])
    guarded = MLMProposer(bert, order=order, no_repeat_ngram=n)
    assert guarded.logprob_of([req], [[x, y]]) == [-math.inf]


# -- banned tokens --------------------------------------------------------------------------


def test_ban_tokens_are_never_proposed_and_unknown_ones_refused(bert, tiny_bert_dir):
    cfg = RunConfig(
        prompt=PROMPT,
        population=4,
        generations=1,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=str(tiny_bert_dir),
        mutation=MutationConfig(top_k=5, ban_tokens=("the",)),
    )
    engine = Engine.build(cfg)
    the = bert.tokenizer.convert_tokens_to_ids("the")
    proposer = engine.proposer.local  # type: ignore[attr-defined]  # the driver's wrapper
    assert the in proposer.policy.banned_ids
    bad = dataclasses.replace(cfg, mutation=MutationConfig(ban_tokens=("zzqqxx",)))
    with pytest.raises(UserError, match="ban token 'zzqqxx' is not in the vocabulary"):
        Engine.build(bad)


# -- typicality -----------------------------------------------------------------------------


def test_pll_entropies_leave_scores_alone(bert):
    texts = [" yellow and sharp", " old old old"]
    plain = PLLScorer(bert).score(texts, PROMPT)
    with_h = PLLScorer(bert, entropy=True).score(texts, PROMPT)
    for a, b in zip(plain, with_h, strict=True):
        assert a == b and a.entropies is None and b.entropies is not None
        assert len(b.entropies) == b.n_tokens


def test_mlm_typicality_equals_a_direct_computation(bert):
    tok = bert.tokenizer
    prefix = tok.encode(PROMPT, add_special_tokens=False)
    cont = tok.encode(" yellow and tastes sharp when old", add_special_tokens=False)
    pll = PLLScorer(bert, entropy=True)
    got = TypicalScorer(pll).score_ids([cont], prefix)[0]
    head, tail = special_template(tok)
    want = []
    for j in range(len(cont)):
        ids = [*head, *prefix, *cont, *tail]
        pos = len(head) + len(prefix) + j
        ids[pos] = tok.mask_token_id
        with torch.inference_mode():
            logits = bert.model(input_ids=torch.tensor([ids])).logits[0, pos].double()
        p = torch.softmax(logits, -1)
        entropy = float(-(p * p.log()).sum())
        surprisal = -float(torch.log_softmax(logits, -1)[cont[j]])
        want.append(-abs(surprisal - entropy))
    assert got.token_logprobs == pytest.approx(want, abs=1e-4)
    assert got.mean == pytest.approx(sum(want) / len(want), abs=1e-4)
    assert TypicalScorer(pll).name == "typical/" + pll.name


def test_causal_typicality_equals_a_direct_computation(gpt2):
    tok = gpt2.tokenizer
    prefix = tok.encode(PROMPT, add_special_tokens=False)
    conts = [tok.encode(t, add_special_tokens=False) for t in (" yellow and sharp", " old")]
    got = TypicalCausalScorer(gpt2, tokens_per_batch=8).score_ids(conts, prefix)
    for cont, scores in zip(conts, got, strict=True):
        with torch.inference_mode():
            logits = gpt2.model(input_ids=torch.tensor([[*prefix, *cont]])).logits[0].double()
        logp = torch.log_softmax(logits[len(prefix) - 1 : -1], -1)
        entropy = -(logp.exp() * logp).sum(-1)
        surprisal = -logp[torch.arange(len(cont)), torch.tensor(cont)]
        want = (-(surprisal - entropy).abs()).tolist()
        assert scores.token_logprobs == pytest.approx(want, abs=1e-4)
    assert typicality([-1.0, -3.0], [2.0, 1.0]) == [-1.0, -2.0]


# -- objectives and a whole run -------------------------------------------------------------


def test_objectives_with_typicality_and_a_repetition_penalty():
    s = {
        "pll": TokenScores.from_logprobs([-1.0, -3.0]),
        "clm": TokenScores.from_logprobs([-2.0, -2.0]),
        "typ": TokenScores.from_logprobs([-0.5, -0.5]),
    }
    f = FitnessConfig(objective="typical")
    assert isinstance(build_objective(f, "pll", None, "typ"), Typicality)
    assert build_objective(f, "pll", None, "typ").values(s) == (-0.5,)
    f = FitnessConfig(objective="sum", typical_weight=2.0)
    obj = build_objective(f, "pll", "clm", "typ")
    assert isinstance(obj, WeightedSum) and obj.values(s) == (-2.0 + -2.0 + 2 * -0.5,)
    f = FitnessConfig(objective="nsga2", typical_weight=1.0)
    assert build_objective(f, "pll", "clm", "typ").n_values == 4
    text = " when when when when"  # 3 bigrams, 2 repeat: rep-2 = 2/3
    f = FitnessConfig(objective="pll", rep_penalty=3.0, rep_n=2)
    obj = build_objective(f, "pll", None)
    assert isinstance(obj, RepetitionPenalty)
    assert obj.values(s, text) == pytest.approx((-2.0 - 3.0 * metrics.rep_n(text, 2),))
    assert obj.values(s, text)[0] == pytest.approx(-4.0)
    assert obj.energy(s, text) == pytest.approx(4.0 + 2.0 * 2)
    nsga = build_objective(FitnessConfig(objective="nsga2", rep_penalty=1.0), "pll", "clm")
    assert nsga.values(s, text)[-1] == 0.0  # diversity is left to the loop


@pytest.mark.parametrize("typical_model", ["mlm", "causal"])
def test_a_guarded_typical_run(tiny_bert_dir, tiny_gpt2_dir, typical_model):
    cfg = RunConfig(
        prompt=PROMPT,
        population=6,
        generations=3,
        init_len=8,
        min_len=3,
        max_len=12,
        mlm=str(tiny_bert_dir),
        causal=str(tiny_gpt2_dir),
        seed=2,
        mutation=MutationConfig(max_span=2, top_k=5, no_repeat_ngram=2),
        fitness=FitnessConfig(
            objective="sum", typical_weight=1.0, typical_model=typical_model, rep_penalty=1.0
        ),
    )
    engine = Engine.build(cfg)
    with rng_scope(cfg.seed):
        gens = list(engine.run())
    assert "typical/" in engine.fitness_label and "rep2" in engine.fitness_label
    for gen in gens:
        for ind in gen.population:
            assert clean(engine.ctx, ind)
            assert any(name.startswith("typical/") for name in ind.scores)


# -- bad input through the CLI ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--no-repeat-ngram", "-1"], "no_repeat_ngram must be at least 1, or 0 for off"),
        (["--rep-n", "0"], "rep_n must be at least 1 (got 0)"),
        (["--rep-penalty", "-1"], "rep_penalty must be a finite number >= 0"),
        (["--typical-weight", "-2"], "typical_weight must be >= 0"),
        (["--ban-token", "zzqqxx"], "ban token 'zzqqxx' is not in the vocabulary"),
    ],
)
def test_bad_degeneration_options_give_one_line(invoke, tiny_bert_dir, tmp_path, args, fragment):
    db = tmp_path / "runs.db"
    small = ["-p", "4", "-g", "1", "--init-len", "6", "--min-len", "3", "--max-len", "10", "-q"]
    result = invoke(
        "run", "--mlm", str(tiny_bert_dir), "--prompt", PROMPT, *small, *args, "--db", str(db)
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_typicality_on_ray_workers_is_refused_up_front():
    from evolve.ga.config import ConfigError, FitnessConfig, RunConfig, WorkersConfig

    cfg = RunConfig(
        prompt="Cheddar is",
        fitness=FitnessConfig(objective="typical"),
        workers=WorkersConfig(workers=2),
    )
    with pytest.raises(ConfigError, match="not computed on Ray workers"):
        cfg.validate()

"""MLMProposer on tiny random BERT and RoBERTa models: fills, orders, seeds, log q."""

from __future__ import annotations

import math

import pytest
import torch

from evolve.ga.proposers import (
    FillRequest,
    InputTemplate,
    MLMProposer,
    Proposer,
    SamplingPolicy,
)
from evolve.ga.seeding import seed_everything
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"
CONT = " yellow and tastes sharp when it is old"


@pytest.fixture(params=["bert", "roberta"])
def lm(request, tiny_bert_dir, tiny_roberta_dir) -> LoadedModel:
    folder = tiny_bert_dir if request.param == "bert" else tiny_roberta_dir
    return load_model(str(folder), "mlm")


@pytest.fixture
def bert(tiny_bert_dir) -> LoadedModel:
    return load_model(str(tiny_bert_dir), "mlm")


def encode(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def requests_for(lm: LoadedModel) -> list[FillRequest]:
    """Three requests of different lengths and numbers of masks (one with none)."""
    prompt, cont = encode(lm, PROMPT), encode(lm, CONT)
    mask = lm.tokenizer.mask_token_id
    out = []
    template = InputTemplate.from_tokenizer(lm.tokenizer)
    off = template.offset(prompt)
    for cut, spans in ((len(cont), (0, 1, 2)), (5, (1,)), (3, ())):
        ids = template.build(prompt, cont[:cut])
        for s in spans:
            ids[off + s] = mask
        out.append(FillRequest(tuple(ids), tuple(off + s for s in spans)))
    return out


def banned_ids(lm: LoadedModel) -> set[int]:
    return set(lm.tokenizer.all_special_ids)


def test_template_matches_the_tokenizer(lm):
    prompt, cont = encode(lm, PROMPT), encode(lm, CONT)
    t = InputTemplate.from_tokenizer(lm.tokenizer)
    ids, off = t.build(prompt, cont), t.offset(prompt)
    full = list(lm.tokenizer(PROMPT)["input_ids"])  # what the tokenizer itself wraps
    assert full == [*t.head, *prompt, *t.tail] and t.head and t.tail
    assert off == len(t.head) + len(prompt)
    assert ids[off : off + len(cont)] == cont
    assert t.continuation(ids, prompt) == cont
    assert len(ids) == len(prompt) + len(cont) + t.n_special
    assert all(i in banned_ids(lm) for i in (*t.head, *t.tail))


@pytest.mark.parametrize("order", ["l2r", "parallel"])
def test_fill_replaces_exactly_the_masks_with_ordinary_tokens(lm, order):
    prop = MLMProposer(lm, order=order)
    assert isinstance(prop, Proposer)
    reqs = requests_for(lm)
    seed_everything(0)
    out = prop.fill(reqs)
    assert len(out) == len(reqs)
    vocab = len(lm.tokenizer)
    for req, ids in zip(reqs, out, strict=True):
        assert len(ids) == len(req.input_ids)
        for p, (old, new) in enumerate(zip(req.input_ids, ids, strict=True)):
            if p in req.positions:
                assert new not in banned_ids(lm) and 0 <= new < vocab
            else:
                assert new == old
    assert prop.fill([]) == []


def test_unused_placeholders_and_extra_bans_are_never_proposed(bert):
    # Ban all but three ordinary ids: every sample must be one of them.
    keep = [i for i in range(len(bert.tokenizer)) if i not in banned_ids(bert)][:3]
    extra = [i for i in range(len(bert.tokenizer)) if i not in keep]
    prop = MLMProposer(bert, order="parallel", banned_ids=extra)
    seed_everything(1)
    for req, ids in zip(requests_for(bert), prop.fill(requests_for(bert)), strict=True):
        assert all(ids[p] in keep for p in req.positions)
    with pytest.raises(UserError, match="banned"):
        MLMProposer(bert, banned_ids=range(len(bert.tokenizer)))


@pytest.mark.parametrize("order", ["l2r", "parallel"])
def test_same_seed_same_fills(lm, order):
    prop = MLMProposer(lm, temperature=1.0, order=order)
    runs = []
    for _ in range(2):
        seed_everything(123)
        runs.append(prop.fill(requests_for(lm), return_logq=True))
    assert runs[0] == runs[1]
    seed_everything(124)
    many = [prop.fill(requests_for(lm))[0] for _ in range(5)]
    assert any(m != runs[0][0][0] for m in many)  # the seed matters (random weights: flat)


@pytest.mark.parametrize("order", ["l2r", "parallel"])
def test_temperature_zero_is_greedy_and_deterministic(lm, order):
    prop = MLMProposer(lm, temperature=0.0, order=order)
    seed_everything(0)
    a, logq = prop.fill(requests_for(lm), return_logq=True)
    seed_everything(99)
    b = prop.fill(requests_for(lm))
    assert a == b
    assert logq == [0.0, 0.0, 0.0]
    # top_k=1 samples the same greedy tokens at any temperature
    seed_everything(5)
    assert MLMProposer(lm, temperature=2.0, top_k=1, order=order).fill(requests_for(lm)) == a


def test_greedy_matches_the_model_and_batching_does_not_matter(bert):
    """Parallel greedy = argmax of the model's own logits (banned removed), alone or padded."""
    prop = MLMProposer(bert, temperature=0.0, order="parallel")
    reqs = requests_for(bert)
    batched = prop.fill(reqs)
    for req, got in zip(reqs, batched, strict=True):
        assert prop.fill([req]) == [got]
        with torch.no_grad():
            logits = bert.model(input_ids=torch.tensor([list(req.input_ids)])).logits[0]
        logits[:, sorted(banned_ids(bert))] = -math.inf
        logits[:, len(bert.tokenizer) :] = -math.inf
        for p in req.positions:
            assert got[p] == int(logits[p].argmax())


def test_l2r_conditions_each_token_on_the_ones_before(bert):
    prop = MLMProposer(bert, temperature=0.0, order="l2r")
    one = MLMProposer(bert, temperature=0.0, order="parallel")
    req = requests_for(bert)[0]
    got = prop.fill([req])[0]
    # Manual l2r: fill the first mask greedily, then the next given it, and so on.
    ids = list(req.input_ids)
    for k, p in enumerate(req.positions):
        step = FillRequest(tuple(ids), req.positions[k:])
        ids[p] = one.fill([step])[0][p]
    assert got == ids


@pytest.mark.parametrize("order", ["l2r", "parallel"])
@pytest.mark.parametrize("top_k", [0, 7])
def test_fill_logq_equals_logprob_of_the_sampled_tokens(lm, order, top_k):
    prop = MLMProposer(lm, temperature=0.8, top_k=top_k, order=order)
    reqs = requests_for(lm)
    seed_everything(3)
    filled, logq = prop.fill(reqs, return_logq=True)
    targets = [[ids[p] for p in r.positions] for r, ids in zip(reqs, filled, strict=True)]
    again = prop.logprob_of(reqs, targets)
    assert again == pytest.approx(logq, abs=1e-4)
    assert logq[2] == 0.0 and all(v < 0 for v in logq[:2])


def test_logprob_of_is_minus_inf_outside_the_proposal(bert):
    reqs = requests_for(bert)[1:2]
    special = [[bert.tokenizer.cls_token_id]]
    assert MLMProposer(bert, order="parallel").logprob_of(reqs, special) == [-math.inf]
    greedy = MLMProposer(bert, temperature=0.0, order="parallel")
    best = greedy.fill(reqs)[0][reqs[0].positions[0]]
    other = next(i for i in range(10, 100) if i != best and i not in banned_ids(bert))
    assert greedy.logprob_of(reqs, [[best]]) == [0.0]
    assert greedy.logprob_of(reqs, [[other]]) == [-math.inf]
    top1 = MLMProposer(bert, top_k=1, order="parallel")
    assert top1.logprob_of(reqs, [[other]]) == [-math.inf]
    full = MLMProposer(bert, order="parallel").logprob_of(reqs, [[other]])[0]
    assert -math.inf < full < 0
    with pytest.raises(ValueError):
        greedy.logprob_of(reqs, [[best, best]])


def test_small_batches_give_the_same_fills(bert):
    reqs = requests_for(bert)
    for order in ("l2r", "parallel"):
        big = MLMProposer(bert, temperature=0.0, order=order).fill(reqs)
        small = MLMProposer(bert, temperature=0.0, order=order, tokens_per_batch=1).fill(reqs)
        assert small == big


def test_bad_settings_and_requests(bert):
    with pytest.raises(UserError):
        MLMProposer(bert, temperature=-1.0)
    with pytest.raises(UserError):
        MLMProposer(bert, temperature=math.inf)
    with pytest.raises(UserError):
        MLMProposer(bert, top_k=-1)
    with pytest.raises(UserError):
        MLMProposer(bert, order="random")  # type: ignore[arg-type]
    prop = MLMProposer(bert)
    too_long = FillRequest(tuple([5] * (bert.max_length + 1)), (3,))
    with pytest.raises(UserError, match="at most"):
        prop.fill([too_long])
    with pytest.raises(ValueError):
        FillRequest((1, 2, 3), (3,))


# -- SamplingPolicy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperature, top_k, message",
    [
        (-1.0, 0, "temperature"),
        (math.nan, 0, "temperature"),
        (math.inf, 0, "temperature"),
        (1.0, -1, "top_k"),
        (1.0, 2.5, "top_k"),
    ],
)
def test_policy_validates_once_for_everyone(temperature, top_k, message):
    with pytest.raises(UserError, match=message):
        SamplingPolicy.validate(temperature, top_k)
    with pytest.raises(UserError, match=message):
        SamplingPolicy(temperature, top_k)


def test_policy_logprobs_are_the_tempered_cut_distribution_without_banned_ids():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    policy = SamplingPolicy(temperature=0.5, top_k=3, banned_ids=frozenset({4, 99}))
    logp = policy.logprobs(logits)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2))
    assert logp[0, 4] == -math.inf and logp[0, 3] == -math.inf  # banned; cut by top-3
    kept = logits[0, :3] / 0.5
    assert torch.allclose(logp[0, :3], kept - torch.logsumexp(kept, 0))
    assert int((logp[1] > -math.inf).sum()) >= 3  # ties at the k-th value are all kept
    greedy = SamplingPolicy(0.0, banned_ids=frozenset({4})).logprobs(logits)
    assert greedy[0].tolist() == [0.0] + [-math.inf] * 4  # argmax once 4 is banned
    assert SamplingPolicy(0.0).sample(greedy).tolist() == [0, 0]
    assert policy.banning([0]).banned_ids == {0, 4, 99} and policy.banned_count(5) == 1


def test_policy_draws_from_an_explicit_generator_or_the_global_rng():
    logp = SamplingPolicy(1.0).logprobs(torch.randn(6, 50))
    policy = SamplingPolicy(1.0)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = policy.sample(logp, torch.Generator().manual_seed(7))
    b = policy.sample(logp, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(3)
    c = policy.sample(logp)  # the global RNG: what a seeded run uses
    torch.manual_seed(3)
    assert torch.equal(c, torch.multinomial(logp.exp(), 1).squeeze(-1))
    assert torch.equal(SamplingPolicy.logprob_of(logp, c), logp[torch.arange(6), c])


@pytest.mark.parametrize("top_k", [0, 3])
def test_per_row_draws_follow_the_policy_distribution(top_k):
    """`sample_rows` (torch.multinomial per row) and `draw_rows` (inverse CDF on each row's
    top-k, one uniform per row from its generator) draw from `logprobs`' distribution: 20,000 rows of one
    distribution land within 4 standard errors of it, never on a banned or cut id, and a
    row's draw depends on its generator only."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0, 1.0, 0.2]])
    policy = SamplingPolicy(temperature=0.8, top_k=top_k, banned_ids=frozenset({4}))
    expected = policy.logprobs(logits)[0].exp()
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    for draw in (
        lambda: policy.sample_rows(policy.logprobs(logits.expand(n, -1)), [gen] * n),
        lambda: policy.draw_rows(logits.expand(n, -1), None, [gen] * n),
    ):
        counts = torch.bincount(draw(), minlength=7).double() / n
        assert bool((counts[expected == 0] == 0).all())
        sd = (expected * (1 - expected) / n).sqrt()
        assert bool(((counts - expected).abs() <= 4 * sd + 1e-12).all()), (counts, expected)
    rows = torch.randn(2, 7)
    for seed in range(20):
        alone = policy.draw_rows(rows[1:], None, [torch.Generator().manual_seed(seed)])
        gens = [torch.Generator().manual_seed(99), torch.Generator().manual_seed(seed)]
        assert policy.draw_rows(rows, None, gens).tolist()[1:] == alone.tolist()
    tied = policy.draw_rows(torch.zeros(3, 7), [{0}, set(), {1, 2}], [None] * 3)
    assert 0 not in tied[:1].tolist() and not {1, 2} & set(tied[2:].tolist())


def test_proposer_with_its_own_generator_leaves_the_global_rng_alone(bert):
    def run() -> list[list[int]]:
        gen = torch.Generator().manual_seed(11)
        return MLMProposer(bert, top_k=20, generator=gen).fill(requests_for(bert))

    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = run()
    assert torch.equal(torch.get_rng_state(), before)
    assert run() == first

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
)
from evolve.ga.proposers.base import build_input
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
    for cut, spans in ((len(cont), (0, 1, 2)), (5, (1,)), (3, ())):
        ids, off = build_input(lm.tokenizer, prompt, cont[:cut])
        for s in spans:
            ids[off + s] = mask
        out.append(FillRequest(tuple(ids), tuple(off + s for s in spans)))
    return out


def banned_ids(lm: LoadedModel) -> set[int]:
    return set(lm.tokenizer.all_special_ids)


def test_template_matches_the_tokenizer(lm):
    prompt, cont = encode(lm, PROMPT), encode(lm, CONT)
    ids, off = build_input(lm.tokenizer, prompt, cont)
    t = InputTemplate.from_tokenizer(lm.tokenizer)
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

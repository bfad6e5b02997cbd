"""CausalProposer on a tiny random GPT-2: fills spans, keeps the prompt, picks the best text."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from evolve.ga.individual import Individual
from evolve.ga.operators import OperatorContext, crossover_batch, mutate_batch
from evolve.ga.proposers import CausalProposer, FillRequest, Proposer
from evolve.ga.proposers.causal import spans_of
from evolve.ga.representation import Representation
from evolve.ga.seeding import seed_everything
from scoring.causal import CausalScorer, ContextCache
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"
CONTS = [
    " yellow and tastes sharp when it is old.",
    " a city on the Seine.",
    " the fittest individuals and their spans.",
]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


@pytest.fixture(scope="module")
def rep(gpt2) -> Representation:
    return Representation.build(gpt2, PROMPT)


def requests_for(rep: Representation) -> list[FillRequest]:
    """A one-token span, a three-token span at the end, and two spans in one request."""
    out = []
    for cont, positions in zip(CONTS, [(2,), (-3, -2, -1), (0, 1, 5, 6)], strict=True):
        ids = rep.encode(cont)
        off = len(rep.template.head) + len(rep.prompt_ids)
        pos = tuple(off + (p % len(ids)) for p in positions)
        full = rep.template.build(rep.prompt_ids, ids)
        for p in pos:
            full[p] = rep.placeholder_id
        out.append(FillRequest(tuple(full), pos))
    return out


def test_spans_of():
    assert spans_of([]) == []
    assert spans_of([7, 3, 4, 5, 9, 10]) == [(3, 3), (7, 1), (9, 2)]


def test_fills_only_the_requested_positions(gpt2, rep):
    proposer = CausalProposer(gpt2, candidates=4, top_k=20)
    assert isinstance(proposer, Proposer) and proposer.name == "causal"
    requests = requests_for(rep)
    seed_everything(0)
    filled = proposer.fill(requests)
    banned = set(gpt2.tokenizer.all_special_ids) | {rep.placeholder_id}
    n_prompt = len(rep.template.head) + len(rep.prompt_ids)
    for req, row in zip(requests, filled, strict=True):
        assert len(row) == len(req.input_ids)
        assert row[:n_prompt] == list(req.input_ids[:n_prompt])  # the prompt is never edited
        for p, (old, new) in enumerate(zip(req.input_ids, row, strict=True)):
            if p in req.positions:
                assert new not in banned
            else:
                assert new == old
    assert proposer.stats.spans == 4 and proposer.stats.candidates == 4 * 4


def test_same_seed_same_fills_and_greedy_ignores_padding(gpt2, rep):
    requests = requests_for(rep)
    runs = []
    for _ in range(2):
        seed_everything(3)
        runs.append(CausalProposer(gpt2, candidates=3).fill(requests))
    assert runs[0] == runs[1]
    greedy = CausalProposer(gpt2, temperature=0)
    together = greedy.fill(requests)  # left-padded contexts of different lengths
    alone = [greedy.fill([r])[0] for r in requests]
    assert together == alone


@pytest.mark.parametrize("batched", [True, False])
def test_picks_the_candidate_with_the_likeliest_whole_text(gpt2, rep, monkeypatch, batched):
    """Every sampled candidate is rescored with CausalScorer (whole text after the prompt);
    the chosen fill is the best of its request's candidates, on the batched path (both span
    lengths in one batch, the shorter span feeding its right context meanwhile, twins scored
    once) as on the old one (one round per length)."""
    k = 6
    proposer = CausalProposer(gpt2, candidates=k, batched=batched)
    picks: list[torch.Tensor] = []
    original = proposer._pick

    def spy(logits: torch.Tensor, *guards_and_generators: object) -> torch.Tensor:
        token = original(logits, *guards_and_generators)
        picks.append(token.clone())
        return token

    monkeypatch.setattr(proposer, "_pick", spy)
    requests = requests_for(rep)[:2]  # one span each, lengths 1 and 3
    seed_everything(1)
    filled = proposer.fill(requests)
    if batched:  # step 0 samples both spans' rows, steps 1-2 the 3-token span's only
        assert proposer.stats.rounds == 1 and [len(p) for p in picks] == [2 * k, k, k]
        # rows in order of span + right-context width: the end span (3 + 0) first
        rounds = [[picks[0][k:]], [picks[0][:k], *picks[1:]]]
        assert proposer.stats.rescored <= 2 * k
    else:  # the 1-token span first (first-use order), then 3 tokens
        assert proposer.stats.rounds == 2
        rounds = [picks[:1], picks[1:]]
    scorer = CausalScorer(gpt2, prefix_cache=False)
    n_prompt = len(rep.template.head) + len(rep.prompt_ids)
    for req, row, tokens in zip(requests, filled, rounds, strict=True):
        cands = torch.stack(tokens, dim=1).tolist()  # [candidates, span length]
        start = req.positions[0]
        texts = []
        for c in cands:
            text = list(row)
            text[start : start + len(c)] = c
            texts.append(text[n_prompt:])
        scores = [r.total for r in scorer.score_ids(texts, rep.prompt_ids)]
        chosen = row[start : start + len(cands[0])]
        assert chosen in cands
        assert scores[cands.index(chosen)] == pytest.approx(max(scores), abs=1e-4)
        assert len(set(map(tuple, cands))) > 1  # a real choice was made


def test_no_proposal_probability(gpt2, rep):
    proposer = CausalProposer(gpt2)
    with pytest.raises(UserError, match="Metropolis-Hastings"):
        proposer.fill(requests_for(rep), return_logq=True)
    with pytest.raises(UserError, match="Metropolis-Hastings"):
        proposer.logprob_of(requests_for(rep), [[1], [1, 2, 3], [1, 2, 3, 4]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"candidates": 0}, "candidates must be at least 1"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_bad_arguments(gpt2, kwargs, message):
    with pytest.raises(UserError, match=message):
        CausalProposer(gpt2, **kwargs)


def test_refuses_a_masked_lm(tiny_bert_dir):
    with pytest.raises(UserError, match="needs a causal LM"):
        CausalProposer(load_model(str(tiny_bert_dir), "mlm"))


def test_operators_run_on_causal_tokens(gpt2, rep):
    """The MLM's operator contract, unchanged, on the causal LM's own tokens: spans refilled
    in place, the proposer named in the lineage, crossover seams repaired."""
    proposer = CausalProposer(gpt2, candidates=3)
    ctx = OperatorContext(
        proposer=proposer,
        prompt_ids=rep.prompt_ids,
        tokenizer=gpt2.tokenizer,
        mask_id=rep.placeholder_id,
        template=rep.template,
        max_span=3,
        min_len=3,
        max_len=30,
        indel_prob=0.5,
    )
    seed_everything(5)
    pop = []
    for k, text in enumerate(CONTS):
        ind = Individual(rep.encode(text))
        ind.fitness.values = (0.0,)
        ind.db_id = k + 1
        pop.append(ind)
    before = [list(ind) for ind in pop]
    mutate_batch(pop, ctx=ctx)
    for ind, old in zip(pop, before, strict=True):
        assert not ind.fitness.valid
        assert ind.origin.detail["proposer"] == "causal"
        assert 3 <= len(ind) <= 30
        start, end = ind.origin.span
        assert ind[:start] == old[:start]  # left of the span untouched
        assert rep.placeholder_id not in ind
    a, b = pop[0], pop[2]
    for ind in (a, b):
        ind.fitness.values = (0.0,)
    crossover_batch([(a, b)], ctx=ctx, points="one")
    assert a.origin.op == b.origin.op == "cx_one_point"
    assert a.origin.detail["proposer"] == "causal"
    for ind in (a, b):
        assert 3 <= len(ind) <= 30 and rep.placeholder_id not in ind


def test_samples_with_the_shared_policy_and_an_explicit_generator(gpt2, rep):
    proposer = CausalProposer(gpt2, candidates=3, top_k=20, banned_ids=[7])
    assert proposer.policy.top_k == 20 and 7 in proposer.policy.banned_ids
    assert set(gpt2.tokenizer.all_special_ids) <= proposer.policy.banned_ids

    def run() -> list[list[int]]:
        gen = torch.Generator().manual_seed(5)
        return CausalProposer(gpt2, candidates=3, generator=gen).fill(requests_for(rep))

    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = run()
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG was not drawn from
    assert run() == first


def test_unchanged_texts_are_not_scored_again(gpt2, rep):
    """The evaluator's run cache holds for the causal scorer: a text scored once in a run
    (an elite, a child equal to an earlier text) runs no model the next time."""
    from evolve.ga.config import FitnessConfig
    from evolve.ga.evaluate import Evaluator
    from evolve.ga.objectives import build_objective

    scorer = CausalScorer(gpt2)
    objective = build_objective(FitnessConfig(objective="causal"), None, scorer.name)
    ev = Evaluator(objective, rep, [scorer])
    pop = [Individual(rep.encode(t)) for t in CONTS]
    first = ev.evaluate(pop)
    assert (first.n_evaluated, first.n_cache_hits) == (3, 0)
    passes = scorer.stats.forward_passes
    again = [Individual(list(ind)) for ind in pop]  # same texts, fitness invalid
    again.append(Individual(rep.encode(" something new.")))
    stats = ev.evaluate(again)
    assert (stats.n_evaluated, stats.n_cache_hits) == (1, 3)
    assert scorer.stats.texts == 4  # only the new text reached the scorer
    assert scorer.stats.forward_passes == passes + 1
    assert [a.fitness.values for a in again[:3]] == [p.fitness.values for p in pop]


def test_bf16_proposer_samples_in_a_bf16_copy_and_leaves_the_model_exact(gpt2, rep):
    """dtype="bf16": the proposer runs a bfloat16 copy (one per model object, shared), the
    loaded model stays fp32 for the scorers, and same seed still means same fills."""
    proposer = CausalProposer(gpt2, candidates=4, top_k=20, dtype="bf16")
    assert next(proposer.lm.model.parameters()).dtype == torch.bfloat16
    assert next(gpt2.model.parameters()).dtype == torch.float32
    assert CausalProposer(gpt2, dtype="bf16").lm.model is proposer.lm.model
    requests = requests_for(rep)
    runs = []
    for _ in range(2):
        seed_everything(4)
        runs.append(proposer.fill(requests))
    assert runs[0] == runs[1]
    n_prompt = len(rep.template.head) + len(rep.prompt_ids)
    banned = set(gpt2.tokenizer.all_special_ids) | {rep.placeholder_id}
    for req, row in zip(requests, runs[0], strict=True):
        assert row[:n_prompt] == list(req.input_ids[:n_prompt])
        assert all(row[p] not in banned for p in req.positions)
        others = [p for p in range(len(row)) if p not in req.positions]
        assert [row[p] for p in others] == [req.input_ids[p] for p in others]
    with pytest.raises(UserError, match="fp32 or bf16"):
        CausalProposer(gpt2, dtype="fp16")  # type: ignore[arg-type]


def test_a_mutation_keeps_the_best_candidate_that_changes_the_span(gpt2, rep, monkeypatch):
    """`FillRequest.avoid` (the span's old tokens): the same draws, but the old tokens never
    win while another candidate was drawn, so a mutation does not give its parent back;
    when every candidate is the old fill, that is what comes back."""
    proposer = CausalProposer(gpt2, candidates=6)
    request = requests_for(rep)[0]  # one 1-token span
    at = request.positions[0]
    seed_everything(1)
    first = proposer.fill([request])[0]
    avoid = tuple(first[at : at + 1])
    seed_everything(1)
    changed = proposer.fill([dataclasses.replace(request, avoid=avoid)])[0]
    assert tuple(changed[at : at + 1]) != avoid
    assert changed[:at] == first[:at] and changed[at + 1 :] == first[at + 1 :]
    monkeypatch.setattr(
        proposer,
        "_pick",
        lambda logits, *rest: torch.full_like(logits[:, 0], avoid[0], dtype=torch.long),
    )
    same = proposer.fill([dataclasses.replace(request, avoid=avoid)])[0]
    assert tuple(same[at : at + 1]) == avoid


def test_context_cache_keeps_texts_by_bytes_and_finds_the_longest_prefix(gpt2):
    model = copy.deepcopy(gpt2.model)  # its weights get touched below: not the shared one
    store = ContextCache(model, max_bytes=6_700)
    layer = (torch.arange(24.0).view(2, 4, 3), -torch.arange(24.0).view(2, 4, 3))
    store.put([1, 2, 3, 4, 5], 1, [layer])  # A: keys/values of tokens 1..4, 192 bytes
    store.put([1, 2, 9, 9, 9], 1, [tuple(t + 100 for t in layer)])  # B
    found = store.lookup([1, 2, 3, 4, 7, 7], lo=2, hi=5)
    assert found is not None and torch.equal(found[0][0], layer[0][:, 1:3])  # tokens 2, 3
    nines = store.lookup([1, 2, 9, 9, 9], lo=1, hi=4)  # the longer match wins: tokens 1..3
    assert nines is not None and torch.equal(nines[0][0], layer[0][:, :3] + 100)
    assert store.lookup([5, 5, 5], lo=1, hi=2) is None  # no kept text begins so
    assert store.lookup([1, 2, 3], lo=0, hi=2) is None  # before a kept text's start
    assert store.hits == 2 and store.reused == 5
    store.put(list(range(50)), 0, [(torch.zeros(2, 50, 20), torch.zeros(2, 50, 20))])
    assert store.nbytes == 2 * 192 and store.lookup(list(range(50)), 0, 9) is None  # too big
    assert store.lookup([1, 2, 3, 4], 1, 3) is not None  # A is now the most recent
    store.put(list(range(10)), 0, [(torch.zeros(2, 10, 40), torch.zeros(2, 10, 40))])
    assert store.nbytes == 192 + 6_400  # over 6,700 with both: the least recent (B) went
    only_a = store.lookup([1, 2, 9, 9, 9], 1, 4)  # B's 3 tokens gone: A gives token 1
    assert only_a is not None and torch.equal(only_a[0][0], layer[0][:, :1])
    assert store.lookup([1, 2, 3, 4], 1, 3) is not None
    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # weights changed in place: all forgotten
    assert store.lookup(list(range(10)), 0, 5) is None and store.nbytes == 0


def test_a_scored_text_lends_its_keys_and_values_to_the_next_edit(gpt2, rep):
    """A scorer sharing contexts keeps each text's keys/values; the proposer refilling a
    span of one of them runs only what is new, and proposes as if it had run it all."""
    requests = requests_for(rep)
    n_prompt = len(rep.template.head) + len(rep.prompt_ids)
    parents = [list(rep.template.build(rep.prompt_ids, rep.encode(c)))[n_prompt:] for c in CONTS]
    scorer = CausalScorer(gpt2, share_contexts=True)
    scorer.score_ids(parents, rep.prompt_ids)
    logits_seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    fills = {}
    for reuse in (True, False):
        proposer = CausalProposer(gpt2, candidates=4, reuse_contexts=reuse)
        original = proposer._pick

        def spy(logits, *rest, reuse=reuse, original=original):
            logits_seen[reuse].append(logits.clone())
            return original(logits, *rest)

        proposer._pick = spy  # type: ignore[method-assign]
        seed_everything(6)
        fills[reuse] = proposer.fill(
            [dataclasses.replace(r, seed=40 + i) for i, r in enumerate(requests)]
        )
        assert (proposer.stats.reused_tokens > 0) == reuse
    assert fills[True] == fills[False]
    for a, b in zip(logits_seen[True], logits_seen[False], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_candidates_that_drew_the_same_tokens_share_one_row(gpt2, rep):
    """Candidates of a span that drew the same tokens so far run as one row: at a temperature
    where all 6 draw alike, a fill runs exactly the token positions of a single candidate."""
    request = requests_for(rep)[1]  # a 3-token span at the end
    positions = {}
    for k in (1, 6):
        proposer = CausalProposer(gpt2, candidates=k, temperature=0.01)
        seed_everything(0)
        proposer.fill([request])
        positions[k] = proposer.stats.token_positions
    assert positions[6] == positions[1]

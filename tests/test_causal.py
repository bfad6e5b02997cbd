"""Batched log p(continuation | prefix) equals unbatched scoring (scoring.causal)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from scoring.causal import CausalScorer, length_groups, start_token_id
from scoring.errors import UserError
from scoring.models import LoadedModel, load_causal, load_model
from scoring.results import TokenScores

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " I went",
    " Evolution keeps a population of texts and mutates them with a masked language model.",
    "!",
]
PREFIX = "Once upon a time"


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


def unbatched(lm: LoadedModel, texts: list[str], prefix: str) -> list[list[float]]:
    """One unpadded forward per text with full logits: the reference."""
    tok = lm.tokenizer
    context = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    context = context or [start_token_id(tok)]
    out = []
    for text in texts:
        cont = tok(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = lm.model(torch.tensor([context + cont])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        out.append([float(logp[len(context) - 1 + j, t]) for j, t in enumerate(cont)])
    return out


def _assert_same(results: list[TokenScores], ref: list[list[float]], tol: float = 1e-4) -> None:
    for r, expected in zip(results, ref, strict=True):
        assert r.n_tokens == len(expected) == len(r.token_logprobs)
        assert r.token_logprobs == pytest.approx(expected, abs=tol)
        assert r.total == pytest.approx(math.fsum(expected), abs=tol * max(1, r.n_tokens))


@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize("tokens_per_batch", [2048, 30])
def test_batched_equals_unbatched(gpt2, prefix, tokens_per_batch):
    scorer = CausalScorer(gpt2, tokens_per_batch=tokens_per_batch)
    results = scorer.score(TEXTS, prefix)
    _assert_same(results, unbatched(gpt2, TEXTS, prefix))
    assert len({r.n_tokens for r in results}) == len(TEXTS)  # all lengths differ: padding
    if tokens_per_batch == 30:
        assert scorer.stats.forward_passes > 1
    else:  # one batch, or a few where grouping similar lengths saves more than a pass costs
        lengths = sorted((len(scorer.encode(t)) for t in TEXTS), reverse=True)
        assert scorer.stats.forward_passes == (
            len(length_groups(lengths, tokens_per_batch)) if prefix else 1
        )


def test_empty_prefix_conditions_on_a_start_token(gpt2, tiny_bert_dir, tiny_roberta_dir):
    tok = gpt2.tokenizer
    assert start_token_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>")
    roberta_tok = load_model(str(tiny_roberta_dir), "mlm").tokenizer
    assert start_token_id(roberta_tok) == roberta_tok.bos_token_id  # no <|endoftext|>: BOS
    with pytest.raises(UserError, match="no BOS or EOS"):
        start_token_id(load_model(str(tiny_bert_dir), "mlm").tokenizer)
    scorer = CausalScorer(gpt2)
    first = scorer.score(["The cat"])[0]
    assert first.n_tokens == len(scorer.encode("The cat"))  # the first token is scored too


def test_score_ids_and_cache(gpt2):
    scorer = CausalScorer(gpt2)
    ids = [scorer.encode(t) for t in TEXTS]
    prefix_ids = scorer.encode(PREFIX)
    first = scorer.score_ids(ids, prefix_ids)
    assert first == CausalScorer(gpt2).score(TEXTS, PREFIX)
    rows = scorer.stats.forward_rows
    assert scorer.score_ids([ids[1], ids[1], ids[0]], prefix_ids) == [first[1], first[1], first[0]]
    assert scorer.stats.forward_rows == rows
    assert scorer.stats.cache_hits == 3
    scorer.score_ids([ids[1]])  # another prefix: another key
    assert scorer.stats.forward_rows == rows + 1


def test_empty_and_too_long(gpt2):
    scorer = CausalScorer(gpt2)
    empty = scorer.score_ids([[]])[0]
    assert (empty.total, empty.n_tokens) == (0.0, 0)
    assert empty.mean == -math.inf
    long_ids = [5] * 200
    with pytest.raises(UserError, match=r"text 1 is 201 tokens long .* at most 128"):
        scorer.score_ids([long_ids])


@pytest.mark.real
def test_smollm2_batched_equals_unbatched_and_prefers_fluent_text():
    lm = load_causal()
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        " went to the store to buy some milk.",
        " dog lazy the over jumps fox brown quick The.",
    ]
    results = CausalScorer(lm).score(texts)
    _assert_same(results, unbatched(lm, texts, ""))
    with_prefix = CausalScorer(lm).score(texts[1:], "Yesterday I")
    _assert_same(with_prefix, unbatched(lm, texts[1:], "Yesterday I"))
    assert results[0].total > results[2].total + 10  # fluent beats scrambled, same tokens


def test_amplify_lookahead_starts_a_text_like_the_scorer(gpt2):
    """One start-token rule: with a BOS that is not <|endoftext|> (as SmolLM2's <|im_start|>),
    the amplify lookahead and CausalScorer both condition a text on <|endoftext|>, so they
    give its first token the same log-probability."""
    import copy

    from evolve.experiments.amplify import Lookahead

    tok = copy.deepcopy(gpt2.tokenizer)
    tok.bos_token = tok.convert_ids_to_tokens(7)  # an ordinary token, like a chat marker
    lm = LoadedModel(gpt2.name, "causal", gpt2.model, tok, gpt2.source)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_token_id == 7 != eot
    look = Lookahead(lm)
    assert look.start_id == start_token_id(tok) == eot
    scorer = CausalScorer(lm)
    ids = scorer.encode(TEXTS[0])
    logp = look.extend(look.new_cache(), [look.start_id, *ids], [0])[0]
    first = scorer.score([TEXTS[0]])[0].token_logprobs[0]
    assert first == pytest.approx(float(logp[ids[0]]), abs=1e-4)


@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize("tokens_per_batch", [2048, 7])
def test_prefix_cache_equals_the_full_path(gpt2, prefix, tokens_per_batch):
    """The prompt's key/value cache run once gives today's scores (full prefix + text per
    row) within 1e-5, per token and in total, whatever the batching."""
    texts = [*TEXTS, " a", " a b c d e f g h i j k l m n o p"]
    cached = CausalScorer(gpt2, tokens_per_batch=tokens_per_batch)
    full = CausalScorer(gpt2, tokens_per_batch=tokens_per_batch, prefix_cache=False)
    got, want = cached.score(texts, prefix), full.score(texts, prefix)
    for g, w in zip(got, want, strict=True):
        assert g.n_tokens == w.n_tokens
        assert g.token_logprobs == pytest.approx(w.token_logprobs, abs=1e-5)
        assert g.total == pytest.approx(w.total, abs=1e-5)
    if prefix:  # the prefix is not run again per row: fewer token positions
        assert cached.stats.forward_tokens < full.stats.forward_tokens
    else:  # a lone start token has nothing to cache: the same path
        assert cached.stats.forward_tokens == full.stats.forward_tokens


def test_prefix_runs_once_per_model_and_follows_weight_changes(gpt2, tiny_gpt2_dir):
    from scoring.causal import prefix_cache_of

    shared = load_model(str(tiny_gpt2_dir), "causal")  # the process-wide cached model:
    # this test changes weights in place, so it works on its own copy (its own prefixes),
    # never on the object later tests (and Ray workers' fresh loads) must agree with
    lm = dataclasses.replace(shared, model=copy.deepcopy(shared.model))
    prefixes = prefix_cache_of(lm)
    a = CausalScorer(lm).score(TEXTS, PREFIX)
    computed = prefixes.stats.computed
    b = CausalScorer(lm).score(TEXTS, PREFIX)  # another scorer of the same model
    assert prefixes.stats.computed == computed  # the prompt's cache was reused
    assert prefixes.stats.reused >= 1
    assert [r.token_logprobs for r in a] == [r.token_logprobs for r in b]
    with torch.no_grad():  # an in-place weight change (as an optimiser step makes)
        next(lm.model.parameters()).mul_(1.5)
    c = CausalScorer(lm).score(TEXTS, PREFIX)
    assert prefixes.stats.computed == computed + 1  # the stale prefix was dropped
    d = CausalScorer(lm, prefix_cache=False).score(TEXTS, PREFIX)
    for g, w in zip(c, d, strict=True):
        assert g.token_logprobs == pytest.approx(w.token_logprobs, abs=1e-5)


def test_length_groups_trade_padding_against_passes():
    assert length_groups([], 100) == []
    assert length_groups([5, 5, 5], 100) == [range(0, 3)]  # no padding: one pass
    # 30 + 30 + 2 + 2: one batch pads to 4 x 30 = 120; two cost 60 + 4 + one pass (32)
    assert length_groups([30, 30, 2, 2], 1000) == [range(0, 2), range(2, 4)]
    assert length_groups([30, 29, 28], 1000) == [range(0, 3)]  # padding 3 < a pass
    assert sorted(map(len, length_groups([10] * 5, 20))) == [1, 2, 2]  # the budget
    assert length_groups([50], 20) == [range(0, 1)]  # one row may exceed the budget

"""The Scorer protocol, the shared ScoreCache, scorer names and the package's public API."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers_proc import child_env

import scoring
from scoring import (
    PLL_VARIANTS,
    CausalScorer,
    PLLScorer,
    ScoreCache,
    Scorer,
    TokenScores,
    causal_scorer_name,
    load_model,
    pll_scorer_name,
)
from scoring.base import Key

A: Key = ((), (1, 2))
B: Key = ((), (3,))
C: Key = ((9,), (1, 2))  # same continuation as A, other prefix: another key


def scores_of(keys: list[Key]) -> list[TokenScores]:
    """A fake computation: one log-prob of -1 per token, minus the first prefix id."""
    return [TokenScores.from_logprobs([-1.0 - sum(p[:1])] * len(c)) for p, c in keys]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[Key]] = []

    def __call__(self, keys: list[Key]) -> list[TokenScores]:
        self.calls.append(list(keys))
        return scores_of(keys)


def test_cache_computes_each_distinct_missing_key_once_in_first_seen_order():
    cache, compute = ScoreCache(10), Recorder()
    out = cache.resolve([B, A, B, C, A], compute)
    assert compute.calls == [[B, A, C]]
    assert out == [scores_of([k])[0] for k in (B, A, B, C, A)]
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 3)  # the two repeats were hits
    assert cache.resolve([A, C], compute) == scores_of([A, C])
    assert len(compute.calls) == 1 and cache.hits == 4  # both answered from the LRU


def test_cache_empty_continuation_is_never_computed_nor_stored():
    cache, compute = ScoreCache(10), Recorder()
    empty: Key = ((1,), ())
    out = cache.resolve([empty, empty], compute)
    assert out == [TokenScores(0.0, (), 0)] * 2 and compute.calls == []
    assert empty not in cache and (cache.hits, cache.misses) == (1, 0)


def test_cache_is_lru_bounded_and_size_zero_remembers_nothing():
    cache, compute = ScoreCache(2), Recorder()
    cache.resolve([A, B], compute)
    cache.resolve([A], compute)  # A is now the most recently used
    cache.resolve([C], compute)  # evicts B
    assert A in cache and C in cache and B not in cache and len(cache) == 2
    off, compute_off = ScoreCache(0), Recorder()
    off.resolve([A], compute_off)
    off.resolve([A, A], compute_off)
    assert compute_off.calls == [[A], [A]] and len(off) == 0 and off.hits == 1
    cache.clear()
    assert len(cache) == 0


def test_cache_refuses_a_computation_that_loses_results():
    with pytest.raises(RuntimeError, match="1 scores for 2"):
        ScoreCache().resolve([A, B], lambda keys: scores_of(keys[:1]))


def test_token_scores_from_logprobs_sums_exactly():
    s = TokenScores.from_logprobs([0.1] * 10)
    assert s.total == 1.0 and s.n_tokens == 10 and s.token_logprobs == (0.1,) * 10


def test_names():
    assert PLL_VARIANTS == ("original", "word_l2r")
    assert pll_scorer_name("original", "tiny-bert") == "pll/original/tiny-bert"
    assert pll_scorer_name("word_l2r", "tiny-bert", bf16=True) == "pll/word_l2r/tiny-bert/bf16"
    assert causal_scorer_name("smollm2-135m") == "causal/smollm2-135m"


def test_both_scorers_follow_the_protocol_and_carry_their_stored_name(tiny_bert_dir, tiny_gpt2_dir):
    mlm = load_model(str(tiny_bert_dir), "mlm")
    clm = load_model(str(tiny_gpt2_dir), "causal")
    scorers: list[Scorer] = [
        PLLScorer(mlm),
        PLLScorer(mlm, "word_l2r", dtype="bf16"),
        CausalScorer(clm),
    ]
    assert [s.name for s in scorers] == [
        f"pll/original/{tiny_bert_dir}",
        f"pll/word_l2r/{tiny_bert_dir}/bf16",
        f"causal/{tiny_gpt2_dir}",
    ]
    for s in scorers:
        assert isinstance(s, Scorer)
        by_text = s.score([" the cat", " the cat", ""], "a")
        by_ids = s.score_ids([s.lm.tokenizer(" the cat", add_special_tokens=False)["input_ids"]])
        assert by_text[0] == by_text[1] and by_text[2] == TokenScores(0.0, (), 0)
        assert by_text[0].n_tokens == by_ids[0].n_tokens > 0


def test_public_api_and_cheap_import():
    for name in scoring.__all__:
        assert getattr(scoring, name) is not None
    code = "import sys, scoring; print('transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env()
    )
    assert out.stdout.strip() == "False"  # models (and transformers) load on first use

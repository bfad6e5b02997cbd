"""Batched PLL equals the one-forward-per-position reference, for both variants (scoring.pll)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from scoring.errors import UserError
from scoring.models import LoadedModel, load_mlm, load_model
from scoring.pll import PLLScorer, mask_matrix, naive_pll
from scoring.results import TokenScores
from scoring.words import word_starts

TEXTS = [
    "Unbelievably, the cheesemongers were reorganising.",
    "The cat.",
    "Mozzarella is white so you can see it at night.",
    "A genetic algorithm selects the fittest individuals.",
]
PREFIX = "The capital of France"
TOL = 1e-4


@pytest.fixture(scope="module", params=["bert", "roberta"])
def lm(request, tiny_bert_dir, tiny_roberta_dir) -> LoadedModel:
    folder = tiny_bert_dir if request.param == "bert" else tiny_roberta_dir
    return load_model(str(folder), "mlm")


_naive_memo: dict[tuple[str, str, str], list[TokenScores]] = {}


def _naive(lm: LoadedModel, prefix: str, variant: str) -> list[TokenScores]:
    """naive_pll of TEXTS, computed once per model, prefix and variant."""
    key = (lm.source, prefix, variant)
    if key not in _naive_memo:
        _naive_memo[key] = naive_pll(lm, TEXTS, prefix, variant)  # type: ignore[arg-type]
    return _naive_memo[key]


def _assert_same(ours: list[TokenScores], ref: list[TokenScores], tol: float = TOL) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.n_tokens == b.n_tokens == len(a.token_logprobs)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=tol)
        assert a.total == pytest.approx(b.total, abs=tol)


@pytest.mark.parametrize("variant", ["original", "word_l2r"])
@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize("tokens_per_batch", [4096, 128])
def test_matches_naive(lm, variant, prefix, tokens_per_batch):
    scorer = PLLScorer(lm, variant=variant, tokens_per_batch=tokens_per_batch)
    ours = scorer.score(TEXTS, prefix)
    _assert_same(ours, _naive(lm, prefix, variant))
    assert len({r.n_tokens for r in ours}) > 1  # texts of different lengths
    stats = scorer.stats
    assert stats.forward_rows == sum(r.n_tokens for r in ours)
    longest = max(r.n_tokens for r in ours) + len(scorer.encode(prefix)) + 2
    # no pass is over budget (a single row longer than the budget runs alone)
    assert stats.forward_tokens <= stats.forward_passes * max(tokens_per_batch, longest)
    if tokens_per_batch == 128:  # each text's masked copies are split over several passes
        assert stats.forward_passes > len(TEXTS)
    else:  # the masked copies of different texts share passes
        assert stats.forward_passes < len(TEXTS)
    assert scorer.gathers_head  # BERT and RoBERTa heads run only at the masked positions


def test_prefix_is_context_only(lm):
    scorer = PLLScorer(lm)
    with_prefix = scorer.score(["the cat sat"], PREFIX)[0]
    alone = scorer.score(["the cat sat"])[0]
    assert with_prefix.n_tokens == alone.n_tokens == len(scorer.encode("the cat sat"))
    assert with_prefix.total != pytest.approx(alone.total, abs=1e-6)  # the context matters


def test_score_equals_score_ids(lm):
    scorer = PLLScorer(lm)
    ids = [scorer.encode(t) for t in TEXTS]
    by_text = scorer.score(TEXTS, PREFIX)
    fresh = PLLScorer(lm)
    assert fresh.score_ids(ids, scorer.encode(PREFIX)) == by_text


def test_word_l2r_differs_only_for_multi_piece_words(lm):
    tok = lm.tokenizer
    original, l2r = PLLScorer(lm, "original"), PLLScorer(lm, "word_l2r")
    multi = TEXTS[0]
    assert not all(word_starts(tok, original.encode(multi)))
    a, b = original.score([multi])[0], l2r.score([multi])[0]
    assert abs(a.total - b.total) > 1e-5
    # the last piece of a word has nothing of its word to its right: same score either way
    ids = original.encode(multi)
    starts = word_starts(tok, ids) + [True]
    for j, (x, y) in enumerate(zip(a.token_logprobs, b.token_logprobs, strict=True)):
        if starts[j + 1]:  # last piece of its word: nothing to its right is masked
            assert x == pytest.approx(y, abs=1e-5)
    words = ["the", "is", "and", "it", "of", "to", "a", "at", "so"]
    single = "".join(" " + w for w in words if len(original.encode(" " + w)) == 1)
    assert len(single.split()) >= 3
    assert all(word_starts(tok, original.encode(single)))
    assert original.score([single])[0].total == pytest.approx(l2r.score([single])[0].total)


def test_mask_matrix(tiny_bert_dir):
    tok = load_model(str(tiny_bert_dir), "mlm").tokenizer
    ids = list(tok("the cheesemongers", add_special_tokens=False)["input_ids"])
    n = len(ids)
    assert n >= 3 and word_starts(tok, ids)[:2] == [True, True]
    assert torch.equal(mask_matrix(tok, [], ids, "original"), torch.eye(n, dtype=torch.bool))
    m = mask_matrix(tok, [], ids, "word_l2r")
    assert m[0].tolist() == [True] + [False] * (n - 1)  # "the": itself only
    assert m[1].tolist() == [False] + [True] * (n - 1)  # first piece: the rest of its word
    assert m[n - 1].tolist() == [False] * (n - 1) + [True]
    # a continuation that starts mid-word: its first token is not a word start
    m2 = mask_matrix(tok, ids[:2], ids[2:], "word_l2r")
    assert m2[0].tolist() == [True] * (n - 2)


def test_cache_and_stats(lm):
    scorer = PLLScorer(lm, cache_size=3)
    first = scorer.score(TEXTS[:2])
    rows = scorer.stats.forward_rows
    again = scorer.score([TEXTS[1], TEXTS[0], TEXTS[1]])
    assert again == [first[1], first[0], first[1]]
    assert scorer.stats.forward_rows == rows  # all from the cache
    assert scorer.stats.cache_hits == 3 and scorer.stats.texts == 5
    # the same text with a different prefix is a different key
    scorer.score([TEXTS[0]], PREFIX)
    assert scorer.stats.forward_rows > rows
    # duplicates within one call are computed once; the cache is bounded (LRU)
    fresh = PLLScorer(lm, cache_size=2)
    fresh.score([TEXTS[2], TEXTS[2], TEXTS[3]])
    assert fresh.stats.cache_hits == 1
    assert fresh.stats.forward_rows == len(fresh.encode(TEXTS[2])) + len(fresh.encode(TEXTS[3]))
    fresh.score([TEXTS[0]])  # evicts TEXTS[2], the least recently used
    before = fresh.stats.forward_rows
    fresh.score([TEXTS[3]])
    assert fresh.stats.forward_rows == before
    fresh.score([TEXTS[2]])
    assert fresh.stats.forward_rows > before


def test_empty_continuation(lm):
    scorer = PLLScorer(lm)
    result = scorer.score_ids([[]], scorer.encode(PREFIX))[0]
    assert (result.total, result.n_tokens, result.token_logprobs) == (0.0, 0, ())
    assert result.mean == -math.inf
    assert scorer.stats.forward_passes == 0


def test_too_long_raises(lm):
    scorer = PLLScorer(lm)
    long_text = " ".join(["cheese"] * 80)
    with pytest.raises(UserError, match=r"text 2 is \d+ tokens long .* at most 64") as info:
        scorer.score(["fine", long_text])
    assert "\n" not in str(info.value)
    ok = scorer.encode(long_text)[: 64 - 2]
    assert scorer.score_ids([ok])[0].n_tokens == 62  # exactly at the limit is fine
    with pytest.raises(UserError, match="at most 64"):
        scorer.score_ids([ok], [5])


def test_bad_arguments(lm):
    with pytest.raises(UserError, match="variant"):
        PLLScorer(lm, variant="nope")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="dtype"):
        PLLScorer(lm, dtype="fp8")  # type: ignore[arg-type]


def test_bf16_is_close(lm):
    exact = PLLScorer(lm).score(TEXTS)
    approx = PLLScorer(lm, dtype="bf16").score(TEXTS)
    for a, b in zip(exact, approx, strict=True):
        assert b.n_tokens == a.n_tokens
        assert math.isfinite(b.total)
        assert b.total == pytest.approx(a.total, abs=0.1 * a.n_tokens)


@pytest.fixture(scope="module")
def bench():
    """bench/pll_speed.py as a module (bench/ is scripts, not a package)."""
    name = "mlm_evolve_bench_pll_speed"
    path = Path(__file__).resolve().parents[1] / "bench" / "pll_speed.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


def test_matches_minicons_style_reference(lm, bench):
    scorer = PLLScorer(lm)
    ids = [scorer.encode(t) for t in TEXTS]
    minicons = bench.minicons_style_pll(lm, ids, batch_size=3)
    for ours, theirs in zip(scorer.score_ids(ids), minicons, strict=True):
        assert ours.token_logprobs == pytest.approx(theirs, abs=TOL)


def _other_architectures(tokenizer, vocab: int) -> dict[str, torch.nn.Module]:
    from transformers import (
        AlbertConfig,
        AlbertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
        ElectraConfig,
        ElectraForMaskedLM,
    )

    torch.manual_seed(3)
    small = dict(vocab_size=vocab, max_position_embeddings=64, pad_token_id=0)
    layers = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return {
        "distilbert": DistilBertForMaskedLM(
            DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, **small)
        ),
        "albert": AlbertForMaskedLM(
            AlbertConfig(embedding_size=16, hidden_size=32, **layers, **small)
        ),
        "electra": ElectraForMaskedLM(
            ElectraConfig(embedding_size=16, hidden_size=32, **layers, **small)
        ),
    }


def test_other_architectures_gather_the_head(tiny_bert_dir):
    base = load_model(str(tiny_bert_dir), "mlm")
    for name, model in _other_architectures(base.tokenizer, 180).items():
        lm = LoadedModel(name, "mlm", model.eval(), base.tokenizer, "config")
        scorer = PLLScorer(lm, variant="word_l2r", tokens_per_batch=64)
        assert scorer.gathers_head, name
        _assert_same(scorer.score(TEXTS, PREFIX), naive_pll(lm, TEXTS, PREFIX, "word_l2r"))


def test_unknown_head_falls_back_to_full_logits(tiny_bert_dir):
    base = load_model(str(tiny_bert_dir), "mlm")

    class Scaled(torch.nn.Module):
        """A model whose logits no known head reproduces (they are scaled after the head)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.config = inner.config

        @property
        def base_model(self) -> torch.nn.Module:
            return self.inner.bert

        @property
        def cls(self) -> torch.nn.Module:
            return self.inner.cls

        def forward(self, input_ids, attention_mask=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            out.logits = out.logits * 0.5
            return out

    lm = LoadedModel("scaled", "mlm", Scaled(base.model).eval(), base.tokenizer, "config")
    scorer = PLLScorer(lm, tokens_per_batch=64)
    assert not scorer.gathers_head
    _assert_same(scorer.score(TEXTS), naive_pll(lm, TEXTS))


@pytest.mark.real
def test_packaged_tiny_bert():
    lm = load_mlm()
    texts = ["The cheesemongers were reorganising their warehouses.", "The cat sat on the mat."]
    for variant in ("original", "word_l2r"):
        ours = PLLScorer(lm, variant=variant).score(texts, "Yesterday")
        _assert_same(ours, naive_pll(lm, texts, "Yesterday", variant))
        assert all(-20 < r.mean < 0 for r in ours)

"""scoring.metrics on examples small enough to count by hand."""

from __future__ import annotations

import math

import pytest

from scoring.metrics import (
    distinct_n,
    length_words,
    ngrams,
    rep_n,
    self_bleu,
    sentence_bleu,
    words,
)


def toks(text: str) -> list[str]:
    return text.split()


def test_words_are_lowercased_words_and_punctuation() -> None:
    assert words("Don't stop,\nit's WHITE!") == ["don't", "stop", ",", "it's", "white", "!"]
    assert length_words(" Cheddar is yellow.") == 4
    assert words("") == []


def test_ngrams() -> None:
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


def test_rep_n_counts_repeated_ngrams_within_a_text() -> None:
    # bigrams: the-cat, cat-the, the-cat, cat-the, the-cat: 2 unique of 5
    assert rep_n("the cat the cat the cat", 2) == pytest.approx(1 - 2 / 5)
    # trigrams: the-cat-the, cat-the-cat, the-cat-the, cat-the-cat: 2 unique of 4
    assert rep_n("the cat the cat the cat", 3) == pytest.approx(0.5)
    assert rep_n("a b c d", 2) == 0.0
    assert rep_n("The cat. the cat.", 2) == pytest.approx(1 - 3 / 5)  # case-insensitive
    assert rep_n("one", 2) == 0.0  # no bigram at all: nothing repeats


def test_distinct_n_pools_the_set() -> None:
    assert distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)
    assert distinct_n(["a b", "a c"], 2) == 1.0
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert distinct_n([], 1) == 0.0


def test_sentence_bleu_hand_computed() -> None:
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0/1 -> smoothed to 0.1/1; equal lengths: BP = 1
    got = sentence_bleu(toks("a b c d"), [toks("a b c e")])
    assert got == pytest.approx((0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25)
    # p1 = p2 = 1, no 3- or 4-grams: 0.1 each; c = 2 < r = 4: BP = exp(1 - 4/2)
    got = sentence_bleu(toks("a b"), [toks("a b c d")])
    assert got == pytest.approx(math.exp(-1) * (0.1 * 0.1) ** 0.25)
    # counts are clipped: "the the the" against "the cat" matches "the" once
    got = sentence_bleu(toks("the the the"), [toks("the cat")], max_n=1)
    assert got == pytest.approx(1 / 3)
    # the closest reference length sets the brevity penalty; the best count clips
    got = sentence_bleu(toks("a b c"), [toks("a b"), toks("a b c x y z")], max_n=2)
    assert got == pytest.approx(1.0)  # c = 3 > closest r = 2; p1 = p2 = 1
    assert sentence_bleu(toks("a b c d"), [toks("a b c d")]) == pytest.approx(1.0)
    assert sentence_bleu(toks("x y"), [toks("a b")]) == 0.0  # nothing in common
    assert sentence_bleu([], [toks("a")]) == 0.0


def test_self_bleu() -> None:
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx((0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25)
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert self_bleu(["only one"]) is None
    assert self_bleu(["a b c d", "w x y z"]) == 0.0

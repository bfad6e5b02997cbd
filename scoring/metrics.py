"""Model-free text statistics for comparing generators: repetition, diversity, length.

A decoding method can score well under a language model by repeating itself (beam search's
loops) or by collapsing onto one text (a converged population), so the comparison table puts
these next to the model scores:

- ``rep_n`` (within one text): the share of its n-grams that repeat an earlier n-gram of the
  same text, ``1 - unique / total`` (seq-rep-n of Welleck et al. 2019, "Neural text
  degeneration with unlikelihood training"). 0 = no repetition.
- ``distinct_n`` (across a set): unique n-grams of all texts over all n-grams (Li et al.
  2016, "A diversity-promoting objective"). 1 = no n-gram is used twice.
- ``self_bleu`` (within a set): the mean BLEU-4 of each text against the others as
  references (Zhu et al. 2018, Texygen). 1 = the texts are copies of one another.

Everything works on word-level tokens (``words``): lower-cased runs of letters and digits
(apostrophes inside a word kept) and single punctuation marks. Lower-casing matters here
because an uncased MLM writes lower-case text while a causal LM keeps case, and repetition
should not depend on that. BLEU is written out below (about 30 lines) rather than taken from
nltk or sacrebleu: neither is a dependency, and the smoothing choice has to be explicit.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
BLEU_MAX_N = 4
BLEU_EPSILON = 0.1  # smoothing method 1 of Chen & Cherry (2014), as nltk's method1


def words(text: str) -> list[str]:
    """Word-level tokens: lower-cased words (``don't`` is one) and punctuation marks."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of ``tokens`` in order (none when there are fewer than ``n`` tokens)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def length_words(text: str) -> int:
    """Number of word-level tokens (punctuation marks count as tokens)."""
    return len(words(text))


def rep_n(text: str, n: int) -> float:
    """Share of the text's n-grams that repeat an earlier one; 0.0 when it has no n-grams."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams, pooled across ``texts``; 0.0 when there are none."""
    pooled = [g for text in texts for g in ngrams(words(text), n)]
    if not pooled:
        return 0.0
    return len(set(pooled)) / len(pooled)


def sentence_bleu(
    hypothesis: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = BLEU_MAX_N,
    epsilon: float = BLEU_EPSILON,
) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (Papineni et al. 2002).

    Uniform weights over 1..max_n-gram precisions, counts clipped by the most any one
    reference holds, brevity penalty against the closest reference length (the shorter on a
    tie). A precision with no matches becomes ``epsilon / count`` (Chen & Cherry 2014,
    method 1) so that short texts without a 4-gram match are not all scored 0; with no
    unigram in common the score is 0, as in nltk.
    """
    hyp_len = len(hypothesis)
    if hyp_len == 0 or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        max_ref: Counter[tuple[str, ...]] = Counter()
        for ref in references:
            for gram, c in Counter(ngrams(ref, n)).items():
                max_ref[gram] = max(max_ref[gram], c)
        matched = sum(min(c, max_ref[gram]) for gram, c in counts.items())
        if n == 1 and matched == 0:
            return 0.0  # nothing in common: smoothing must not invent a score
        total = max(1, sum(counts.values()))  # a hypothesis shorter than n: 0 of 1
        log_precision += math.log((matched if matched else epsilon) / total)
    ref_len = min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision / max_n)


def self_bleu(texts: Sequence[str], max_n: int = BLEU_MAX_N) -> float | None:
    """Mean BLEU of each text against all the others; None for fewer than two texts."""
    if len(texts) < 2:
        return None
    tokenised = [words(t) for t in texts]
    scores = [
        sentence_bleu(hyp, tokenised[:i] + tokenised[i + 1 :], max_n)
        for i, hyp in enumerate(tokenised)
    ]
    return sum(scores) / len(scores)

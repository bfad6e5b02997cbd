"""One protocol for every scorer, and the cache and duplicate lookup they share.

A scorer turns continuations (after an optional prefix) into `TokenScores`: PLL under a
masked LM (`scoring.pll.PLLScorer`), log-probability under a causal LM
(`scoring.causal.CausalScorer`), or anything else that follows `Scorer`. Callers (fitness,
comparison, rescoring a run) depend on the protocol only; ``name`` is what the scores are
stored under (`scoring.names`).

Both built-in scorers share one path (`CachedScorer`, after minicons' single ``LMScorer``
base): tokenise prefix and texts separately, refuse too-long inputs, answer repeats from a
`ScoreCache`, and run the model only on the distinct continuations left; each subclass says
how long an input is and how to compute per-token log-probabilities.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

from scoring.models import LoadedModel
from scoring.results import EMPTY, TokenScores
from scoring.template import text_ids, texts_ids

Key = tuple[tuple[int, ...], tuple[int, ...]]  # (prefix ids, continuation ids)


@runtime_checkable
class Scorer(Protocol):
    """What every scorer offers: scores of continuations after a prefix, by text or by ids."""

    name: str  # the stored scorer name, e.g. "pll/original/tiny-bert", "causal/smollm2-135m"
    lm: LoadedModel

    def score_ids(
        self, continuations: Sequence[Sequence[int]], prefix_ids: Sequence[int] = ()
    ) -> list[TokenScores]:
        """Scores of token-id continuations (no special tokens) after ``prefix_ids``."""
        ...

    def score(self, texts: Sequence[str], prefix: str = "") -> list[TokenScores]:
        """Scores of each text after ``prefix``; prefix and texts are tokenised separately."""
        ...


class ScoreCache:
    """Scores by (prefix ids, continuation ids): an LRU of ``size`` entries (0 = no memory)
    plus, within one `resolve` call, each distinct key computed once.

    ``hits`` counts keys answered without computing (from the LRU or a repeat in the same
    call); ``misses`` counts the distinct keys computed. Empty continuations score `EMPTY`
    without either.
    """

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._lru: OrderedDict[Key, TokenScores] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        self._lru.clear()

    def get(self, key: Key) -> TokenScores | None:
        """The cached scores of ``key`` (now the most recently used), or None."""
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
        return hit

    def put(self, key: Key, scores: TokenScores) -> None:
        """Remember ``scores``; the least recently used entry goes when the LRU is full."""
        if self.size <= 0:
            return
        self._lru[key] = scores
        if len(self._lru) > self.size:
            self._lru.popitem(last=False)

    def resolve(
        self, keys: Sequence[Key], compute: Callable[[list[Key]], Sequence[TokenScores]]
    ) -> list[TokenScores]:
        """Scores of ``keys`` in order: cached ones from the LRU, the rest from one call of
        ``compute`` on the distinct missing keys (first-seen order), which are then cached."""
        found: dict[Key, TokenScores] = {}
        todo: list[Key] = []
        for key in keys:
            if key in found:
                self.hits += 1
                continue
            hit = self.get(key)
            if hit is not None:
                self.hits += 1
                found[key] = hit
                continue
            found[key] = EMPTY  # the result for an empty continuation, else a placeholder
            if key[1]:
                todo.append(key)
        if todo:
            computed = compute(todo)
            if len(computed) != len(todo):
                raise RuntimeError(f"compute returned {len(computed)} scores for {len(todo)}")
            self.misses += len(todo)
            for key, scores in zip(todo, computed, strict=True):
                found[key] = scores
                self.put(key, scores)
        return [found[k] for k in keys]


@dataclass
class ScorerStats:
    """Counters since the scorer was made (or since ``reset``); subclasses add model costs."""

    texts: int = 0  # continuations requested
    cache_hits: int = 0  # answered from the cache (or a duplicate in the same call)

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


class CachedScorer:
    """The shared half of the built-in scorers (see the module docstring).

    Subclasses set ``name`` and ``stats`` and implement `_check_lengths` and `_compute`.
    """

    name: str
    stats: ScorerStats

    def __init__(self, lm: LoadedModel, cache_size: int = 200_000) -> None:
        self.lm = lm
        self.cache = ScoreCache(cache_size)

    @property
    def cache_size(self) -> int:
        return self.cache.size

    def clear_cache(self) -> None:
        self.cache.clear()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens, as ``score`` tokenises it."""
        return text_ids(self.lm.tokenizer, text)

    def score(self, texts: Sequence[str], prefix: str = "") -> list[TokenScores]:
        """Scores of each text after ``prefix``; prefix and texts are tokenised separately.

        Each text is tokenised on its own, as given: with byte-level BPE (RoBERTa, GPT-2) a
        text that continues a prefix with a new word should start with a space.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return []
        prefix_ids = self.encode(prefix) if prefix else []
        conts = texts_ids(self.lm.tokenizer, texts)
        return self.score_ids(conts, prefix_ids)

    def score_ids(
        self, continuations: Sequence[Sequence[int]], prefix_ids: Sequence[int] = ()
    ) -> list[TokenScores]:
        """Scores of token-id continuations (no special tokens) after ``prefix_ids``."""
        prefix = tuple(int(i) for i in prefix_ids)
        keys = [(prefix, tuple(int(i) for i in c)) for c in continuations]
        self._check_lengths(prefix, [cont for _, cont in keys])
        self.stats.texts += len(keys)
        hits = self.cache.hits
        out = self.cache.resolve(keys, lambda todo: self._scores(prefix, todo))
        self.stats.cache_hits += self.cache.hits - hits
        return out

    def _scores(self, prefix: tuple[int, ...], todo: list[Key]) -> list[TokenScores]:
        lps = self._compute(prefix, [cont for _, cont in todo])
        return [TokenScores.from_logprobs(x) for x in lps]

    # -- for subclasses --------------------------------------------------------------------

    def _check_lengths(self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]) -> None:
        """Raise `UserError` for the first input too long for the model."""
        raise NotImplementedError

    def _compute(
        self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[Sequence[float]]:
        """Per-token log-probabilities of each (distinct, non-empty) continuation, in order."""
        raise NotImplementedError

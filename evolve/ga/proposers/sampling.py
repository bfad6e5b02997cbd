"""The sampling policy every proposer draws tokens with: temperature, top-k, banned ids,
and the n-gram guard.

`SamplingPolicy` turns a model's raw logits into the log-probabilities actually sampled
from (banned ids removed, divided by the temperature, cut to the ``top_k`` likeliest; at
temperature 0 all mass on the argmax) and draws one token per row from them. The MLM and
causal proposers both use it, so the two sample alike, and Metropolis-Hastings reads its
proposal probabilities (``fill(return_logq=True)``, ``logprob_of``) off the same
`logprobs` the draw used.

Draws come from an explicit ``torch.Generator``, or the global torch RNG when it is None
(what a run seeded by `evolve.ga.seeding` uses, so one seed reproduces a run);
`sample_rows` gives each row its own generator (per-request seeds, `FillRequest.seed`), and
`draw_rows` does the same by inverse CDF on each row's top-k, several times faster on a large
vocabulary (the causal proposer's draw; the MLM proposer keeps `sample_rows`). The generator
must live on the device of the logits.

The n-gram guard (``no_repeat_ngram`` = N > 0, as ``no_repeat_ngram_size`` of Hugging Face's
``generate``): a token may not be put at a position where it would complete an N-gram that
already occurs elsewhere in the guarded region of the row (the continuation, with the
prompt's last N - 1 tokens as context, see `FillRequest.region`). Unlike ``generate``, a fill
also sees right context, so an N-gram counts as soon as all its tokens are known: tokens still
to be filled are unknown (None in `ngram_bans`). The guard bans ids before temperature and
top-k, so it is part of the distribution sampled from: MH proposal probabilities
(`logprobs` with the same ``bans``) stay exact.

Validation of temperature and top-k is here, once (`SamplingPolicy.validate`): building a
policy checks them, and config validation calls the same function.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scoring.errors import UserError
from scoring.models import LoadedModel

WORD_START_MARKS = ("Ġ", "▁")  # byte-level BPE and SentencePiece: a token that begins a word


@dataclass(frozen=True)
class SamplingPolicy:
    """How logits become sampled tokens (see the module docstring)."""

    temperature: float = 1.0  # the model's own distribution; 0 = greedy argmax
    top_k: int = 0  # 0 = the full vocabulary
    banned_ids: frozenset[int] = frozenset()  # never proposed (special tokens, placeholders)
    no_repeat_ngram: int = 0  # N > 0: never complete an N-gram that occurs already; 0 = off
    _masks: dict[tuple[int, str], torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.validate(self.temperature, self.top_k, self.no_repeat_ngram)
        object.__setattr__(self, "no_repeat_ngram", int(self.no_repeat_ngram))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "banned_ids", frozenset(int(i) for i in self.banned_ids))

    @staticmethod
    def validate(temperature: float, top_k: int, no_repeat_ngram: int = 0) -> None:
        """Raise `UserError` unless temperature is finite and >= 0, top_k is >= 0 and
        no_repeat_ngram is 0 (off) or >= 1."""
        if int(no_repeat_ngram) != no_repeat_ngram or no_repeat_ngram < 0:
            raise UserError(
                f"no_repeat_ngram must be a whole number >= 1, or 0 for off (got {no_repeat_ngram})"
            )
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise UserError(f"temperature must be a finite number >= 0 (got {temperature})")
        if int(top_k) != top_k or top_k < 0:
            raise UserError(
                f"top_k must be a whole number >= 0, 0 meaning the full vocabulary (got {top_k})"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def banning(self, ids: Iterable[int]) -> SamplingPolicy:
        """The same policy with ``ids`` banned as well."""
        return SamplingPolicy(
            self.temperature, self.top_k, self.banned_ids | frozenset(ids), self.no_repeat_ngram
        )

    @property
    def guards(self) -> bool:
        """True when the n-gram guard is on (fills must say their context: `bans_for`)."""
        return self.no_repeat_ngram > 0

    def bans_for(self, region: Sequence[int | None], index: int) -> set[int]:
        """Ids the n-gram guard forbids at ``region[index]`` (empty when the guard is off)."""
        if not self.guards:
            return set()
        return ngram_bans(region, index, self.no_repeat_ngram)

    def banned_count(self, vocab_size: int) -> int:
        """How many of the ids ``0 .. vocab_size - 1`` are banned."""
        return sum(1 for i in self.banned_ids if 0 <= i < vocab_size)

    def banned_mask(self, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool [vocab_size]: True at banned ids (made once per size and device)."""
        key = (int(vocab_size), str(device))
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            ids = sorted(i for i in self.banned_ids if 0 <= i < vocab_size)
            if ids:
                mask[ids] = True
            mask = mask.to(device)
            self._masks[key] = mask
        return mask

    def logprobs(
        self, logits: torch.Tensor, bans: Sequence[Collection[int]] | None = None
    ) -> torch.Tensor:
        """The distribution sampled from, as log-probabilities [..., V] (banned ids at -inf;
        at temperature 0, 0 at the argmax and -inf elsewhere).

        ``bans``: per row of a 2-D ``logits``, more ids to forbid there (the n-gram guard's,
        `bans_for`). A row whose every id would be banned keeps its guard bans unapplied
        rather than sampling from nothing (it cannot happen with a real vocabulary: a
        region of L tokens bans at most 2 * N * L ids).
        """
        logits = self._banned(logits, bans)
        if self.greedy:
            best = logits.argmax(dim=-1, keepdim=True)
            out = torch.full_like(logits, -math.inf)
            return out.scatter_(-1, best, 0.0)
        logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return torch.log_softmax(logits, dim=-1)

    def _banned(
        self, logits: torch.Tensor, bans: Sequence[Collection[int]] | None
    ) -> torch.Tensor:
        """``logits`` with the banned ids, and each row's ``bans``, at -inf."""
        banned = self.banned_mask(logits.shape[-1], logits.device)
        logits = logits.masked_fill(banned, -math.inf)
        if bans is not None and any(bans):
            if logits.dim() != 2 or len(bans) != logits.shape[0]:
                raise ValueError(f"{len(bans)} ban sets for logits of shape {tuple(logits.shape)}")
            extra = torch.zeros(logits.shape, dtype=torch.bool)
            for r, ids in enumerate(bans):
                if ids:
                    extra[r, sorted(ids)] = True
            extra = extra.to(logits.device) | banned
            keep = extra.all(dim=-1, keepdim=True)  # nothing left: leave the row unguarded
            logits = logits.masked_fill(extra & ~keep, -math.inf)
        return logits

    def sample(
        self, logprobs: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One token per row of `logprobs` (the argmax at temperature 0, else a draw from
        ``generator``, or the global torch RNG when it is None)."""
        if self.greedy:
            return logprobs.argmax(dim=-1)
        return torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)

    def sample_rows(
        self, logprobs: torch.Tensor, generators: Sequence[torch.Generator | None]
    ) -> torch.Tensor:
        """One token per row, row i drawn from ``generators[i]`` alone (None: the global
        RNG), so a row's draw does not depend on the other rows of the batch."""
        if self.greedy:
            return logprobs.argmax(dim=-1)
        probs = logprobs.exp()
        picked = [
            torch.multinomial(probs[i : i + 1], 1, generator=g).view(1)
            for i, g in enumerate(generators)
        ]
        return torch.cat(picked) if picked else logprobs.new_zeros(0, dtype=torch.long)

    def draw_rows(
        self,
        logits: torch.Tensor,
        bans: Sequence[Collection[int]] | None,
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:
        """One token per row from `logprobs`' distribution, row i drawn from
        ``generators[i]`` alone, as `sample_rows`, but by inverse CDF (`_inverse_cdf`) on
        each row's top-k: ~3x faster for SmolLM2's vocabulary (a proposer that needs the
        token but not its log-probability, the causal one, calls it). Rows where ties at the
        k-th logit keep more than k ids (as `logprobs` does) are drawn on the whole
        vocabulary. The same generator state gives another token than `sample_rows`, which
        the MLM proposer keeps so that its runs repeat those of earlier versions."""
        if self.greedy:
            return self.logprobs(logits, bans).argmax(dim=-1)
        if not 0 < self.top_k < logits.shape[-1] or logits.shape[0] == 0:
            return _inverse_cdf(self.logprobs(logits, bans).exp(), generators)
        masked = self._banned(logits, bans) / self.temperature
        values, ids = torch.topk(masked, self.top_k, dim=-1)
        kth = values[:, -1:]
        tied = (masked >= kth).sum(dim=-1) > self.top_k
        probs = torch.softmax(values, dim=-1)
        picked = ids.gather(-1, _inverse_cdf(probs, generators)[:, None])[:, 0]
        if bool(tied.any()):
            rows = tied.nonzero()[:, 0].tolist()
            full = self.logprobs(logits[rows], None if bans is None else [bans[r] for r in rows])
            picked[rows] = _inverse_cdf(full.exp(), [generators[r] for r in rows])
        return picked

    @staticmethod
    def logprob_of(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The log-probability of ``tokens[i]`` in row i of `logprobs`."""
        return logprobs.gather(-1, tokens.view(-1, 1)).squeeze(-1)


def _inverse_cdf(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One index per row of ``probs`` (non-negative, any scale), drawn by inverse CDF with a
    uniform from the row's generator (None: the global RNG).

    The same distribution as ``torch.multinomial(row, 1)``, whose one-sample draw takes an
    exponential per column: for 128 rows of SmolLM2's 49,152 ids it took 165 ms on one CPU
    core, this 32 ms (on the same rows as probabilities; `draw_rows`, top-k included, 65 ms).
    """
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    cdf = probs.float().cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in generators])
    picked = torch.searchsorted(cdf, u[:, None] * total, right=True)
    # u * total may round up to the total: the last column with mass is the first at it
    last = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(picked, last)[:, 0]


def seeded_generators(
    seeds: Sequence[int | None], device: torch.device | str
) -> list[torch.Generator | None] | None:
    """One generator per seed (None where a seed is None); None when no seed is given at all,
    so callers keep their single-generator path."""
    if all(s is None for s in seeds):
        return None
    return [
        None if s is None else torch.Generator(device=device).manual_seed(int(s)) for s in seeds
    ]


def ngram_bans(region: Sequence[int | None], index: int, n: int) -> set[int]:
    """The ids that, put at ``region[index]``, would make an ``n``-gram of ``region`` equal to
    another one (None marks a token not known yet; n-grams holding one do not count).

    Two ways to repeat: the new n-gram equals one that is complete already (and does not
    cover ``index``), or two new n-grams that both cover ``index`` become equal (``a _ a``
    with n = 2 bans ``a``: it would make ``a a`` twice).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    size = len(region)
    if not 0 <= index < size:
        raise ValueError(f"index {index} outside a region of {size}")
    windows = [
        s
        for s in range(max(0, index - n + 1), min(index, size - n) + 1)
        if all(region[p] is not None for p in range(s, s + n) if p != index)
    ]
    if not windows:
        return set()
    existing: set[tuple[int, ...]] = set()
    for s in range(size - n + 1):
        if s <= index < s + n:
            continue
        gram = region[s : s + n]
        if all(t is not None for t in gram):
            existing.add(tuple(int(t) for t in gram))  # type: ignore[arg-type]
    out: set[int] = set()
    for s in windows:
        k = index - s
        known = [region[p] for p in range(s, s + n)]
        for gram in existing:
            if all(gram[j] == known[j] for j in range(n) if j != k):
                out.add(gram[k])
    for x, s1 in enumerate(windows):
        for s2 in windows[x + 1 :]:
            need: int | None = None
            ok = True
            for j in range(n):
                p1, p2 = s1 + j, s2 + j
                if p1 == index or p2 == index:
                    other = region[p2] if p1 == index else region[p1]
                    if need is not None and need != other:
                        ok = False
                        break
                    need = other
                elif region[p1] != region[p2]:
                    ok = False
                    break
            if ok and need is not None:
                out.add(int(need))
    return out


def repeated_ngram_ends(region: Sequence[int | None], n: int, frozen: int = 0) -> list[int]:
    """Positions whose refilling breaks every repeated ``n``-gram of ``region``: scanning left
    to right, the last position of each n-gram that repeats an earlier one. None marks a
    position that will be refilled anyway (n-grams holding one do not count). Positions
    before ``frozen`` (the prompt's tokens) are never returned; an n-gram ending there is
    left as it is.

    Masking these and refilling them under the guard leaves no repeated n-gram.
    """
    seen: set[tuple[int | None, ...]] = set()
    out: list[int] = []
    blocked = -1  # n-grams starting at or before this hold a position to be refilled
    for s in range(len(region) - n + 1):
        end = s + n - 1
        gram = tuple(region[s : s + n])
        if None in gram:
            blocked = max(blocked, max(s + j for j, t in enumerate(gram) if t is None))
        if blocked >= s:
            continue
        if gram in seen and end >= frozen:
            out.append(end)
            blocked = end
        else:
            seen.add(gram)
    return out


def has_repeated_ngram(region: Sequence[int], n: int) -> bool:
    """True when some ``n``-gram occurs twice in ``region``."""
    grams = [tuple(region[s : s + n]) for s in range(len(region) - n + 1)]
    return len(set(grams)) < len(grams)


def ban_token_ids(lm: LoadedModel, tokens: Iterable[str]) -> list[int]:
    """The ids of ``tokens`` in ``lm``'s vocabulary (`--ban-token`): a token as the vocabulary
    spells it, and a bare word also in its word-start forms (``Ġword``, ``▁word``). UserError
    for one that is in none of these forms."""
    tok: Any = lm.tokenizer
    vocab = tok.get_vocab()
    out: list[int] = []
    for token in tokens:
        forms = [token, *(mark + token for mark in WORD_START_MARKS)]
        found = [int(vocab[f]) for f in forms if f in vocab]
        if not token.strip() or not found:
            raise UserError(f"ban token {token!r} is not in the vocabulary of {lm.name}")
        out.extend(found)
    return out

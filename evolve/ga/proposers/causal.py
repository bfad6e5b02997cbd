"""The causal-LM proposer: sample K fills from the left context, keep the likeliest text.

This module turns fill requests into gaps (one span each) and holds the settings; the
rounds that sample and rank are in `evolve.ga.proposers.causal_rounds` (and, for the bench,
`evolve.ga.proposers.causal_unbatched`). `CausalProposerStats` and `spans_of` are importable
from here as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal

import torch

from evolve.ga.proposers.base import FillOverloads, FillRequest, check_requests
from evolve.ga.proposers.causal_rounds import (
    BatchedRounds,
    CausalProposerStats,
    Gap,
    spans_of,
)
from evolve.ga.proposers.causal_unbatched import UnbatchedRounds
from evolve.ga.proposers.sampling import SamplingPolicy, seeded_generators
from scoring.errors import UserError
from scoring.models import LoadedModel, in_bf16

NO_LOGQ = (
    "the causal proposer keeps the best of several sampled fills, which has no tractable "
    "proposal probability: Metropolis-Hastings needs --proposer mlm"
)


class CausalProposer(FillOverloads, BatchedRounds, UnbatchedRounds):
    """Fills spans with a causal LM: sample ``candidates`` fills from the left context, keep
    the one whose whole text is likeliest (see the module docstring).

    How a round works (`_batch`), for every span of a fill step at once (all lengths): the
    left contexts' common beginning (the prompt, at least) comes from the model's shared
    `scoring.causal.PrefixCache`, run once; the rest of each left context runs on it (one
    pass, padded in the middle), except what a scored text being edited lends from the
    model's `scoring.causal.ContextCache` (up to the edit). Then one token per forward pass:
    spans still being filled sample their next token, collecting its log-probability under
    the model's own (untempered) distribution, while spans already complete feed their next
    right-context token and add its log-probability, so spans of different lengths share
    every pass. A span's candidates that drew the same tokens so far share one state (cache
    row and logits), split when their draws differ, so each distinct prefix runs once.
    Identical candidates of a span are then scored once (a span whose candidates are all
    the same, not at all): one more pass runs the rest of each distinct candidate's right
    context on its cache. The sum is log p(fill + right | left), and since ``left`` is the
    same for all candidates of a span, ranking by it is ranking by the log-probability of
    the whole text. Left context and sampled tokens are run once, not once per candidate and
    again for scoring.
    A request's ``avoid`` (a mutation's old tokens, `FillRequest.avoid`) is never kept, nor
    rescored, while the span drew any other candidate: a mutation mutates, rather than
    giving the parent back for duplicate suppression to mutate again.

    ``temperature``, ``top_k`` and ``banned_ids`` (more ids never to propose, beside the
    special ones) make up ``policy``, the `SamplingPolicy` `MLMProposer` samples with too
    (temperature 0: one greedy fill); ``no_repeat_ngram`` is the n-gram guard, applied to
    every candidate token by token with the request's `FillRequest.region` as context (the
    spans still to fill unknown), so every candidate, and hence the one kept, obeys it.
    ``dtype="bf16"``: sample and rank in a bfloat16 copy of the model (`scoring.models.
    in_bf16`), about 2x faster where the hardware has bf16; the proposal is then a slightly
    perturbed draw and ranking, which the fitness (an fp32 scorer) does not share.
    ``tokens_per_batch``: bounds rows x (right context + 1)
    per round, hence the memory of the scoring pass's logits. ``generator``: the torch RNG to
    draw from (None: the global one). ``batched=False``: the path before the shared prefix
    and one batch per step (one round per span length, no prefix cache, every candidate
    rescored), kept for ``bench/causal_speed.py``; it draws from the RNG in another order, so
    its fills differ from the batched path's for the same seed.
    """

    name = "causal"

    def __init__(
        self,
        lm: LoadedModel,
        candidates: int = 8,
        temperature: float = 1.0,
        top_k: int = 0,
        banned_ids: Sequence[int] = (),
        tokens_per_batch: int = 4096,
        generator: torch.Generator | None = None,
        batched: bool = True,
        no_repeat_ngram: int = 0,
        dtype: Literal["fp32", "bf16"] = "fp32",
        reuse_contexts: bool = True,
    ) -> None:
        if lm.kind != "causal":
            raise UserError(f"the causal proposer needs a causal LM; {lm.name!r} is a {lm.kind}")
        if candidates < 1:
            raise UserError(f"candidates must be at least 1 (got {candidates})")
        SamplingPolicy.validate(temperature, top_k, no_repeat_ngram)
        if dtype not in ("fp32", "bf16"):
            raise UserError(f"proposer dtype must be fp32 or bf16 (got {dtype!r})")
        self.dtype = dtype
        self.reuse_contexts = bool(reuse_contexts)
        self.lm = in_bf16(lm) if dtype == "bf16" else lm
        self.candidates = int(candidates) if temperature > 0 else 1  # greedy: one fill
        self.tokens_per_batch = max(1, int(tokens_per_batch))
        self.batched = bool(batched)
        if not batched and tokens_per_batch == 4096:
            self.tokens_per_batch = 1024  # the old path's own default
        self.generator = generator
        self.stats = CausalProposerStats()
        tok = lm.tokenizer
        self._pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        size = int(getattr(lm.model.config, "vocab_size", 0) or len(tok))
        banned = {int(i) for i in tok.all_special_ids} | {int(i) for i in banned_ids}
        banned |= set(range(len(tok), size))  # model rows with no token behind them
        self.policy = SamplingPolicy(
            temperature, top_k, frozenset(i for i in banned if 0 <= i < size), no_repeat_ngram
        )
        if self.policy.banned_count(size) >= size:
            raise UserError(f"{lm.name!r}: every token id is banned, nothing can be proposed")
        self._keep_arg = "logits_to_keep" in inspect.signature(lm.model.forward).parameters
        self._gens: list[torch.Generator | None] | None = None  # per request of the current fill

    # -- public API -----------------------------------------------------------------------

    def _fill(
        self, requests: Sequence[FillRequest], return_logq: bool
    ) -> list[list[int]] | tuple[list[list[int]], list[float]]:
        """Fill every request's positions (same order as ``requests``), all batched together.

        Spans of one request are filled left to right (step k fills every request's k-th
        span); each step batches all requests' spans, grouped by length.
        """
        if return_logq:
            raise UserError(NO_LOGQ)
        check_requests(requests, self.lm.name, self.lm.max_length, left_context=True)
        self.stats.calls += 1
        rows = [list(r.input_ids) for r in requests]
        spans = [spans_of(r.positions) for r in requests]
        self._gens = seeded_generators([r.seed for r in requests], self.lm.device)
        for step in range(max((len(s) for s in spans), default=0)):
            gaps = []
            for i, s in enumerate(spans):
                if len(s) <= step:
                    continue
                start, n = s[step]
                end = s[step + 1][0] if step + 1 < len(s) else len(rows[i])
                guard = self._guard(requests[i], rows[i], s[step:], start)
                avoid = requests[i].avoid
                if len(s) > 1 or avoid is None or len(avoid) != n:
                    avoid = None
                gaps.append(Gap(i, rows[i][:start], n, rows[i][start + n : end], guard, avoid))
            best = self._chunks(gaps) if self.batched else self._best_fills(gaps)
            for gap, fill in zip(gaps, best, strict=True):
                start = len(gap.left)
                rows[gap.owner][start : start + gap.length] = fill
            self.stats.spans += len(gaps)
        return rows

    def logprob_of(
        self, requests: Sequence[FillRequest], targets: Sequence[Sequence[int]]
    ) -> list[float]:
        """Not available: see `NO_LOGQ`."""
        raise UserError(NO_LOGQ)

    # -- internals ------------------------------------------------------------------------

    def _guard(
        self,
        request: FillRequest,
        row: Sequence[int],
        todo: Sequence[tuple[int, int]],
        start: int,
    ) -> tuple[list[int | None], int] | None:
        """The guarded region of ``row`` with the spans in ``todo`` unknown, and where
        ``start`` lies in it (None when the guard is off or ``start`` is outside)."""
        if not self.policy.guards:
            return None
        lo, hi = request.region if request.region is not None else (0, len(row))
        if not lo <= start < hi:
            return None
        unknown = {p for a, n in todo for p in range(a, a + n)}
        return [None if p in unknown else int(row[p]) for p in range(lo, hi)], start - lo


__all__ = ["NO_LOGQ", "CausalProposer", "CausalProposerStats", "spans_of"]

"""The causal-LM proposer: sample K fills from the left context, keep the likeliest text."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from evolve.ga.proposers.base import FillOverloads, FillRequest, check_requests
from evolve.ga.proposers.sampling import SamplingPolicy, seeded_generators
from scoring.causal import (
    cache_layers,
    context_cache_of,
    length_groups,
    prefix_cache_of,
    select_rows,
)
from scoring.errors import UserError
from scoring.models import LoadedModel, in_bf16

# -- causal LM proposer -----------------------------------------------------------------------

NO_LOGQ = (
    "the causal proposer keeps the best of several sampled fills, which has no tractable "
    "proposal probability: Metropolis-Hastings needs --proposer mlm"
)


@dataclass
class CausalProposerStats:
    """Counters since the proposer was made."""

    calls: int = 0  # fill() calls
    spans: int = 0  # spans filled
    candidates: int = 0  # candidate fills sampled and scored
    rounds: int = 0  # batched sample-and-score rounds (one per fill step and chunk)
    forward_passes: int = 0  # model forward calls
    token_positions: int = 0  # rows x tokens run through the model (the cost of a call)
    rescored: int = 0  # distinct candidates whose right context was scored
    reused_tokens: int = 0  # left-context tokens whose keys/values came from a scored text


def spans_of(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted positions as runs of adjacent ones: ``[(start, length), ...]`` left to right."""
    runs: list[tuple[int, int]] = []
    for p in sorted(positions):
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


@dataclass(frozen=True)
class _Gap:
    """One span to fill: the text before it, its length, and the text after it to judge by."""

    owner: int  # index of the request
    left: list[int]
    length: int
    right: list[int]  # up to the next span still to fill (or the end of the input)
    # n-gram guard: the request's guarded tokens (unfilled positions None) and where the
    # span starts in them; None when the guard is off or the span lies outside the region
    guard: tuple[list[int | None], int] | None = None
    avoid: tuple[int, ...] | None = None  # `FillRequest.avoid`, for a request's only span


class CausalProposer(FillOverloads):
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
                gaps.append(_Gap(i, rows[i][:start], n, rows[i][start + n : end], guard, avoid))
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

    def _guard_bans(
        self, gaps: Sequence[_Gap], picked: list[torch.Tensor]
    ) -> list[set[int]] | None:
        """The n-gram guard's bans for each candidate row's next token, given its tokens so
        far (``picked``, one [rows] tensor per step); None when no gap is guarded."""
        if not any(g.guard is not None for g in gaps):
            return None
        k = self.candidates
        so_far = (
            torch.stack(picked, dim=1).tolist() if picked else [[] for _ in range(len(gaps) * k)]
        )
        out: list[set[int]] = []
        for r, tokens in enumerate(so_far):
            guard = gaps[r // k].guard
            if guard is None:
                out.append(set())
                continue
            region, at = guard
            here = list(region)
            here[at : at + len(tokens)] = tokens
            index = at + len(tokens)
            out.append(self.policy.bans_for(here, index) if index < len(here) else set())
        return out

    def _chunks(self, gaps: Sequence[_Gap]) -> list[list[int]]:
        """The chosen fill of each gap: all lengths in one batch, split only where rows x
        (span + right context) would pass ``tokens_per_batch``; gaps are ordered by that width
        (then input order) so that each chunk's rows pad to similar lengths."""
        out: list[list[int]] = [[] for _ in gaps]
        k = self.candidates
        order = sorted(range(len(gaps)), key=lambda g: (gaps[g].length + len(gaps[g].right), g))
        chunk: list[int] = []
        for g in [*order, -1]:
            if g >= 0:
                width = gaps[g].length + len(gaps[g].right)  # the widest comes last
                if not chunk or (len(chunk) + 1) * k * width <= self.tokens_per_batch:
                    chunk.append(g)
                    continue
            for h, fill in zip(chunk, self._batch([gaps[h] for h in chunk]), strict=True):
                out[h] = fill
            chunk = [g]
        return out

    def _batch(self, gaps: Sequence[_Gap]) -> list[list[int]]:
        """Sample ``candidates`` fills per gap (any lengths) and keep, per gap, the one with
        the highest log p(fill + right | left) (the first of equals). See the class doc."""
        k = self.candidates
        device = self.lm.device
        n_gaps = len(gaps)
        rows = n_gaps * k
        # the left contexts' common beginning, leaving each at least one token of its own
        shared = min(len(g.left) for g in gaps) - 1
        first = gaps[0].left
        for g in gaps[1:]:
            same = 0
            while same < shared and g.left[same] == first[same]:
                same += 1
            shared = same
        keep = {"logits_to_keep": 1} if self._keep_arg else {}
        cache = None
        known: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * n_gaps
        if shared:
            cache = prefix_cache_of(self.lm).get(first[:shared]).cache_for(n_gaps)
            known = self._known(gaps, shared, cache)
        # each row: [shared prefix][pad][known: reused keys/values][pad][own: run now]
        m = [0 if kv is None else kv[0][0].shape[1] for kv in known]
        m_max = max(m)
        own = [g.left[shared + m[r] :] for r, g in enumerate(gaps)]
        width = max(len(x) for x in own)
        ids = torch.full((n_gaps, width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((n_gaps, shared + m_max + width), dtype=torch.long)
        attn[:, :shared] = 1
        pos = torch.zeros((n_gaps, width), dtype=torch.long)
        for r, x in enumerate(own):
            attn[r, shared + m_max - m[r] : shared + m_max] = 1
            ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            attn[r, shared + m_max + width - len(x) :] = 1
            start = shared + m[r]
            pos[r, width - len(x) :] = torch.arange(start, start + len(x))
        ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
        if m_max:
            self._append_known(cache, known, m_max)
        lengths = torch.tensor([g.length for g in gaps], device=device).repeat_interleave(k)
        n_max = int(lengths.max())
        right_w = max(1, max(len(g.right) for g in gaps))
        right = torch.full((n_gaps, right_w), self._pad_id, dtype=torch.long)
        right_len = torch.zeros(n_gaps, dtype=torch.long)
        for r, g in enumerate(gaps):
            right[r, : len(g.right)] = torch.tensor(g.right, dtype=torch.long)
            right_len[r] = len(g.right)
        right = right.to(device).repeat_interleave(k, dim=0)
        right_len = right_len.to(device).repeat_interleave(k)
        arange = torch.arange(rows, device=device)
        with torch.inference_mode():
            out = self._forward(
                input_ids=ids,
                attention_mask=attn,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                **keep,
            )
            # The candidates of a gap that have drawn the same tokens so far share one state
            # (one cache row, one row of logits): `state[r]` is candidate row r's. A state is
            # run once per step however many candidates share it, and split when they draw
            # different tokens; at first every gap's k candidates share its state.
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            last = pos[:, -1]
            state = arange // k
            score = torch.zeros(rows, dtype=torch.float64, device=device)
            fills = torch.full((rows, n_max), self._pad_id, dtype=torch.long, device=device)
            real = torch.ones(rows, dtype=torch.bool, device=device)
            token = fills[:, 0]
            for step in range(n_max):
                sampling = step < lengths
                token = right[arange, (step - lengths).clamp(0, right_w - 1)]
                real = sampling | (step - lengths < right_len)
                if bool(sampling.any()):
                    live = sampling.nonzero()[:, 0].tolist()
                    bans = self._guard_bans(gaps, [fills[:, j] for j in range(step)])
                    token[sampling] = self._pick(
                        logits[state[sampling]],
                        None if bans is None else [bans[r] for r in live],
                        None
                        if self._gens is None
                        else [self._gens[gaps[r // k].owner] for r in live],
                    )
                    fills[sampling, step] = token[sampling]
                token = torch.where(real, token, self._pad_id)
                logp = torch.log_softmax(logits, dim=-1)
                score += torch.where(real, logp[state, token], 0.0)
                if step + 1 < n_max:
                    state, parent = self._split(state, token)
                    if parent is not None:
                        cache, attn, last = select_rows(cache, parent), attn[parent], last[parent]
                    firsts = self._firsts(state)
                    fed = token[firsts]
                    attn = torch.cat([attn, real[firsts][:, None].long()], dim=1)
                    last = last + 1
                    cache, logits = self._advance(fed, attn, last, cache, keep)
            if k > 1:
                avoided = self._avoided(gaps, fills)
                score += self._rest_logprobs(
                    gaps, fills, token, real, attn, last, cache, state, avoided
                )
                score[avoided] = -torch.inf
        self.stats.rounds += 1
        self.stats.candidates += rows
        best = score.view(n_gaps, k).argmax(dim=-1).tolist()  # first of equals
        chosen = fills.view(n_gaps, k, n_max).cpu()
        return [
            chosen[r, b, : g.length].tolist()
            for r, (g, b) in enumerate(zip(gaps, best, strict=True))
        ]

    def _known(
        self, gaps: Sequence[_Gap], shared: int, cache: Any
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Per gap, the keys and values of its left context past ``shared`` that a text
        scored before (its parent, for a mutation) already has in the model's
        `scoring.causal.ContextCache`, up to all but the last token (run now for its
        logits); None where none is kept, or the cache is not a plain dynamic one."""
        if not self.reuse_contexts or cache_layers(cache) is None:
            return [None] * len(gaps)
        store = context_cache_of(self.lm)
        out: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = []
        for g in gaps:
            out.append(store.lookup(g.left, shared, len(g.left) - 1))
        self.stats.reused_tokens += sum(kv[0][0].shape[1] for kv in out if kv is not None)
        return out

    @staticmethod
    def _append_known(
        cache: Any, known: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None], m_max: int
    ) -> None:
        """Append to every layer of ``cache`` (rows = gaps) a block of ``m_max`` slots that
        holds each gap's reused keys and values right-aligned (zeros, masked, before)."""
        layers = cache_layers(cache)
        assert layers is not None
        for i, layer in enumerate(layers):
            rows, heads, _, dim = layer.keys.shape
            block_k = layer.keys.new_zeros((rows, heads, m_max, dim))
            block_v = layer.values.new_zeros((rows, heads, m_max, dim))
            for r, kv in enumerate(known):
                if kv is not None:
                    k, v = kv[i]
                    block_k[r, :, m_max - k.shape[1] :] = k
                    block_v[r, :, m_max - v.shape[1] :] = v
            layer.keys = torch.cat([layer.keys, block_k], dim=2)
            layer.values = torch.cat([layer.values, block_v], dim=2)

    @staticmethod
    def _split(
        state: torch.Tensor, token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The states after each candidate row feeds ``token``: rows that shared a state and
        feed the same token still share one. Returns (new state of each row, the old state
        each new one continues, None when that is every old state in order)."""
        keys = list(zip(state.tolist(), token.tolist(), strict=True))
        number: dict[tuple[int, int], int] = {}
        for key in keys:
            number.setdefault(key, len(number))
        new = torch.tensor([number[key] for key in keys], device=state.device)
        parents = [old for old, _ in number]
        if parents == list(range(int(state.max()) + 1)):
            return new, None
        return new, torch.tensor(parents, device=state.device)

    @staticmethod
    def _firsts(state: torch.Tensor) -> torch.Tensor:
        """For each state, the first candidate row in it (states are numbered by first row)."""
        n = int(state.max()) + 1
        first = torch.full((n,), len(state), dtype=torch.long, device=state.device)
        rows = torch.arange(len(state), device=state.device)
        return first.scatter_reduce(0, state, rows, reduce="amin")

    def _avoided(self, gaps: Sequence[_Gap], fills: torch.Tensor) -> torch.Tensor:
        """Bool [rows]: candidates equal to their gap's ``avoid`` (the tokens the span held),
        where the gap drew at least one other candidate; those never win."""
        k = self.candidates
        out = torch.zeros(fills.shape[0], dtype=torch.bool, device=fills.device)
        for r, g in enumerate(gaps):
            if g.avoid is None:
                continue
            same = [tuple(c[: g.length]) == g.avoid for c in fills[r * k : (r + 1) * k].tolist()]
            if not all(same):
                out[r * k : (r + 1) * k] = torch.tensor(same, device=fills.device)
        return out

    def _rest_logprobs(
        self,
        gaps: Sequence[_Gap],
        fills: torch.Tensor,
        token: torch.Tensor,
        real: torch.Tensor,
        attn: torch.Tensor,
        last: torch.Tensor,
        cache: Any,
        state: torch.Tensor,
        avoided: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(the right context not yet fed | left + fill + the part fed) per candidate
        row: the last token fed in the sampling loop and the rest of the right context, in a
        pass over the distinct candidates of each gap (a copy answers for its twins; a gap
        with one distinct candidate left, once ``avoided`` rows are out, is skipped), split
        into batches of similar rest lengths (`scoring.causal.length_groups`). ``cache``,
        ``attn`` and ``last`` are per state of the sampling loop, ``state`` each row's."""
        k = self.candidates
        n_max = fills.shape[1]
        rests: list[list[int]] = []
        for g in gaps:
            rests.append(list(g.right[n_max - g.length :]))
        if not any(rests):
            return torch.zeros(len(token), dtype=torch.float64, device=token.device)
        keys = fills.tolist()
        first_of: dict[tuple[int, tuple[int, ...]], int] = {}
        twin = []
        for row, key in enumerate(keys):
            twin.append(first_of.setdefault((row // k, tuple(key)), row))
        # distinct candidates still in the running, longest rest first, in batches of similar
        # rest lengths; a gap with one such candidate has its fill already (nothing to rank)
        dropped = set() if avoided is None else set(avoided.nonzero()[:, 0].tolist())
        running = {row for row in twin if row not in dropped}
        choices: dict[int, int] = {}
        for row in running:
            choices[row // k] = choices.get(row // k, 0) + 1
        distinct = sorted(
            (row for row in running if choices[row // k] > 1),
            key=lambda row: (-len(rests[row // k]), row),
        )
        device = attn.device
        gained = torch.zeros(len(keys), dtype=torch.float64, device=device)
        widths = [1 + len(rests[row // k]) for row in distinct]
        for group in length_groups(widths, self.tokens_per_batch):
            rows = [distinct[g] for g in group]
            index = torch.tensor(rows, device=device)
            width = widths[group[0]]
            feed = torch.full((len(rows), width), self._pad_id, dtype=torch.long, device=device)
            feed_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
            feed[:, 0] = token[index]
            feed_mask[:, 0] = real[index].long()
            for j, row in enumerate(rows):
                rest = rests[row // k]
                if rest:
                    feed[j, 1 : 1 + len(rest)] = torch.tensor(rest, dtype=torch.long)
                    feed_mask[j, 1 : 1 + len(rest)] = 1
            if width == 1:
                continue  # nothing left to score in these rows
            at = state[index]
            positions = last[at, None] + 1 + torch.arange(width, device=device)[None, :]
            out = self._forward(
                input_ids=feed,
                attention_mask=torch.cat([attn[at], feed_mask], dim=1),
                position_ids=positions,
                past_key_values=select_rows(cache, at),
                use_cache=True,
            )
            logits = out.logits[:, :-1].float()
            picked = logits.gather(-1, feed[:, 1:, None])[..., 0]
            picked = picked - torch.logsumexp(logits, dim=-1)
            gained[index] = (picked * feed_mask[:, 1:]).sum(dim=-1).double()
            self.stats.rescored += len(rows)
        return gained[torch.tensor(twin, device=device)]

    # -- the path before the batched one (``batched=False``, for the bench) ---------------

    def _best_fills(self, gaps: Sequence[_Gap]) -> list[list[int]]:
        """The chosen fill of each gap: rounds of gaps of one length (first-use order, so the
        batches are the same on every run), chunked to the batch budget."""
        out: list[list[int]] = [[] for _ in gaps]
        by_length: dict[int, list[int]] = {}
        for g, gap in enumerate(gaps):
            by_length.setdefault(gap.length, []).append(g)
        k = self.candidates
        for members in by_length.values():
            chunk: list[int] = []
            widest = 0
            for g in [*members, -1]:
                if g >= 0:
                    wider = max(widest, len(gaps[g].right) + 1)
                    if not chunk or (len(chunk) + 1) * k * wider <= self.tokens_per_batch:
                        chunk.append(g)
                        widest = wider
                        continue
                for h, fill in zip(chunk, self._round([gaps[h] for h in chunk]), strict=True):
                    out[h] = fill
                chunk, widest = ([g], len(gaps[g].right) + 1) if g >= 0 else ([], 0)
        return out

    def _forward(self, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        self.stats.forward_passes += 1
        self.stats.token_positions += int(ids.numel())
        return self.lm.model(**kwargs)

    def _round(self, gaps: Sequence[_Gap]) -> list[list[int]]:
        """Sample ``candidates`` fills per gap (all of one length) and keep, per gap, the one
        with the highest log p(fill + right | left) (the first of equals). See the class doc."""
        k = self.candidates
        n_new = gaps[0].length
        device = self.lm.device
        width = max(len(g.left) for g in gaps)
        ids = torch.full((len(gaps), width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((len(gaps), width), dtype=torch.long)
        for r, g in enumerate(gaps):
            ids[r, width - len(g.left) :] = torch.tensor(g.left, dtype=torch.long)
            attn[r, width - len(g.left) :] = 1
        ids, attn = ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        keep = {"logits_to_keep": 1} if self._keep_arg else {}
        rows = len(gaps) * k
        with torch.inference_mode():
            out = self._forward(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **keep
            )
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            last = pos[:, -1]
            if k > 1:
                if hasattr(cache, "batch_repeat_interleave"):
                    cache.batch_repeat_interleave(k)
                    logits = logits.repeat_interleave(k, dim=0)
                else:  # a cache that cannot be repeated: prefill every copy instead
                    out = self._forward(
                        input_ids=ids.repeat_interleave(k, dim=0),
                        attention_mask=attn.repeat_interleave(k, dim=0),
                        position_ids=pos.repeat_interleave(k, dim=0),
                        use_cache=True,
                        **keep,
                    )
                    cache, logits = out.past_key_values, out.logits[:, -1].float()
                attn = attn.repeat_interleave(k, dim=0)
                last = last.repeat_interleave(k, dim=0)
            score = torch.zeros(rows, dtype=torch.float64, device=device)
            picked: list[torch.Tensor] = []
            row_gens = (
                None
                if self._gens is None
                else [self._gens[g.owner] for g in gaps for _ in range(k)]
            )
            for step in range(n_new):
                bans = self._guard_bans(gaps, picked)
                token = self._pick(logits, bans, row_gens)
                score += torch.log_softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]
                picked.append(token)
                if step + 1 < n_new:
                    attn = torch.cat([attn, attn.new_ones((rows, 1))], dim=1)
                    last = last + 1
                    cache, logits = self._advance(token, attn, last, cache, keep)
            fills = torch.stack(picked, dim=1)
            if k > 1 and any(g.right for g in gaps):
                score += self._right_logprobs(gaps, fills[:, -1], attn, last, cache)
        self.stats.rounds += 1
        self.stats.candidates += rows
        best = score.view(len(gaps), k).argmax(dim=-1).tolist()  # first of equals
        chosen = fills.view(len(gaps), k, n_new).cpu()
        return [chosen[r, b].tolist() for r, b in enumerate(best)]

    def _right_logprobs(
        self,
        gaps: Sequence[_Gap],
        last_token: torch.Tensor,
        attn: torch.Tensor,
        last: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """log p(right | left + fill) per candidate row: the last sampled token and the right
        context (right-padded) in one pass on the candidates' cache."""
        k = self.candidates
        rows = len(gaps) * k
        device = attn.device
        width = 1 + max(len(g.right) for g in gaps)
        feed = torch.full((rows, width), self._pad_id, dtype=torch.long, device=device)
        feed_mask = torch.zeros((rows, width), dtype=torch.long, device=device)
        feed[:, 0] = last_token
        feed_mask[:, 0] = 1
        for r, g in enumerate(gaps):
            if g.right:
                right = torch.tensor(g.right, dtype=torch.long, device=device)
                feed[r * k : (r + 1) * k, 1 : 1 + len(g.right)] = right
                feed_mask[r * k : (r + 1) * k, 1 : 1 + len(g.right)] = 1
        positions = last[:, None] + 1 + torch.arange(width, device=device)[None, :]
        out = self._forward(
            input_ids=feed,
            attention_mask=torch.cat([attn, feed_mask], dim=1),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, :-1].float()
        picked = logits.gather(-1, feed[:, 1:, None])[..., 0] - torch.logsumexp(logits, dim=-1)
        return (picked * feed_mask[:, 1:]).sum(dim=-1).double()

    def _advance(
        self,
        token: torch.Tensor,
        attn: torch.Tensor,
        last: torch.Tensor,
        cache: Any,
        keep: dict[str, int],
    ) -> tuple[Any, torch.Tensor]:
        """Feed one more token to every row on its key/value cache (``attn`` already covers
        it, ``last`` is its position): the grown cache and each row's next-token logits."""
        out = self._forward(
            input_ids=token[:, None],
            attention_mask=attn,
            position_ids=last[:, None],
            past_key_values=cache,
            use_cache=True,
            **keep,
        )
        return out.past_key_values, out.logits[:, -1].float()

    def _pick(
        self,
        logits: torch.Tensor,
        bans: list[set[int]] | None = None,
        row_gens: Sequence[torch.Generator | None] | None = None,
    ) -> torch.Tensor:
        """One token per row, drawn by the sampling policy from raw logits (``bans``: the
        n-gram guard's, per row; row i drawn from ``row_gens[i]``, its request's own
        generator, when given)."""
        if row_gens is None:
            return self.policy.sample(self.policy.logprobs(logits, bans), self.generator)
        return self.policy.draw_rows(logits, bans, [g or self.generator for g in row_gens])

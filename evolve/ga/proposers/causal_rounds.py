"""The causal proposer's rounds: sample K fills for many spans at once, keep the likeliest.

A round takes gaps (`Gap`: the text left of a span, its length, the text right of it up to
the next span still to fill) and returns, per gap, the candidate fill whose whole text is
likeliest. `BatchedRounds` is the path a run uses (every span length in one batch, the
prompt from the shared prefix cache, candidates that drew the same tokens sharing one state;
see `evolve.ga.proposers.causal.CausalProposer`); `RoundBase` is what it shares with the
older path kept for the bench (`evolve.ga.proposers.causal_unbatched`): the model calls, the
counters and drawing a token under the sampling policy and the n-gram guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evolve.ga.proposers.sampling import SamplingPolicy
from scoring.causal import (
    cache_layers,
    context_cache_of,
    length_groups,
    prefix_cache_of,
    select_rows,
)
from scoring.models import LoadedModel


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
class Gap:
    """One span to fill: the text before it, its length, and the text after it to judge by."""

    owner: int  # index of the request
    left: list[int]
    length: int
    right: list[int]  # up to the next span still to fill (or the end of the input)
    # n-gram guard: the request's guarded tokens (unfilled positions None) and where the
    # span starts in them; None when the guard is off or the span lies outside the region
    guard: tuple[list[int | None], int] | None = None
    avoid: tuple[int, ...] | None = None  # `FillRequest.avoid`, for a request's only span


class RoundBase:
    """What both round paths use: the proposer's settings (set by `CausalProposer`), its
    model calls and its draws."""

    lm: LoadedModel
    candidates: int  # fills sampled per span
    tokens_per_batch: int
    reuse_contexts: bool
    generator: torch.Generator | None
    policy: SamplingPolicy
    stats: CausalProposerStats
    _pad_id: int
    _keep_arg: bool  # the model's forward takes logits_to_keep
    _gens: list[torch.Generator | None] | None  # per request of the current fill

    def _guard_bans(self, gaps: Sequence[Gap], picked: list[torch.Tensor]) -> list[set[int]] | None:
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

    def _forward(self, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"]
        self.stats.forward_passes += 1
        self.stats.token_positions += int(ids.numel())
        return self.lm.model(**kwargs)

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


class BatchedRounds(RoundBase):
    """The rounds a run uses: every span length of a fill step in one batch (see
    `CausalProposer`'s docstring for how a round works)."""

    def _chunks(self, gaps: Sequence[Gap]) -> list[list[int]]:
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

    def _batch(self, gaps: Sequence[Gap]) -> list[list[int]]:
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
        self, gaps: Sequence[Gap], shared: int, cache: Any
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

    def _avoided(self, gaps: Sequence[Gap], fills: torch.Tensor) -> torch.Tensor:
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
        gaps: Sequence[Gap],
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

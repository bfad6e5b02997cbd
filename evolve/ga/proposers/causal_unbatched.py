"""The causal proposer's path before the batched one (``batched=False``), for the bench.

One round per span length, no shared prefix cache, every candidate rescored
(`bench/causal_speed.py` measures the batched path against it). It draws from the RNG in
another order than `evolve.ga.proposers.causal_rounds.BatchedRounds`, so its fills differ
from the batched path's for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evolve.ga.proposers.causal_rounds import Gap, RoundBase


class UnbatchedRounds(RoundBase):
    """Rounds of gaps of one length, chunked to the batch budget."""

    def _best_fills(self, gaps: Sequence[Gap]) -> list[list[int]]:
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

    def _round(self, gaps: Sequence[Gap]) -> list[list[int]]:
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
        gaps: Sequence[Gap],
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

"""Lookahead from many prefixes at once: beam search and particle rollouts (issues 5, 23).

`evolve amplify`'s engine (`evolve.experiments.amplify.Lookahead`) walks one document through
one KV cache and searches 16 positions at a time. Training with stunting needs the lookahead
at *every* position of *every* window of a batch, so here the batch is the unit: one forward
computes the KV cache of all windows (rows of `ids`), then each depth step is one forward for
the rollouts of all positions of all rows together ("tree attention": each rollout token is
an extra cache row of its window, with its true position id and a 4D mask that lets it see
only its own prefix and its own ancestors). A batch of R windows of L positions with K
rollouts each costs 1 + (D - 1) forwards when R·L·K fits `tree_tokens`, instead of
R·⌈L/16⌉·D. Long batches are cut into row chunks and position groups of at most
`tree_tokens` rollout rows per forward (memory only: the results do not depend on the cut,
because the particles' random numbers are drawn per position up front).

Two searches:

- `Beam(width)`: beam search of width B and depth D, exactly `Lookahead.search` (tests check
  the two agree); the weight of a beam is the softmax of the beams' log-probabilities.
- `Particles(n, beta)`: sequential Monte Carlo over paths of depth D whose target is
  π_β(y_1..y_D) ∝ p(y_1..y_D)^β. Each particle extends itself by a token drawn from p (the
  proposal), so over the whole path its importance weight is p(path)^(β - 1). Particles are
  resampled (multinomial) in proportion to their weights after every depth but the last, and
  the last depth's weights are kept. The weighted first tokens estimate π_β's first-token
  marginal q_β(v) = Σ_{y: y_1 = v} p(y)^β / Σ_y p(y)^β. At β = 1 that is p itself (every weight
  is 1; resampling equal weights would only add noise, so it is skipped) and the estimate is
  unbiased; as β grows q_β tends to the first token of the most likely path (what an infinitely
  wide beam search of depth D finds); for β ≠ 1 the estimate is consistent as n grows (SMC,
  Del Moral 2004). Unlike beam search it gives every token a chance to carry weight.

  The intermediate targets are tempered: after depth d the particles target
  p(y_1..y_d)^β_d with β_d = 1 + (β - 1)·d/D, rising to β at depth D (the incremental weight
  is the ratio of successive targets over the proposal). Resampling toward the full β after
  the first token would keep only first tokens whose own probability^β is not negligible and
  lose a best path that starts with a less likely token; on a 5-token test model at β = 10
  that was the difference between errors of 0.14 and < 0.03 against exhaustive search.

EOS is an ordinary token, as in `evolve amplify`. Everything runs without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scoring.errors import UserError

DEFAULT_TREE_TOKENS = 1024  # rollout rows per forward: ~1k tokens keeps a CPU forward
# arithmetic-bound while the float64 log-probabilities of one forward stay under ~0.5 GB
# for a 49k vocabulary.


@dataclass(frozen=True)
class Beam:
    """Beam search of this width (the K rollouts are the B beams, best first)."""

    width: int

    @property
    def k(self) -> int:
        return self.width


@dataclass(frozen=True)
class Particles:
    """n particles per prefix targeting p(path)^beta (module docstring)."""

    n: int
    beta: float

    @property
    def k(self) -> int:
        return self.n


Search = Beam | Particles


def check_particles(n: int, beta: float) -> None:
    """UserError (one line) unless n >= 1 and beta is a finite number > 0."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"particles must be at least 1, got {n}")
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise UserError(f"beta must be a number greater than 0, got {beta}")


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (run seed, step, purpose), without collisions
    between nearby tuples: numpy's SeedSequence hashes the whole tuple."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def particle_noise(rows: int, positions: int, depth: int, n: int, seed: int) -> torch.Tensor:
    """The uniforms one particle search consumes, [rows, positions, depth, 2, n] float64.

    [..., d, 0, i] draws particle i's token at depth d + 1 (inverse CDF of p), [..., d, 1, i]
    its ancestor when resampling after that depth. Drawn up front, in this fixed shape, so
    that the result does not depend on how the search is cut into forwards.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(rows, positions, depth, 2, n, generator=gen, dtype=torch.float64)


@dataclass(frozen=True)
class Rollouts:
    """K rollouts of depth D from each of R×P prefixes, and what p says after each prefix.

    All tensors are on the CPU; log-probabilities are float64.
    """

    tokens: torch.Tensor  # [R, P, K, D] long
    first_logp: torch.Tensor  # [R, P, K] log p(first token) of each rollout
    path_logp: torch.Tensor  # [R, P, K] Σ log p over the rollout's D tokens
    weight: torch.Tensor  # [R, P, K] sums to 1 over K (beam: softmax of path_logp)
    want_logp: torch.Tensor | None  # [R, P, M] log p at the `want` tokens
    top_ids: torch.Tensor  # [R, P, top_k] p's most likely next tokens
    top_logp: torch.Tensor  # [R, P, top_k]
    entropy: torch.Tensor  # [R, P] entropy of p (nats)
    hidden: torch.Tensor | None  # [R, P, H] float32 last hidden state at the prefix's end
    full_logp: torch.Tensor | None  # [R, P, V] log p after each prefix, when asked for
    forward_calls: int
    tokens_fed: int

    @property
    def first(self) -> torch.Tensor:
        """[R, P, K] first token of each rollout."""
        return self.tokens[..., 0]

    def q_at(self, ids: torch.Tensor) -> torch.Tensor:
        """q(v) = Σ_k weight_k [first_k = v] at the tokens ids [R, P, M] (float64)."""
        hit = self.first[..., None, :] == ids[..., :, None]  # [R, P, M, K]
        return (hit.double() * self.weight[..., None, :]).sum(-1)

    def ess(self) -> torch.Tensor:
        """[R, P] effective sample size 1 / Σ w² of the final weights."""
        return 1.0 / (self.weight**2).sum(-1)

    def q_dense(self, vocab: int) -> torch.Tensor:
        """q as a dense [R, P, V] float64 distribution (tokens with no rollout get 0)."""
        out = torch.zeros(*self.first.shape[:2], vocab, dtype=torch.float64)
        return out.scatter_add_(-1, self.first, self.weight)


def lookahead(
    model: torch.nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    search: Search,
    depth: int,
    *,
    noise: torch.Tensor | None = None,
    want: torch.Tensor | None = None,
    top_k: int = 0,
    hidden: bool = False,
    full: bool = False,
    tree_tokens: int = DEFAULT_TREE_TOKENS,
) -> Rollouts:
    """Rollouts from the prefixes ids[r, : positions[r, j] + 1] of a causal LM `model`.

    `ids` [R, T] (rows may be right-padded: a prefix never sees past its own end);
    `positions` [R, P] with every entry t < T, t + 1 + depth within the model's window.
    Particles need `noise` from `particle_noise(R, P, depth, n, seed)`. `want` [R, P, M]
    asks for log p at those tokens, `top_k` for p's top tokens, `hidden` for the last
    hidden state after each prefix (an amplifier's input), `full` for p's whole
    distribution (memory: P·V float64 per row).
    """
    if not isinstance(depth, int) or depth < 1:
        raise UserError(f"depth must be at least 1, got {depth}")
    if isinstance(search, Particles):
        check_particles(search.n, search.beta)
        shape = (*positions.shape, depth, 2, search.n)
        if noise is None or tuple(noise.shape) != shape:
            got = None if noise is None else tuple(noise.shape)
            raise ValueError(f"particle noise must have shape {shape}, got {got}")
    elif not isinstance(search.width, int) or search.width < 1:
        raise UserError(f"beams must be at least 1, got {search.width}")
    n_rows, n_pos = positions.shape
    k = search.k
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    width = int(positions.max()) + 1 if positions.numel() else 1
    ids = ids[:, :width]
    chunk_rows = max(1, min(n_rows, tree_tokens // width))
    parts: list[dict[str, Any]] = []
    calls = fed = 0
    for r0 in range(0, n_rows, chunk_rows):
        rs = slice(r0, min(n_rows, r0 + chunk_rows))
        rows_here = rs.stop - rs.start
        group = max(1, min(n_pos, tree_tokens // (rows_here * k)))
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        with torch.no_grad():
            out = model(
                input_ids=ids[rs].to(device),
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=hidden,
            )
        calls += 1
        fed += ids[rs].numel()
        logits = out.logits
        last_hidden = out.hidden_states[-1] if hidden else None
        row_parts = []
        for g0 in range(0, n_pos, group):
            gs = slice(g0, min(n_pos, g0 + group))
            pos = positions[rs, gs]
            at = pos.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])
            first_logp = logits.gather(1, at).double().log_softmax(-1).cpu()  # [r, g, V]
            found = _search(
                model,
                cache,
                pos,
                first_logp,
                search,
                depth,
                None if noise is None else noise[rs, gs],
                device,
                dtype,
            )
            calls += found.pop("calls")
            fed += found.pop("fed")
            if want is not None:
                found["want_logp"] = first_logp.gather(-1, want[rs, gs])
            top = first_logp.topk(top_k, dim=-1) if top_k else None
            found["top_ids"] = top.indices if top is not None else torch.empty(*pos.shape, 0)
            found["top_logp"] = top.values if top is not None else torch.empty(*pos.shape, 0)
            found["entropy"] = -(first_logp.exp() * first_logp).nan_to_num().sum(-1)
            if full:
                found["full_logp"] = first_logp
            if last_hidden is not None:
                h_at = pos.to(device)[..., None].expand(-1, -1, last_hidden.shape[-1])
                found["hidden"] = last_hidden.gather(1, h_at).float().cpu()
            row_parts.append(found)
        parts.append({key: torch.cat([p[key] for p in row_parts], 1) for key in row_parts[0]})
    merged = {key: torch.cat([p[key] for p in parts], 0) for key in parts[0]}
    return Rollouts(
        tokens=merged["tokens"],
        first_logp=merged["first_logp"],
        path_logp=merged["path_logp"],
        weight=merged["weight"],
        want_logp=merged.get("want_logp"),
        top_ids=merged["top_ids"].long(),
        top_logp=merged["top_logp"].double(),
        entropy=merged["entropy"],
        hidden=merged.get("hidden"),
        full_logp=merged.get("full_logp"),
        forward_calls=calls,
        tokens_fed=fed,
    )


def _sample(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: for log-probabilities [..., V] and uniforms [..., n], ids [..., n].

    `right=True` never returns a token of probability 0 (its CDF step is empty).
    """
    cdf = logp.exp().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[..., -1:]).contiguous(), right=True)
    return idx.clamp_(max=logp.shape[-1] - 1)


def _resample(logw: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Multinomial resampling: ancestor indices [..., n] drawn in proportion to exp(logw)."""
    return _sample(logw.log_softmax(-1), u)


def _search(
    model: torch.nn.Module,
    cache: Any,
    pos: torch.Tensor,
    first_logp: torch.Tensor,
    search: Search,
    depth: int,
    noise: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """One position group of one row chunk: the tree search on the shared cache."""
    rows, group, vocab = first_logp.shape
    k = search.k
    base = int(cache.get_seq_length())
    plen = pos.long() + 1  # [rows, group] cached tokens each prefix spans
    calls = fed_tokens = 0
    particles = isinstance(search, Particles)
    if isinstance(search, Beam):
        if k > vocab:
            raise UserError(f"beams ({k}) cannot exceed the vocabulary size ({vocab})")
        scores, tok = first_logp.topk(k, dim=-1)  # [rows, group, k]
        first_lp = scores.clone()
        logw = scores.clone()
    else:
        assert noise is not None
        tok = _sample(first_logp, noise[:, :, 0, 0])
        first_lp = first_logp.gather(-1, tok)
        scores = first_lp.clone()  # path log-probability
        rise = (search.beta - 1.0) / depth  # β_d - β_(d-1): the exponent's rise per depth
        logw = rise * first_lp  # depth 1: (β_1 - 1) log p(y_1)
    tokens = tok[..., None]
    anc = torch.empty(rows, group, k, 0, dtype=torch.long)  # cache rows of each rollout's tokens

    def resample(step: int) -> None:
        nonlocal tokens, anc, scores, first_lp, logw
        assert noise is not None and isinstance(search, Particles)
        if search.beta == 1.0:
            return  # equal weights: resampling would only add noise
        pick = _resample(logw, noise[:, :, step, 1])
        tokens = tokens.gather(2, pick[..., None].expand(-1, -1, -1, tokens.shape[-1]))
        anc = anc.gather(2, pick[..., None].expand(-1, -1, -1, anc.shape[-1]))
        scores = scores.gather(2, pick)
        first_lp = first_lp.gather(2, pick)
        logw = torch.zeros_like(logw)

    if particles and depth > 1:
        resample(0)
    n_tree = group * k
    prefix_mask = torch.arange(base)[None, None, :] < plen.repeat_interleave(k, dim=1)[:, :, None]
    try:
        for step in range(1, depth):
            now = int(cache.get_seq_length())
            new_rows = now + torch.arange(n_tree).view(group, k)
            mask = torch.zeros(rows, n_tree, now + n_tree, dtype=torch.bool)
            mask[:, :, :base] = prefix_mask
            if step > 1:
                mask.scatter_(2, anc.reshape(rows, n_tree, step - 1), True)
            mask[:, torch.arange(n_tree), now + torch.arange(n_tree)] = True
            position_ids = (plen[:, :, None] + (step - 1)).expand(rows, group, k)
            additive = torch.zeros(mask.shape, dtype=dtype)
            additive.masked_fill_(~mask, torch.finfo(dtype).min)
            with torch.no_grad():
                logits = model(
                    input_ids=tokens[..., -1].reshape(rows, n_tree).to(device),
                    past_key_values=cache,
                    position_ids=position_ids.reshape(rows, n_tree).to(device),
                    attention_mask=additive[:, None].to(device),
                    use_cache=True,
                ).logits
            calls += 1
            fed_tokens += rows * n_tree
            logp = logits.double().log_softmax(-1).cpu().view(rows, group, k, vocab)
            here = new_rows[None].expand(rows, -1, -1)
            if isinstance(search, Beam):
                cand = (scores[..., None] + logp).view(rows, group, k * vocab)
                scores, flat = cand.topk(k, dim=-1)
                parent, token = flat // vocab, flat % vocab
                tokens = torch.cat(
                    [
                        tokens.gather(2, parent[..., None].expand(-1, -1, -1, step)),
                        token[..., None],
                    ],
                    dim=-1,
                )
                anc = torch.cat(
                    [
                        anc.gather(2, parent[..., None].expand(-1, -1, -1, step - 1)),
                        here.gather(2, parent)[..., None],
                    ],
                    dim=-1,
                )
                first_lp = first_lp.gather(2, parent)
                logw = scores
            else:
                assert noise is not None
                token = _sample(logp, noise[:, :, step, 0][..., None]).squeeze(-1)
                lp = logp.gather(-1, token[..., None]).squeeze(-1)
                # π_(d+1) / (π_d · p(y_(d+1) | ...)) with d = step:
                # p(y_1..y_d)^(β_(d+1) - β_d) · p(y_(d+1) | ...)^(β_(d+1) - 1)
                logw = rise * scores + rise * (step + 1) * lp
                scores = scores + lp
                tokens = torch.cat([tokens, token[..., None]], dim=-1)
                anc = torch.cat([anc, here[..., None]], dim=-1)
                if step < depth - 1:
                    resample(step)
    finally:
        extra = int(cache.get_seq_length()) - base
        if extra:
            cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
    return {
        "tokens": tokens,
        "first_logp": first_lp,
        "path_logp": scores,
        "weight": logw.softmax(-1),
        "calls": calls,
        "fed": fed_tokens,
    }


@dataclass(frozen=True)
class Block:
    """Rows of several documents' positions for one engine call (`pack_documents`).

    Row r holds positions lo..hi (indices into document docs[r]'s position list) of that
    document; rows are right-padded (ids with 0, positions with the row's last one), and a
    row's outputs past hi - lo are padding.
    """

    docs: list[int]
    spans: list[tuple[int, int]]
    ids: torch.Tensor  # [R, T] long
    positions: torch.Tensor  # [R, P] long


def pack_documents(
    contexts: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], budget: int
) -> Iterator[Block]:
    """Documents' positions in blocks of rows with R·P <= `budget` (a document with more
    positions than that is split over rows), in document order: many short documents then
    share one forward per depth step instead of taking one each."""
    rows: list[tuple[int, int, int]] = []
    for d, ts in enumerate(positions):
        for lo in range(0, len(ts), budget):
            rows.append((d, lo, min(len(ts), lo + budget)))
    block: list[tuple[int, int, int]] = []
    for row in rows:
        longest = max([hi - lo for _, lo, hi in block] + [row[2] - row[1]])
        if block and (len(block) + 1) * longest > budget:
            yield _block(block, contexts, positions)
            block = []
        block.append(row)
    if block:
        yield _block(block, contexts, positions)


def _block(
    rows: list[tuple[int, int, int]],
    contexts: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
) -> Block:
    width = max(positions[d][hi - 1] + 1 for d, _, hi in rows)
    n_pos = max(hi - lo for _, lo, hi in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), n_pos, dtype=torch.long)
    for r, (d, lo, hi) in enumerate(rows):
        ts = list(positions[d][lo:hi])
        ctx = list(contexts[d][: ts[-1] + 1])
        ids[r, : len(ctx)] = torch.tensor(ctx)
        pos[r] = torch.tensor(ts + [ts[-1]] * (n_pos - len(ts)))
    return Block([d for d, _, _ in rows], [(lo, hi) for _, lo, hi in rows], ids, pos)


def block_noise(
    block: Block, doc_noise: Callable[[int], torch.Tensor], depth: int, n: int
) -> torch.Tensor:
    """The particle noise of a block from each document's own noise [1, P_d, depth, 2, n]
    (`doc_noise(d)`), so that a position's particles do not depend on the packing."""
    out = torch.zeros(*block.positions.shape, depth, 2, n, dtype=torch.float64)
    cache: dict[int, torch.Tensor] = {}
    for r, (d, (lo, hi)) in enumerate(zip(block.docs, block.spans, strict=True)):
        if d not in cache:
            cache = {d: doc_noise(d)}
        out[r, : hi - lo] = cache[d][0, lo:hi]
    return out

"""Local typicality of a text under a model (Meister et al. 2022, "Locally typical sampling").

For each token x_t with context c_t, the model's distribution p(. | c_t) has an entropy
H_t = -sum_v p(v | c_t) log p(v | c_t): the surprisal a token drawn from that distribution
has on average. Human text keeps each token's surprisal -log p(x_t | c_t) close to H_t:
neither much likelier than expected (the repetition loops that maximising likelihood finds:
surprisal near 0 where the model is still uncertain) nor much less likely (noise). The
per-token value is

    typ_t = -| -log p(x_t | c_t) - H_t |      (nats; 0 is perfectly typical, higher is better)

and a text's score is `TokenScores` of these values, so ``mean`` is the negative mean
absolute distance, and objectives, caches and the store handle it like a log-likelihood.

Two contexts, two scorers (each stored under ``typical/<base scorer name>``):

- `TypicalScorer` on a `scoring.pll.PLLScorer`: c_t is the text with x_t masked (the masked
  conditional of PLL). The PLL pass already has the whole distribution at each masked
  position, so a PLL scorer made with ``entropy=True`` keeps H_t beside log p and this costs
  no forward pass; sharing that PLL scorer with the PLL fitness answers both from its cache.
- `TypicalCausalScorer` (a `scoring.causal.CausalScorer`): c_t is prompt + x_<t. It runs its
  own computation per batch (`_typical_run`) on the batches `CausalScorer._batches` makes for
  scoring too; ``score``/``score_ids`` of plain causal scorers are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from scoring.causal import CausalScorer
from scoring.models import LoadedModel
from scoring.pll import PLLScorer
from scoring.results import EMPTY, TokenScores


def typical_scorer_name(base: str) -> str:
    """``typical/<base scorer name>``, e.g. ``typical/pll/original/tiny-bert``."""
    return f"typical/{base}"


def typicality(logprobs: Sequence[float], entropies: Sequence[float]) -> list[float]:
    """Per-token ``-|surprisal - entropy|`` from log-probabilities and entropies (nats)."""
    if len(logprobs) != len(entropies):
        raise ValueError(f"{len(logprobs)} log-probabilities for {len(entropies)} entropies")
    return [-abs(-float(lp) - float(h)) for lp, h in zip(logprobs, entropies, strict=True)]


def typical_of(scores: TokenScores) -> TokenScores:
    """The typicality scores of a result that carries entropies (an empty one stays empty)."""
    if scores.n_tokens == 0:
        return EMPTY
    if scores.entropies is None:
        raise ValueError("these scores carry no entropies; make the PLL scorer with entropy=True")
    return TokenScores.from_logprobs(typicality(scores.token_logprobs, scores.entropies))


class TypicalScorer:
    """Typicality under a masked LM's conditionals, read off a PLL scorer's entropies."""

    def __init__(self, pll: PLLScorer) -> None:
        if not pll.entropy:
            raise ValueError("TypicalScorer needs a PLLScorer made with entropy=True")
        self.pll = pll
        self.lm: LoadedModel = pll.lm
        self.name = typical_scorer_name(pll.name)

    def score_ids(
        self, continuations: Sequence[Sequence[int]], prefix_ids: Sequence[int] = ()
    ) -> list[TokenScores]:
        return [typical_of(s) for s in self.pll.score_ids(continuations, prefix_ids)]

    def score(self, texts: Sequence[str], prefix: str = "") -> list[TokenScores]:
        return [typical_of(s) for s in self.pll.score(texts, prefix)]


class TypicalCausalScorer(CausalScorer):
    """Typicality under a causal LM: p(. | prompt, x_<t) at each continuation token.

    Same tokenisation, start token, length checks and cache as `CausalScorer`; only the
    per-token values differ (`_typical_run`).
    """

    def __init__(
        self, lm: LoadedModel, tokens_per_batch: int = 2048, cache_size: int = 200_000
    ) -> None:
        super().__init__(lm, tokens_per_batch, cache_size)
        self.name = typical_scorer_name(self.name)

    def _compute(
        self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[Sequence[float]]:
        return list(self._typical_run(self._context(prefix), conts))

    # -- typicality forward: kept apart from CausalScorer._run on purpose -----------------

    def _typical_run(
        self, context: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[tuple[float, ...]]:
        """Per-token typicality of each continuation after ``context``, in input order:
        right-padded batches of about ``tokens_per_batch`` tokens, full-vocabulary logits
        from the context's last position on."""
        out: list[tuple[float, ...]] = [() for _ in conts]
        for batch, targets, logits in self._batches(context, conts):
            with torch.inference_mode():
                logp = torch.log_softmax(logits, dim=-1)
                entropy = -(logp.exp() * logp).nan_to_num(0.0, 0.0, 0.0).sum(dim=-1)  # 0 log 0 = 0
                picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                typ = (-(picked.neg() - entropy).abs()).cpu()
            for r, i in enumerate(batch):
                values = typ[r, : len(conts[i])].tolist()
                out[i] = tuple(float(x) if math.isfinite(x) else -math.inf for x in values)
        return out

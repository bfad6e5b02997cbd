"""Log-likelihood of continuations under a causal LM: log p(continuation | prefix).

Used as an independent judge of the texts the masked LM evolves, and for baselines. The
prefix and each continuation are tokenised separately (no special tokens), so every
continuation is scored on the same prefix ids, exactly like ``PLLScorer``. With an empty
prefix, the first continuation token is conditioned on a start token: ``<|endoftext|>`` when
the vocabulary has it (the document separator that GPT-2-style byte-level models, SmolLM2
included, were pretrained with; SmolLM2's declared BOS ``<|im_start|>`` is a chat-turn token
and scores plain English ~13 nats per sentence worse), else BOS, else EOS.

Continuations are sorted by length and right-padded into batches of about
``tokens_per_batch`` tokens with an attention mask; right padding leaves positions and the
causal attention of real tokens untouched, so batched scores equal unbatched ones (checked
in the tests to 1e-4). Logits are computed only from the prefix's last position on
(``logits_to_keep``) when the model supports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scoring.base import CachedScorer, ScorerStats
from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.names import causal_scorer_name

START_TOKEN = "<|endoftext|>"


@dataclass
class CausalStats(ScorerStats):
    """Counters since the scorer was made (or since ``reset``)."""

    forward_rows: int = 0  # sequences run through the model
    forward_passes: int = 0  # model forward calls


def start_token_id(tokenizer: Any) -> int:
    """The token that conditions the first token when the prefix is empty (module docstring).

    The one rule for every causal-LM consumer (`CausalScorer`, the amplify lookahead), so
    they score the first token of a text alike.
    """
    vocab_id = tokenizer.get_vocab().get(START_TOKEN)
    if vocab_id is not None:
        return int(vocab_id)
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise UserError("the causal LM's tokenizer has no BOS or EOS token to start a text with")


class CausalScorer(CachedScorer):
    """Batched, cached log p(continuation | prefix) under a causal LM."""

    def __init__(
        self, lm: LoadedModel, tokens_per_batch: int = 2048, cache_size: int = 200_000
    ) -> None:
        if tokens_per_batch < 1:
            raise UserError(f"tokens_per_batch must be at least 1, got {tokens_per_batch}")
        super().__init__(lm, cache_size)
        self.name = causal_scorer_name(lm.name)
        self.tokens_per_batch = tokens_per_batch
        self.stats: CausalStats = CausalStats()
        self._start_id = start_token_id(lm.tokenizer)
        pad = getattr(lm.tokenizer, "pad_token_id", None)
        self._pad_id = int(pad) if pad is not None else self._start_id
        params = inspect.signature(lm.model.forward).parameters
        self._keep_arg = "logits_to_keep" in params

    def _context(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        return prefix if prefix else (self._start_id,)

    def _check_lengths(self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]) -> None:
        context = self._context(prefix)
        limit = self.lm.max_length
        for i, cont in enumerate(conts):
            if len(context) + len(cont) > limit:
                raise UserError(
                    f"text {i + 1} is {len(context) + len(cont)} tokens long with its prefix "
                    f"({len(context)} + {len(cont)}); {self.lm.name} takes at most {limit}"
                )

    def _compute(
        self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[Sequence[float]]:
        return list(self._run(self._context(prefix), conts))

    def _run(
        self, context: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[tuple[float, ...]]:
        """Per-token log-probs of each continuation after ``context``, in input order."""
        out: list[tuple[float, ...]] = [() for _ in conts]
        order = sorted(range(len(conts)), key=lambda i: -len(conts[i]))
        c = len(context)
        device = self.lm.device
        start = 0
        while start < len(order):
            width = c + len(conts[order[start]])  # the first of each batch is the longest
            n_rows = max(1, self.tokens_per_batch // width)
            batch = order[start : start + n_rows]
            start += n_rows
            ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                seq = [*context, *conts[i]]
                ids[r, : len(seq)] = torch.tensor(seq)
                attn[r, : len(seq)] = 1
            n_cont = width - c
            # predictions for continuation tokens come from positions c-1 .. width-2
            kwargs: dict[str, Any] = {"attention_mask": attn.to(device)}
            if self._keep_arg:
                kwargs["logits_to_keep"] = n_cont + 1
            with torch.inference_mode():
                logits = self.lm.model(input_ids=ids.to(device), **kwargs).logits
                logits = logits[:, -(n_cont + 1) : -1].float()
                targets = ids[:, c:].to(device)
                picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                logp = (picked - torch.logsumexp(logits, dim=-1)).cpu()
            self.stats.forward_passes += 1
            self.stats.forward_rows += len(batch)
            for r, i in enumerate(batch):
                out[i] = tuple(float(x) for x in logp[r, : len(conts[i])].tolist())
        return out

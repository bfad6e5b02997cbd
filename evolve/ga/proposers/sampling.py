"""The sampling policy every proposer draws tokens with: temperature, top-k, banned ids.

`SamplingPolicy` turns a model's raw logits into the log-probabilities actually sampled
from (banned ids removed, divided by the temperature, cut to the ``top_k`` likeliest; at
temperature 0 all mass on the argmax) and draws one token per row from them. The MLM and
causal proposers both use it, so the two sample alike, and Metropolis-Hastings reads its
proposal probabilities (``fill(return_logq=True)``, ``logprob_of``) off the same
`logprobs` the draw used.

Draws come from an explicit ``torch.Generator``, or the global torch RNG when it is None
(what a run seeded by `evolve.ga.seeding` uses, so one seed reproduces a run);
`sample_rows` gives each row its own generator (per-request seeds, `FillRequest.seed`). The
generator must live on the device of the logits.

Validation of temperature and top-k is here, once (`SamplingPolicy.validate`): building a
policy checks them, and config validation calls the same function.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from scoring.errors import UserError


@dataclass(frozen=True)
class SamplingPolicy:
    """How logits become sampled tokens (see the module docstring)."""

    temperature: float = 1.0  # the model's own distribution; 0 = greedy argmax
    top_k: int = 0  # 0 = the full vocabulary
    banned_ids: frozenset[int] = frozenset()  # never proposed (special tokens, placeholders)
    _masks: dict[tuple[int, str], torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.validate(self.temperature, self.top_k)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "banned_ids", frozenset(int(i) for i in self.banned_ids))

    @staticmethod
    def validate(temperature: float, top_k: int) -> None:
        """Raise `UserError` unless temperature is finite and >= 0 and top_k is >= 0."""
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
        return SamplingPolicy(self.temperature, self.top_k, self.banned_ids | frozenset(ids))

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

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution sampled from, as log-probabilities [..., V] (banned ids at -inf;
        at temperature 0, 0 at the argmax and -inf elsewhere)."""
        logits = logits.masked_fill(self.banned_mask(logits.shape[-1], logits.device), -math.inf)
        if self.greedy:
            best = logits.argmax(dim=-1, keepdim=True)
            out = torch.full_like(logits, -math.inf)
            return out.scatter_(-1, best, 0.0)
        logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return torch.log_softmax(logits, dim=-1)

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

    @staticmethod
    def logprob_of(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The log-probability of ``tokens[i]`` in row i of `logprobs`."""
        return logprobs.gather(-1, tokens.view(-1, 1)).squeeze(-1)


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

"""Variation operators on continuations: MLM span mutation and word-boundary crossover.

They follow DEAP's operator contract: individuals are modified in place, a tuple is
returned, and each changed individual gets its fitness invalidated and its lineage
(op, parents, rewritten span, detail) recorded through `evolve.ga.individual.record_edit`.
Individuals hold only the continuation, so the prompt cannot be touched; it is passed to the
proposer as context through `OperatorContext`.

- Mutation masks a random span of 1..max_span continuation tokens and lets the proposer
  refill it (``mut_span``). With probability ``indel_prob`` the refill has one token more
  (``mut_insert``, the span may then be empty: a pure insertion) or one fewer (``mut_delete``,
  a one-token span then simply disappears), keeping the length within [min_len, max_len].
- Crossover cuts both parents where a word starts (never inside a word), exchanges the tails
  (one-point) or middle segments (two-point), and repairs each seam by re-masking ``seam``
  tokens on each side of every cut and refilling them.

The batched forms (`mutate_batch`, `crossover_batch`) make one proposer call for all their
individuals; the single forms wrap them. Positions and spans come from the global `random`
module (as in DEAP), token sampling from torch's global RNG, so one seed reproduces a run.

Metropolis-Hastings (Goyal et al. 2022): with ``with_logq`` each plain mutation also records
``log_q_forward`` and ``log_q_reverse`` in its lineage detail: the log-probability of the move
and of the move that would undo it, each the probability of choosing that edit (variant,
span length, start) plus the proposer's probability of the tokens it puts in. `mh_accept`
then decides with the energy -PLL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from evolve.ga.proposers import FillRequest, InputTemplate, Proposer
from evolve.ga.proposers.sampling import repeated_ngram_ends
from scoring.errors import UserError
from scoring.words import word_starts

CxPoints = Literal["one", "two", "random"]
CX_POINTS: tuple[CxPoints, ...] = ("one", "two", "random")
MutOp = Literal["mut_span", "mut_insert", "mut_delete"]
MUT_OPS: tuple[MutOp, ...] = ("mut_span", "mut_insert", "mut_delete")


@dataclass(frozen=True, kw_only=True)
class OperatorContext:
    """Everything the operators need besides the individuals; pass it as ``ctx=``."""

    proposer: Proposer
    prompt_ids: tuple[int, ...]  # fixed prompt (MLM ids, no specials): context, never edited
    tokenizer: Any  # the MLM's tokenizer (word boundaries, special-token template)
    max_span: int = 3  # longest span a mutation rewrites
    min_len: int = 1  # continuation length bounds kept by indels and crossover
    max_len: int = 64
    mask_id: int | None = None  # None: the tokenizer's mask token
    indel_prob: float = 0.0  # share of mutations that insert or delete one token
    cx_points: CxPoints = "random"  # one-point, two-point, or either with equal chance
    seam: int = 1  # tokens re-masked on each side of a crossover cut (0 = no repair)
    with_logq: bool = False  # record MH proposal log-probabilities on mutated children
    # n-gram guard (the proposer's policy applies it; the operators also keep splices and
    # deletions from making a repeated n-gram): 0 = off
    no_repeat_ngram: int = 0
    template: InputTemplate | None = None  # None: read off the tokenizer

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
        if self.mask_id is None:
            mask = getattr(self.tokenizer, "mask_token_id", None)
            if mask is None:
                raise UserError("the tokenizer has no mask token; span operators need one")
            object.__setattr__(self, "mask_id", int(mask))
        if self.template is None:
            object.__setattr__(self, "template", InputTemplate.from_tokenizer(self.tokenizer))
        if self.max_span < 1:
            raise UserError(f"max_span must be at least 1 (got {self.max_span})")
        if not 1 <= self.min_len <= self.max_len:
            raise UserError(f"need 1 <= min_len <= max_len (got {self.min_len}, {self.max_len})")
        if not 0.0 <= self.indel_prob <= 1.0:
            raise UserError(f"indel_prob must be within [0, 1] (got {self.indel_prob})")
        if self.cx_points not in CX_POINTS:
            raise UserError(
                f"unknown crossover points {self.cx_points!r}; choose from {', '.join(CX_POINTS)}"
            )
        if self.seam < 0:
            raise UserError(f"seam must be >= 0 (got {self.seam})")
        if self.no_repeat_ngram < 0:
            raise UserError(
                f"no_repeat_ngram must be >= 1, or 0 for off (got {self.no_repeat_ngram})"
            )

    @property
    def offset(self) -> int:
        """Model input position of continuation token 0."""
        assert self.template is not None
        return self.template.offset(self.prompt_ids)

    def request(
        self,
        cont_ids: Sequence[int],
        positions: Iterable[int],
        avoid: Sequence[int] | None = None,
    ) -> FillRequest:
        """A fill request for a continuation; ``positions`` are continuation indices.

        The positions are set to the mask id in the request's input. ``avoid``: the tokens
        they held (`FillRequest.avoid`).
        """
        assert self.template is not None and self.mask_id is not None
        ids = self.template.build(self.prompt_ids, cont_ids)
        off = self.offset
        pos = tuple(off + int(p) for p in positions)
        for p in pos:
            ids[p] = self.mask_id
        region = None
        if self.no_repeat_ngram:
            lo = off - min(len(self.prompt_ids), self.no_repeat_ngram - 1)
            region = (lo, off + len(cont_ids))
        return FillRequest(
            tuple(ids),
            pos,
            region=region,
            avoid=None if avoid is None else tuple(avoid),
            prompt=off,
        )

    @property
    def guard_context(self) -> tuple[int, ...]:
        """The prompt's last N - 1 tokens, which the n-gram guard counts as context."""
        n = self.no_repeat_ngram
        return (
            self.prompt_ids[len(self.prompt_ids) - min(len(self.prompt_ids), n - 1) :] if n else ()
        )

    def repeats(self, cont_ids: Sequence[int]) -> set[tuple[int, ...]]:
        """The n-grams (guard's N, prompt tail as context) that occur more than once."""
        n = self.no_repeat_ngram
        if not n:
            return set()
        region = [*self.guard_context, *cont_ids]
        grams = [tuple(region[s : s + n]) for s in range(len(region) - n + 1)]
        seen: set[tuple[int, ...]] = set()
        twice: set[tuple[int, ...]] = set()
        for g in grams:
            (twice if g in seen else seen).add(g)
        return twice

    def repeat_breaks(self, cont_ids: Sequence[int], refill: Iterable[int] = ()) -> list[int]:
        """Continuation positions to refill (beside ``refill``) so that, refilled under the
        guard, ``cont_ids`` holds no repeated n-gram (`repeated_ngram_ends`)."""
        if not self.no_repeat_ngram:
            return []
        ctx = self.guard_context
        blank = set(refill)
        region = [*ctx, *(None if i in blank else t for i, t in enumerate(cont_ids))]
        ends = repeated_ngram_ends(region, self.no_repeat_ngram, frozen=len(ctx))
        return [e - len(ctx) for e in ends]

    def continuation_of(self, input_ids: Sequence[int]) -> list[int]:
        """The continuation ids out of a filled model input."""
        assert self.template is not None
        return self.template.continuation(input_ids, self.prompt_ids)

    def word_starts(self, cont_ids: Sequence[int]) -> list[bool]:
        """Whether each continuation token begins a word, judged with the prompt before it
        (so a continuation that goes on with the prompt's last word is not cut there)."""
        return word_starts(self.tokenizer, [*self.prompt_ids, *cont_ids])[len(self.prompt_ids) :]


class _Random(Protocol):
    def random(self) -> float: ...


# -- mutation ------------------------------------------------------------------------------

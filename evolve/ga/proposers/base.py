"""Proposers: fill the positions of a model input that a variation operator rewrites.

A proposer is what the variation operators call to rewrite a span: it gets the full model
input (special tokens + prompt + continuation + special tokens, in the run's representation
tokens, see `evolve.ga.representation`) with some positions to fill, and returns the input with
those positions filled, same length. The operators only know this small protocol, so either
proposer plugs in without touching them; each child's lineage records the proposer's `name`.

`MLMProposer` (``mlm``) samples from a masked LM, all requests of one call in one padded batch:

- ``order="parallel"``: one forward pass, every masked position sampled independently.
- ``order="l2r"``: the leftmost remaining mask of each request is sampled per step and the
  batch re-run, so each token sees the ones filled before it (rows leave the batch once
  filled; requests with more masks take more steps).

`CausalProposer` (``causal``) uses a causal LM, which cannot see right context while it
samples: for each span (a run of adjacent positions) it samples ``candidates`` fills of the
span's length from the left context, then keeps the candidate whose whole text (left + fill
+ right) is the most likely under the same LM, all candidates of all requests scored in one
batched `CausalScorer` call. Spans of one request are filled left to right; a span's
candidates are judged on the text up to the next span still to fill.

Sampling uses the global torch RNG (``torch.multinomial``), so one seed (`evolve.ga.seeding`)
reproduces a run; ``temperature=0`` is greedy argmax. Special tokens (CLS, SEP, PAD, MASK,
UNK, ...), BERT's ``[unusedN]`` placeholders and ids the tokenizer does not know are never
proposed.

For Metropolis-Hastings acceptance (Goyal et al. 2022) the MLM proposer also reports the
log-probability of its proposal (``fill(..., return_logq=True)``), and `logprob_of` gives the
log-probability the same proposal distribution assigns to given tokens (the old ones, for
the reverse move). Both use the distribution actually sampled from: tempered, top-k cut,
banned tokens removed, in the same fill order. The causal proposer's best-of-K choice has no
tractable proposal probability, so it refuses both (the config refuses --mh with it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload, runtime_checkable

from scoring.pll import special_template

Order = Literal["l2r", "parallel"]
ORDERS: tuple[Order, ...] = ("l2r", "parallel")

_UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>)$")  # vocabulary placeholders, never text


@dataclass(frozen=True)
class FillRequest:
    """A full model input (representation ids, specials included) and the positions to fill.

    The positions normally hold the mask id already; the proposer masks them regardless, so
    whatever they hold is never seen by the model.
    """

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]  # indices into input_ids, filled in increasing order

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_ids", tuple(int(i) for i in self.input_ids))
        pos = tuple(sorted({int(p) for p in self.positions}))
        if pos and (pos[0] < 0 or pos[-1] >= len(self.input_ids)):
            raise ValueError(f"fill positions {pos} outside an input of {len(self.input_ids)}")
        object.__setattr__(self, "positions", pos)


@dataclass(frozen=True)
class InputTemplate:
    """How a tokenizer wraps one sequence in special tokens: ``head + ids + tail``.

    transformers 5 tokenizers no longer have ``build_inputs_with_special_tokens``, so the
    template is read off the tokenizer once (see `scoring.pll.special_template`).
    """

    head: tuple[int, ...]
    tail: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> InputTemplate:
        head, tail = special_template(tokenizer)
        return cls(tuple(int(i) for i in head), tuple(int(i) for i in tail))

    @property
    def n_special(self) -> int:
        return len(self.head) + len(self.tail)

    def build(self, prompt_ids: Sequence[int], cont_ids: Sequence[int]) -> list[int]:
        """The model input for a prompt and its continuation."""
        return [*self.head, *prompt_ids, *cont_ids, *self.tail]

    def offset(self, prompt_ids: Sequence[int]) -> int:
        """Input position of continuation token 0 (continuation index i is at offset + i)."""
        return len(self.head) + len(prompt_ids)

    def continuation(self, input_ids: Sequence[int], prompt_ids: Sequence[int]) -> list[int]:
        """The continuation ids back out of a (filled) model input."""
        end = len(input_ids) - len(self.tail)
        return [int(i) for i in input_ids[self.offset(prompt_ids) : end]]


def build_input(
    tokenizer: Any, prompt_ids: Sequence[int], cont_ids: Sequence[int]
) -> tuple[list[int], int]:
    """``(model input ids, offset)``: continuation index i sits at input position offset + i."""
    template = InputTemplate.from_tokenizer(tokenizer)
    return template.build(prompt_ids, cont_ids), template.offset(prompt_ids)


@runtime_checkable
class Proposer(Protocol):
    """What the operators need from a proposer (representation ids in, the same out)."""

    name: str  # recorded in each child's lineage detail

    @overload
    def fill(
        self, requests: Sequence[FillRequest], *, return_logq: Literal[False] = False
    ) -> list[list[int]]: ...

    @overload
    def fill(
        self, requests: Sequence[FillRequest], *, return_logq: Literal[True]
    ) -> tuple[list[list[int]], list[float]]: ...

    def fill(
        self, requests: Sequence[FillRequest], *, return_logq: bool = False
    ) -> list[list[int]] | tuple[list[list[int]], list[float]]:
        """Each request's input with its positions filled; with ``return_logq`` also the
        log-probability of each request's proposal (sum over its filled tokens)."""
        ...

    def logprob_of(
        self, requests: Sequence[FillRequest], targets: Sequence[Sequence[int]]
    ) -> list[float]:
        """Log-probability that `fill` would put ``targets[i]`` at ``requests[i].positions``
        (``-inf`` where it never would)."""
        ...



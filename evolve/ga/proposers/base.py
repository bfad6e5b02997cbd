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

Both draw tokens through one `evolve.ga.proposers.sampling.SamplingPolicy` (temperature,
top-k, banned ids; ``temperature=0`` is greedy argmax) from the global torch RNG unless given
a ``generator``, or, for a request with a ``seed``, from that request's own generator (what
a run uses, so that its fills are the same however requests are batched or sharded), so one
seed (`evolve.ga.seeding`) reproduces a run. Special tokens (CLS,
SEP, PAD, MASK, UNK, ...), BERT's ``[unusedN]`` placeholders and ids the tokenizer does not
know are never proposed.

For Metropolis-Hastings acceptance (Goyal et al. 2022) the MLM proposer also reports the
log-probability of its proposal (``fill(..., return_logq=True)``), and `logprob_of` gives the
log-probability the same proposal distribution assigns to given tokens (the old ones, for
the reverse move). Both use the distribution actually sampled from (the policy's
``logprobs``), in the same fill order. The causal proposer's best-of-K choice has no
tractable proposal probability, so it refuses both (the config refuses --mh with it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, overload, runtime_checkable

from scoring.errors import UserError

Order = Literal["l2r", "parallel"]
ORDERS: tuple[Order, ...] = ("l2r", "parallel")

_UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>)$")  # vocabulary placeholders, never text


@dataclass(frozen=True)
class FillRequest:
    """A full model input (representation ids, specials included) and the positions to fill.

    The positions normally hold the mask id already; the proposer masks them regardless, so
    whatever they hold is never seen by the model.

    ``seed``: the request draws its tokens from its own ``torch.Generator`` seeded with it,
    so its fill does not depend on which other requests share its batch or its worker
    (`evolve.ga.workers`); None draws from the proposer's generator (or torch's global one).
    """

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]  # indices into input_ids, filled in increasing order
    seed: int | None = None
    # [lo, hi) of input_ids that the n-gram guard counts (the prompt's last N - 1 tokens and
    # the continuation, see `OperatorContext.request`); None: the whole input
    region: tuple[int, int] | None = None
    # the tokens the positions held before (a mutation's span): a proposer that chooses
    # among candidates keeps the best one that differs from them when it drew one, so that
    # a mutation mutates; None: no such preference (the MLM proposer samples, never chooses)
    avoid: tuple[int, ...] | None = None
    # input_ids[:prompt] are the run's fixed prompt (template head included), never filled:
    # a masked LM with prefix attention (scoring.decoder_mlm) runs them once for every
    # request that shares them, as its scorer does; 0: no prompt known (all attend fully)
    prompt: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_ids", tuple(int(i) for i in self.input_ids))
        pos = tuple(sorted({int(p) for p in self.positions}))
        if pos and (pos[0] < 0 or pos[-1] >= len(self.input_ids)):
            raise ValueError(f"fill positions {pos} outside an input of {len(self.input_ids)}")
        object.__setattr__(self, "positions", pos)
        prompt = int(self.prompt)
        if not 0 <= prompt <= len(self.input_ids) or (pos and pos[0] < prompt):
            raise ValueError(f"prompt of {prompt} tokens: fill positions {pos} must follow it")
        object.__setattr__(self, "prompt", prompt)
        if self.region is not None:
            lo, hi = (int(x) for x in self.region)
            if not 0 <= lo <= hi <= len(self.input_ids):
                raise ValueError(
                    f"guard region {self.region} outside an input of {len(self.input_ids)}"
                )
            object.__setattr__(self, "region", (lo, hi))
        if self.avoid is not None:
            object.__setattr__(self, "avoid", tuple(int(i) for i in self.avoid))

    def guard_region(self, row: Sequence[int], unknown: int | None) -> tuple[int, list[int | None]]:
        """(lo, the guarded tokens of ``row``) with ``unknown`` ids (the mask) as None."""
        lo, hi = self.region if self.region is not None else (0, len(row))
        return lo, [None if t == unknown else int(t) for t in row[lo:hi]]


def check_requests(
    requests: Sequence[FillRequest], model: str, limit: int, *, left_context: bool = False
) -> None:
    """Refuse what no proposer can fill: a request that is no `FillRequest`, one longer than
    the model's window (`limit` tokens of `model`), and with ``left_context`` (a causal LM,
    which fills from the left only) one that fills its first position."""
    for i, r in enumerate(requests):
        if not isinstance(r, FillRequest):
            raise TypeError(f"request {i} is a {type(r).__name__}, not a FillRequest")
        if len(r.input_ids) > limit:
            raise UserError(
                f"fill request {i} is {len(r.input_ids)} tokens long; {model} takes at most {limit}"
            )
        if left_context and r.positions and r.positions[0] == 0:
            raise UserError(f"fill request {i}: a causal LM needs left context to fill from")


Filled = list[list[int]]
FilledWithLogq = tuple[list[list[int]], list[float]]


class FillOverloads:
    """`Proposer.fill`'s typed overloads, written once: a proposer class inherits them and
    implements `_fill` (the return type follows ``return_logq``)."""

    @overload
    def fill(
        self, requests: Sequence[FillRequest], *, return_logq: Literal[False] = False
    ) -> Filled: ...

    @overload
    def fill(
        self, requests: Sequence[FillRequest], *, return_logq: Literal[True]
    ) -> FilledWithLogq: ...

    def fill(
        self, requests: Sequence[FillRequest], *, return_logq: bool = False
    ) -> Filled | FilledWithLogq:
        """Each request's input with its positions filled; with ``return_logq`` also the
        log-probability of each request's proposal (see `Proposer.fill`)."""
        return self._fill(requests, return_logq)

    def _fill(self, requests: Sequence[FillRequest], return_logq: bool) -> Filled | FilledWithLogq:
        raise NotImplementedError


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

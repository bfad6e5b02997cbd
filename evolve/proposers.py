"""Proposers: fill the positions of a model input that a variation operator rewrites.

A proposer is what the variation operators call to rewrite a span: it gets the full model
input (special tokens + prompt + continuation + special tokens, in the run's representation
tokens, see `evolve.representation`) with some positions to fill, and returns the input with
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

Sampling uses the global torch RNG (``torch.multinomial``), so one seed (`evolve.seeding`)
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

import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload, runtime_checkable

import torch

from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.pll import _pad_id, _split_model, special_template

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


class MLMProposer:
    """Samples fills for masked positions from a masked LM (see the module docstring).

    ``temperature``: divides the logits; 0 means greedy argmax. ``top_k``: sample among the
    k likeliest tokens only (0 = the full vocabulary). ``banned_ids``: more ids never to
    propose, beside the special ones. ``tokens_per_batch``: rows x padded length per forward
    pass (bounds memory for large calls).
    """

    name = "mlm"

    def __init__(
        self,
        lm: LoadedModel,
        temperature: float = 1.0,
        top_k: int = 0,
        order: Order = "l2r",
        banned_ids: Sequence[int] = (),
        tokens_per_batch: int = 4096,
    ) -> None:
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise UserError(f"temperature must be a finite number >= 0 (got {temperature})")
        if top_k < 0:
            raise UserError(f"top_k must be >= 0, 0 meaning the full vocabulary (got {top_k})")
        if order not in ORDERS:
            raise UserError(f"unknown fill order {order!r}; choose from {', '.join(ORDERS)}")
        mask_id = getattr(lm.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise UserError(f"{lm.name!r} has no mask token, so it cannot fill masked spans")
        self.lm = lm
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.order: Order = order
        self.tokens_per_batch = max(1, int(tokens_per_batch))
        self.mask_id = int(mask_id)
        self.template = InputTemplate.from_tokenizer(lm.tokenizer)
        self._pad_id = _pad_id(lm)
        self.banned = self._banned_mask(banned_ids)
        if bool(self.banned.all()):
            raise UserError(f"{lm.name!r}: every token id is banned, nothing can be proposed")
        probe = [*self.template.head, *self._some_ids(6), self.mask_id, *self.template.tail]
        self._split = _split_model(lm, probe)

    # -- set-up ---------------------------------------------------------------------------

    def _vocab_size(self) -> int:
        out = self.lm.model.get_output_embeddings()
        weight = getattr(out, "weight", None)
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
        return int(self.lm.model.config.vocab_size)

    def _banned_mask(self, extra: Sequence[int]) -> torch.Tensor:
        tok = self.lm.tokenizer
        size = self._vocab_size()
        banned = torch.zeros(size, dtype=torch.bool)
        ids = {int(i) for i in tok.all_special_ids} | {self.mask_id} | {int(i) for i in extra}
        for token, i in tok.get_vocab().items():
            if _UNUSED.match(token):
                ids.add(int(i))
        for i in ids:
            if 0 <= i < size:
                banned[i] = True
        known = len(tok)
        if known < size:  # model rows with no token behind them (padded vocabularies)
            banned[known:] = True
        return banned.to(self.lm.device)

    def _some_ids(self, n: int) -> list[int]:
        allowed = (~self.banned).nonzero().flatten().tolist()
        return [int(i) for i in allowed[: max(1, n)]]

    @property
    def gathers_head(self) -> bool:
        """True when the vocabulary projection runs only at the positions being filled."""
        return self._split is not None

    # -- public API -----------------------------------------------------------------------

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
        """Fill every request's positions, all requests batched together.

        Returns the filled inputs (same order as ``requests``); with ``return_logq`` also the
        proposal log-probability of each (sum of the sampled tokens' log-probabilities under
        the distribution sampled from; 0.0 for greedy and for a request with no positions).
        """
        self._check(requests)
        rows = [self._masked(r) for r in requests]
        logq = [0.0] * len(requests)
        if self.order == "parallel":
            todo = [(i, p) for i, r in enumerate(requests) for p in r.positions]
            if todo:
                logp = self._logprobs([(rows[i], p) for i, p in todo], distinct_rows=rows)
                picked, lp = self._sample(logp)
                for (i, p), tok, v in zip(todo, picked.tolist(), lp.tolist(), strict=True):
                    rows[i][p] = int(tok)
                    logq[i] += float(v)
        else:
            steps = max((len(r.positions) for r in requests), default=0)
            for step in range(steps):
                active = [i for i, r in enumerate(requests) if len(r.positions) > step]
                queries = [(rows[i], requests[i].positions[step]) for i in active]
                picked, lp = self._sample(self._logprobs(queries))
                for i, tok, v in zip(active, picked.tolist(), lp.tolist(), strict=True):
                    rows[i][requests[i].positions[step]] = int(tok)
                    logq[i] += float(v)
        if return_logq:
            return rows, logq
        return rows

    def logprob_of(
        self, requests: Sequence[FillRequest], targets: Sequence[Sequence[int]]
    ) -> list[float]:
        """Log-probability that `fill` puts ``targets[i]`` at ``requests[i].positions``.

        This is the reverse-move probability Metropolis-Hastings needs: pass the request that
        masks the rewritten span and the tokens that were there before. In ``l2r`` order the
        targets are teacher-forced left to right (all steps of all requests in one batch), in
        ``parallel`` order they are scored under one shared masked input. ``-inf`` where the
        proposal could never produce the targets (top-k cut, banned, or not the greedy pick).
        """
        self._check(requests)
        if len(targets) != len(requests):
            raise ValueError(f"{len(targets)} target lists for {len(requests)} requests")
        queries: list[tuple[list[int], int]] = []
        wanted: list[int] = []
        owner: list[int] = []
        distinct: list[list[int]] = []
        for i, (req, tgt) in enumerate(zip(requests, targets, strict=True)):
            tgt = [int(t) for t in tgt]
            if len(tgt) != len(req.positions):
                raise ValueError(
                    f"request {i}: {len(tgt)} targets for {len(req.positions)} positions"
                )
            base = self._masked(req)
            if self.order == "parallel":
                distinct.append(base)
                queries.extend((base, p) for p in req.positions)
            else:
                for step, p in enumerate(req.positions):
                    row = list(base)
                    for q, t in zip(req.positions[:step], tgt[:step], strict=True):
                        row[q] = t
                    queries.append((row, p))
            wanted.extend(tgt)
            owner.extend([i] * len(tgt))
        out = [0.0] * len(requests)
        if not queries:
            return out
        logp = self._logprobs(queries, distinct_rows=distinct or None)
        lp = self._logq_of(logp, torch.tensor(wanted, device=logp.device))
        for i, v in zip(owner, lp.tolist(), strict=True):
            out[i] += float(v)
        return out

    # -- internals ------------------------------------------------------------------------

    def _check(self, requests: Sequence[FillRequest]) -> None:
        limit = self.lm.max_length
        for i, r in enumerate(requests):
            if not isinstance(r, FillRequest):
                raise TypeError(f"request {i} is a {type(r).__name__}, not a FillRequest")
            if len(r.input_ids) > limit:
                raise UserError(
                    f"fill request {i} is {len(r.input_ids)} tokens long; "
                    f"{self.lm.name} takes at most {limit}"
                )

    def _masked(self, request: FillRequest) -> list[int]:
        row = list(request.input_ids)
        for p in request.positions:
            row[p] = self.mask_id
        return row

    def _logprobs(
        self,
        queries: Sequence[tuple[list[int], int]],
        distinct_rows: Sequence[list[int]] | None = None,
    ) -> torch.Tensor:
        """Log-probabilities [len(queries), vocab] of the proposal at each (row, position).

        ``distinct_rows``: when many queries share a row (parallel order), the rows to run
        once each; queries then refer to them by identity.
        """
        if distinct_rows is not None:
            index = {id(r): k for k, r in enumerate(distinct_rows)}
            inputs = list(distinct_rows)
            which = [index[id(row)] for row, _ in queries]
        else:
            inputs = [row for row, _ in queries]
            which = list(range(len(queries)))
        positions = [p for _, p in queries]
        found: list[torch.Tensor] = [torch.empty(0)] * len(queries)
        by_input: dict[int, list[int]] = {}
        for q, k in enumerate(which):
            by_input.setdefault(k, []).append(q)
        order = list(by_input)  # inputs in first-use order (keeps batching deterministic)
        width_all = max(len(inputs[k]) for k in order)
        per_batch = max(1, self.tokens_per_batch // max(1, width_all))
        for start in range(0, len(order), per_batch):
            chunk = order[start : start + per_batch]
            qs = [q for k in chunk for q in by_input[k]]
            local = {k: n for n, k in enumerate(chunk)}
            logits = self._forward(
                [inputs[k] for k in chunk],
                [local[which[q]] for q in qs],
                [positions[q] for q in qs],
            )
            for n, q in enumerate(qs):
                found[q] = logits[n]
        return self._proposal_logprobs(torch.stack(found))

    def _forward(
        self, inputs: Sequence[list[int]], rows: Sequence[int], positions: Sequence[int]
    ) -> torch.Tensor:
        """Raw logits [len(rows), vocab] at ``inputs[rows[i]][positions[i]]``, one padded pass."""
        device = self.lm.device
        width = max(len(r) for r in inputs)
        ids = torch.full((len(inputs), width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((len(inputs), width), dtype=torch.long)
        for n, row in enumerate(inputs):
            ids[n, : len(row)] = torch.tensor(row, dtype=torch.long)
            attn[n, : len(row)] = 1
        ids = ids.to(device)
        mask = attn.to(device) if bool((attn == 0).any()) else None
        r = torch.tensor(list(rows), dtype=torch.long, device=device)
        p = torch.tensor(list(positions), dtype=torch.long, device=device)
        with torch.inference_mode():
            if self._split is not None:
                body, head = self._split
                hidden = body(input_ids=ids, attention_mask=mask)[0]
                logits = head(hidden[r, p])
            else:
                logits = self.lm.model(input_ids=ids, attention_mask=mask).logits[r, p]
        return logits.float()

    def _proposal_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution sampled from, as log-probabilities (banned ids at -inf)."""
        logits = logits.masked_fill(self.banned[: logits.shape[-1]], -math.inf)
        if self.temperature == 0:
            greedy = logits.argmax(dim=-1, keepdim=True)
            out = torch.full_like(logits, -math.inf)
            return out.scatter_(-1, greedy, 0.0)
        logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return torch.log_softmax(logits, dim=-1)

    def _sample(self, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row (global torch RNG) and its log-probability."""
        if self.temperature == 0:
            picked = logp.argmax(dim=-1)
        else:
            picked = torch.multinomial(logp.exp(), 1).squeeze(-1)
        return picked.cpu(), self._logq_of(logp, picked.to(logp.device)).cpu()

    @staticmethod
    def _logq_of(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return logp.gather(-1, tokens.view(-1, 1)).squeeze(-1)


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
    rounds: int = 0  # batched sample-and-score rounds (one per span length and step, per chunk)
    forward_passes: int = 0  # model forward calls
    token_positions: int = 0  # rows x tokens run through the model (the cost of a call)


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


class CausalProposer:
    """Fills spans with a causal LM: sample ``candidates`` fills from the left context, keep
    the one whose whole text is likeliest (see the module docstring).

    How a round works (`_round`), for a batch of spans of one length: the left contexts run
    through the model once (left-padded); their key/value cache is repeated per candidate;
    the candidates are sampled one token per forward pass, collecting each sampled token's
    log-probability under the model's own (untempered) distribution; then one more pass runs
    every candidate's right context on the same cache and adds its log-probability. The sum
    is log p(fill + right | left), and since ``left`` is the same for all candidates of a
    span, ranking by it is ranking by the log-probability of the whole text. Left context and
    sampled tokens are run once, not once per candidate and again for scoring.

    ``temperature`` and ``top_k`` shape the sampling as in `MLMProposer` (temperature 0: one
    greedy fill). ``banned_ids``: more ids never to propose, beside the special ones.
    ``tokens_per_batch``: bounds rows x (right context + 1) per round, hence the memory of
    the scoring pass's logits.
    """

    name = "causal"

    def __init__(
        self,
        lm: LoadedModel,
        candidates: int = 8,
        temperature: float = 1.0,
        top_k: int = 0,
        banned_ids: Sequence[int] = (),
        tokens_per_batch: int = 1024,
    ) -> None:
        if lm.kind != "causal":
            raise UserError(f"the causal proposer needs a causal LM; {lm.name!r} is a {lm.kind}")
        if candidates < 1:
            raise UserError(f"candidates must be at least 1 (got {candidates})")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise UserError(f"temperature must be a finite number >= 0 (got {temperature})")
        if top_k < 0:
            raise UserError(f"top_k must be >= 0, 0 meaning the full vocabulary (got {top_k})")
        self.lm = lm
        self.candidates = int(candidates) if temperature > 0 else 1  # greedy: one fill
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.tokens_per_batch = max(1, int(tokens_per_batch))
        self.stats = CausalProposerStats()
        tok = lm.tokenizer
        self._pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        size = int(getattr(lm.model.config, "vocab_size", 0) or len(tok))
        banned = {int(i) for i in tok.all_special_ids} | {int(i) for i in banned_ids}
        banned |= set(range(len(tok), size))  # model rows with no token behind them
        self.banned = sorted(i for i in banned if 0 <= i < size)
        if len(self.banned) >= size:
            raise UserError(f"{lm.name!r}: every token id is banned, nothing can be proposed")
        mask = torch.zeros(size, dtype=torch.bool)
        mask[self.banned] = True
        self._banned_mask = mask.to(lm.device)
        self._keep_arg = "logits_to_keep" in inspect.signature(lm.model.forward).parameters

    # -- public API -----------------------------------------------------------------------

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
        """Fill every request's positions (same order as ``requests``), all batched together.

        Spans of one request are filled left to right (step k fills every request's k-th
        span); each step batches all requests' spans, grouped by length.
        """
        if return_logq:
            raise UserError(NO_LOGQ)
        self._check(requests)
        self.stats.calls += 1
        rows = [list(r.input_ids) for r in requests]
        spans = [spans_of(r.positions) for r in requests]
        for step in range(max((len(s) for s in spans), default=0)):
            gaps = []
            for i, s in enumerate(spans):
                if len(s) <= step:
                    continue
                start, n = s[step]
                end = s[step + 1][0] if step + 1 < len(s) else len(rows[i])
                gaps.append(_Gap(i, rows[i][:start], n, rows[i][start + n : end]))
            for gap, fill in zip(gaps, self._best_fills(gaps), strict=True):
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

    def _check(self, requests: Sequence[FillRequest]) -> None:
        limit = self.lm.max_length
        for i, r in enumerate(requests):
            if not isinstance(r, FillRequest):
                raise TypeError(f"request {i} is a {type(r).__name__}, not a FillRequest")
            if len(r.input_ids) > limit:
                raise UserError(
                    f"fill request {i} is {len(r.input_ids)} tokens long; "
                    f"{self.lm.name} takes at most {limit}"
                )
            if r.positions and r.positions[0] == 0:
                raise UserError(f"fill request {i}: a causal LM needs left context to fill from")

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
            for step in range(n_new):
                token = self._pick(logits)
                score += torch.log_softmax(logits, dim=-1).gather(-1, token[:, None])[:, 0]
                picked.append(token)
                if step + 1 < n_new:
                    attn = torch.cat([attn, attn.new_ones((rows, 1))], dim=1)
                    last = last + 1
                    out = self._forward(
                        input_ids=token[:, None],
                        attention_mask=attn,
                        position_ids=last[:, None],
                        past_key_values=cache,
                        use_cache=True,
                        **keep,
                    )
                    cache, logits = out.past_key_values, out.logits[:, -1].float()
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

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row from tempered, top-k cut logits with banned ids removed (global
        torch RNG; argmax at temperature 0)."""
        logits = logits.masked_fill(self._banned_mask[: logits.shape[-1]], -math.inf)
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)

"""The masked-LM proposer: sample span fills from an MLM, with proposal probabilities for MH."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from evolve.ga.proposers.base import (
    _UNUSED,
    ORDERS,
    FillOverloads,
    FillRequest,
    Order,
    check_requests,
)
from evolve.ga.proposers.sampling import SamplingPolicy, seeded_generators
from scoring.errors import UserError
from scoring.heads import logits_at, pad_id, split_model
from scoring.models import LoadedModel
from scoring.template import InputTemplate, special_token_ids


class MLMProposer(FillOverloads):
    """Samples fills for masked positions from a masked LM (see the module docstring).

    ``temperature``: divides the logits; 0 means greedy argmax. ``top_k``: sample among the
    k likeliest tokens only (0 = the full vocabulary). ``banned_ids``: more ids never to
    propose, beside the special ones. ``no_repeat_ngram``: the n-gram guard (0 = off). All
    make up ``policy`` (`SamplingPolicy`); the guard reads each request's `FillRequest.region`
    with the positions still to fill (holding the mask) as unknown, in fill order, so
    `logprob_of` applies the same bans the draw did.
    ``tokens_per_batch``: rows x padded length per forward pass (bounds memory for large
    calls). ``generator``: the torch RNG to draw from (None: the global one).
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
        generator: torch.Generator | None = None,
        no_repeat_ngram: int = 0,
    ) -> None:
        SamplingPolicy.validate(temperature, top_k, no_repeat_ngram)
        if order not in ORDERS:
            raise UserError(f"unknown fill order {order!r}; choose from {', '.join(ORDERS)}")
        mask_id = getattr(lm.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise UserError(f"{lm.name!r} has no mask token, so it cannot fill masked spans")
        self.lm = lm
        self.order: Order = order
        self.tokens_per_batch = max(1, int(tokens_per_batch))
        self.generator = generator
        self.mask_id = int(mask_id)
        self.template = InputTemplate.from_tokenizer(lm.tokenizer)
        self._pad_id = pad_id(lm)
        self.vocab_size = self._vocab_size()
        self.policy = SamplingPolicy(
            temperature, top_k, self._banned_ids(banned_ids), no_repeat_ngram
        )
        if self.policy.banned_count(self.vocab_size) >= self.vocab_size:
            raise UserError(f"{lm.name!r}: every token id is banned, nothing can be proposed")
        probe = [*self.template.head, *self._some_ids(6), self.mask_id, *self.template.tail]
        self._split = split_model(lm, probe)
        # A decoder masked LM scoring with prefix attention (scoring.decoder_mlm) proposes
        # with it too: the prompt (`FillRequest.prompt`) sees only itself and runs once.
        self._prompted = getattr(lm.model, "attention", "full") == "prefix" and hasattr(
            lm.model, "prompt_states"
        )

    # -- set-up ---------------------------------------------------------------------------

    def _vocab_size(self) -> int:
        model: Any = self.lm.model  # a transformers PreTrainedModel
        weight = getattr(model.get_output_embeddings(), "weight", None)
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
        return int(model.config.vocab_size)

    def _banned_ids(self, extra: Sequence[int]) -> frozenset[int]:
        """Special ids (added special tokens too), the mask, ``[unusedN]`` placeholders,
        ``extra``, and model rows with no token behind them (padded vocabularies)."""
        tok = self.lm.tokenizer
        size = self.vocab_size
        ids = set(special_token_ids(tok)) | {self.mask_id} | {int(i) for i in extra}
        for token, i in tok.get_vocab().items():
            if _UNUSED.match(token):
                ids.add(int(i))
        ids |= set(range(len(tok), size))
        return frozenset(i for i in ids if 0 <= i < size)

    def _some_ids(self, n: int) -> list[int]:
        banned = self.policy.banned_mask(self.vocab_size, self.lm.device)
        allowed = (~banned).nonzero().flatten().tolist()
        return [int(i) for i in allowed[: max(1, n)]]

    @property
    def gathers_head(self) -> bool:
        """True when the vocabulary projection runs only at the positions being filled."""
        return self._split is not None

    # -- public API -----------------------------------------------------------------------

    def _fill(
        self, requests: Sequence[FillRequest], return_logq: bool
    ) -> list[list[int]] | tuple[list[list[int]], list[float]]:
        """Fill every request's positions, all requests batched together.

        Returns the filled inputs (same order as ``requests``); with ``return_logq`` also the
        proposal log-probability of each (sum of the sampled tokens' log-probabilities under
        the distribution sampled from; 0.0 for greedy and for a request with no positions).
        """
        check_requests(requests, self.lm.name, self.lm.max_length)
        rows = [self._masked(r) for r in requests]
        logq = [0.0] * len(requests)
        gens = seeded_generators([r.seed for r in requests], self.lm.device)
        if self.order == "parallel" and self.policy.guards:
            self._fill_parallel_guarded(requests, rows, logq, gens)
        elif self.order == "parallel":
            todo = [(i, p) for i, r in enumerate(requests) for p in r.positions]
            if todo:
                logp = self._logprobs(
                    [(rows[i], p) for i, p in todo],
                    distinct_rows=rows,
                    prompts=[requests[i].prompt for i, _ in todo],
                )
                picked, lp = self._sample(
                    logp, None if gens is None else [gens[i] for i, _ in todo]
                )
                for (i, p), tok, v in zip(todo, picked.tolist(), lp.tolist(), strict=True):
                    rows[i][p] = int(tok)
                    logq[i] += float(v)
        else:
            steps = max((len(r.positions) for r in requests), default=0)
            for step in range(steps):
                active = [i for i, r in enumerate(requests) if len(r.positions) > step]
                queries = [(rows[i], requests[i].positions[step]) for i in active]
                row_gens = None if gens is None else [gens[i] for i in active]
                bans = self._bans([requests[i] for i in active], queries)
                prompts = [requests[i].prompt for i in active]
                picked, lp = self._sample(
                    self._logprobs(queries, bans=bans, prompts=prompts), row_gens
                )
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
        check_requests(requests, self.lm.name, self.lm.max_length)
        if len(targets) != len(requests):
            raise ValueError(f"{len(targets)} target lists for {len(requests)} requests")
        queries: list[tuple[list[int], int]] = []
        seen: list[tuple[list[int], int]] = []  # what the guard sees at each query
        owners: list[FillRequest] = []
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
            for step, p in enumerate(req.positions):
                row = list(base)
                for q, t in zip(req.positions[:step], tgt[:step], strict=True):
                    row[q] = t
                if self.order != "parallel":
                    queries.append((row, p))
                seen.append((row, p))
                owners.append(req)
            wanted.extend(tgt)
            owner.extend([i] * len(tgt))
        out = [0.0] * len(requests)
        if not queries:
            return out
        bans = self._bans(owners, seen)
        prompts = [requests[owner[n]].prompt for n in range(len(owner))]
        logp = self._logprobs(queries, distinct_rows=distinct or None, bans=bans, prompts=prompts)
        lp = SamplingPolicy.logprob_of(logp, torch.tensor(wanted, device=logp.device))
        for i, v in zip(owner, lp.tolist(), strict=True):
            out[i] += float(v)
        return out

    # -- internals ------------------------------------------------------------------------

    def _masked(self, request: FillRequest) -> list[int]:
        row = list(request.input_ids)
        for p in request.positions:
            row[p] = self.mask_id
        return row

    def _fill_parallel_guarded(
        self,
        requests: Sequence[FillRequest],
        rows: list[list[int]],
        logq: list[float],
        gens: Sequence[torch.Generator | None] | None = None,
    ) -> None:
        """Parallel order under the n-gram guard: one forward pass on the masked inputs, then
        the positions are drawn left to right from those logits, each under the bans of the
        tokens drawn before it (so the proposal stays a product of known factors)."""
        todo = [(i, p) for i, r in enumerate(requests) for p in r.positions]
        if not todo:
            return
        raw = self._logits(
            [(rows[i], p) for i, p in todo],
            distinct_rows=rows,
            prompts=[requests[i].prompt for i, _ in todo],
        )
        where = {q: n for n, q in enumerate(todo)}
        steps = max(len(r.positions) for r in requests)
        for step in range(steps):
            active = [i for i, r in enumerate(requests) if len(r.positions) > step]
            queries = [(rows[i], requests[i].positions[step]) for i in active]
            bans = self._bans([requests[i] for i in active], queries)
            index = torch.tensor([where[(i, p)] for i, (_, p) in zip(active, queries, strict=True)])
            row_gens = None if gens is None else [gens[i] for i in active]
            picked, lp = self._sample(self.policy.logprobs(raw[index], bans), row_gens)
            for i, (_, p), tok, v in zip(
                active, queries, picked.tolist(), lp.tolist(), strict=True
            ):
                rows[i][p] = int(tok)
                logq[i] += float(v)

    def _bans(
        self, owners: Sequence[FillRequest], queries: Sequence[tuple[list[int], int]]
    ) -> list[set[int]] | None:
        """The n-gram guard's bans at each (row, position), the row's masks unknown; None
        when the guard is off."""
        if not self.policy.guards:
            return None
        out = []
        for req, (row, p) in zip(owners, queries, strict=True):
            lo, region = req.guard_region(row, self.mask_id)
            inside = 0 <= p - lo < len(region)
            out.append(self.policy.bans_for(region, p - lo) if inside else set())
        return out

    def _logprobs(
        self,
        queries: Sequence[tuple[list[int], int]],
        distinct_rows: Sequence[list[int]] | None = None,
        bans: Sequence[set[int]] | None = None,
        prompts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Log-probabilities [len(queries), vocab] of the proposal at each (row, position),
        with ``bans[i]`` forbidden at query i (the n-gram guard)."""
        return self.policy.logprobs(self._logits(queries, distinct_rows, prompts), bans)

    def _logits(
        self,
        queries: Sequence[tuple[list[int], int]],
        distinct_rows: Sequence[list[int]] | None = None,
        prompts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Raw logits [len(queries), vocab] at each (row, position).

        ``distinct_rows``: when many queries share a row (parallel order), the rows to run
        once each; queries then refer to them by identity. ``prompts``: each query's
        `FillRequest.prompt` (for prefix attention).
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
        prompt_of = {
            k: (prompts[qs[0]] if prompts is not None else 0) for k, qs in by_input.items()
        }
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
                [prompt_of[k] for k in chunk],
            )
            for n, q in enumerate(qs):
                found[q] = logits[n]
        return torch.stack(found)

    def _forward(
        self,
        inputs: Sequence[list[int]],
        rows: Sequence[int],
        positions: Sequence[int],
        prompts: Sequence[int] = (),
    ) -> torch.Tensor:
        """Raw logits [len(rows), vocab] at ``inputs[rows[i]][positions[i]]``, one padded pass
        (with prefix attention: one per distinct prompt, after its cached states)."""
        if self._prompted and prompts and all(prompts):
            return self._forward_after_prompts(inputs, rows, positions, prompts)
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
            logits = logits_at(self.lm, self._split, ids, mask, r, p)
        return logits.float()

    def _forward_after_prompts(
        self,
        inputs: Sequence[list[int]],
        rows: Sequence[int],
        positions: Sequence[int],
        prompts: Sequence[int],
    ) -> torch.Tensor:
        """`_forward` under prefix attention: the inputs of each distinct prompt run after
        that prompt's cached keys and values (`DecoderMLM.continuation_hidden`)."""
        model: Any = self.lm.model
        device = self.lm.device
        groups: dict[tuple[int, ...], list[int]] = {}
        for n, row in enumerate(inputs):
            groups.setdefault(tuple(row[: prompts[n]]), []).append(n)
        hidden: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        with torch.inference_mode():
            for prompt, members in groups.items():
                states = model.prompt_states(prompt)
                p = len(prompt)
                width = max(len(inputs[n]) - p for n in members)
                ids = torch.full((len(members), width), self._pad_id, dtype=torch.long)
                keep = torch.zeros((len(members), width), dtype=torch.bool)
                for m, n in enumerate(members):
                    cont = inputs[n][p:]
                    ids[m, : len(cont)] = torch.tensor(cont, dtype=torch.long)
                    keep[m, : len(cont)] = True
                states_h = model.continuation_hidden(states, ids.to(device), keep.to(device))
                local = {n: m for m, n in enumerate(members)}
                for q, (r, pos) in enumerate(zip(rows, positions, strict=True)):
                    if r in local:
                        hidden[q] = states_h[local[r], pos - p]
            logits = model.lm_head(torch.stack(hidden))
        return logits.float()

    def _sample(
        self, logp: torch.Tensor, row_gens: Sequence[torch.Generator | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row (the policy's draw; row i from ``row_gens[i]`` when given) and
        its log-probability."""
        if row_gens is None:
            picked = self.policy.sample(logp, self.generator)
        else:
            picked = self.policy.sample_rows(logp, [g or self.generator for g in row_gens])
        return picked.cpu(), SamplingPolicy.logprob_of(logp, picked.to(logp.device)).cpu()

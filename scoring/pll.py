"""Exact pseudo-log-likelihood (PLL) of texts under a masked LM, batched and cached.

PLL (Salazar et al. 2020) scores a text by masking each token in turn and summing the
log-probability the model gives the true token at the mask. The ``word_l2r`` variant (Kauf &
Ivanova 2023) also masks the later pieces of the same word, so a multi-piece word cannot be
guessed from its own remaining pieces. Only continuation tokens are masked and scored; the
prefix (a prompt) is visible context.

Why this is fast while staying exact: every masked copy of every text is one row, and rows
from all texts are packed into forward passes of about ``tokens_per_batch`` tokens (sorted
by length so little padding is needed; padding uses the model's pad id and the attention
mask, so scores equal unpadded ones). The transformer body runs on the rows, and the MLM
head (transform + vocabulary projection, the costliest single matmul) is applied only to the
one scored position per row instead of all ``L`` positions. Scores match a one-forward-per-
position reference to float rounding (~1e-6); see ``naive_pll`` and ``bench/pll_speed.py``.

``entropy=True`` also keeps the entropy of the model's distribution at each masked position
(`TokenScores.entropies`): the log-softmax over the vocabulary is there already, so it costs
one more elementwise pass over it and no forward pass (`scoring.typical` reads it).

``dtype="bf16"`` runs under CPU/GPU bfloat16 autocast: roughly 2x faster on CPUs with bf16
matmul units, but approximate (PLL off by ~0.05-0.5 nats per text); fp32 is the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from scoring.base import CachedScorer, Key, ScorerStats
from scoring.errors import UserError
from scoring.heads import logits_at, mlm_logits, pad_id, split_model
from scoring.models import LoadedModel
from scoring.names import PLL_VARIANTS, PLLVariant, pll_scorer_name
from scoring.results import TokenScores
from scoring.template import special_template, text_ids
from scoring.words import word_starts

DType = Literal["fp32", "bf16"]
DTYPES: tuple[DType, ...] = ("fp32", "bf16")


@dataclass
class PLLStats(ScorerStats):
    """Counters since the scorer was made (or since ``reset``)."""

    forward_rows: int = 0  # masked copies run through the model
    forward_passes: int = 0  # model forward calls
    forward_tokens: int = 0  # rows x padded length, summed over passes


@dataclass
class _Job:
    """One continuation to score: its model input and which positions to mask."""

    key: Key
    input_ids: torch.Tensor  # [L] specials + prefix + continuation + specials
    offset: int  # index of the first continuation token in input_ids
    cont: torch.Tensor  # [n] continuation ids
    masks: torch.Tensor  # [n, n] bool: row j masks continuation tokens k where masks[j, k]
    logprobs: torch.Tensor | None = None  # [n] filled in by the forward passes
    entropies: torch.Tensor | None = None  # [n] when the scorer keeps entropies

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n(self) -> int:
        return int(self.cont.numel())

    def after_prompt(self) -> _Job:
        """The same job fed from its continuation on (the prompt is cached); results land
        in this job's tensors."""
        return _Job(
            key=self.key,
            input_ids=self.input_ids[self.offset :],
            offset=0,
            cont=self.cont,
            masks=self.masks,
            logprobs=self.logprobs,
            entropies=self.entropies,
        )


class PLLScorer(CachedScorer):
    """Batched, cached, exact PLL of continuations (after an optional prefix) under a masked LM.

    ``variant``: ``"original"`` (Salazar et al. 2020) or ``"word_l2r"`` (Kauf & Ivanova 2023).
    ``dtype``: ``"fp32"`` (exact) or ``"bf16"`` (autocast; faster, approximate).
    ``entropy``: also keep each masked position's entropy (`TokenScores.entropies`).
    ``tokens_per_batch``: tokens (rows x padded length) per forward pass; 2-4k is fastest on
    CPU, and it bounds memory for long texts. ``cache_size``: texts remembered (LRU).
    """

    def __init__(
        self,
        lm: LoadedModel,
        variant: PLLVariant = "original",
        dtype: DType = "fp32",
        tokens_per_batch: int = 4096,
        cache_size: int = 200_000,
        entropy: bool = False,
    ) -> None:
        if variant not in PLL_VARIANTS:
            raise UserError(
                f"unknown PLL variant {variant!r}; choose from {', '.join(PLL_VARIANTS)}"
            )
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        if tokens_per_batch < 1:
            raise UserError(f"tokens_per_batch must be at least 1, got {tokens_per_batch}")
        mask_id = getattr(lm.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise UserError(f"{lm.name!r} has no mask token, so PLL cannot be computed")
        super().__init__(lm, cache_size)
        self.variant: PLLVariant = variant
        self.dtype: DType = dtype
        self.name = pll_scorer_name(variant, lm.name, bf16=dtype == "bf16")
        self.tokens_per_batch = tokens_per_batch
        self.entropy = bool(entropy)
        self.stats: PLLStats = PLLStats()
        self._mask_id = int(mask_id)
        self._pad_id = pad_id(lm)
        self._head_ids, self._tail_ids = special_template(lm.tokenizer)
        probe = [*self._head_ids, *self.encode("the cat sat on the mat")[:6], self._mask_id]
        self._split = split_model(lm, [*probe, *self._tail_ids])
        # A decoder masked LM with prefix attention (scoring.decoder_mlm): the prompt's keys
        # and values are computed once and shared by every masked copy.
        self._prompted = getattr(lm.model, "attention", "full") == "prefix" and hasattr(
            lm.model, "prompt_states"
        )
        vocab = int(getattr(lm.model.config, "vocab_size", 0) or 50_000)
        # Full logits hold rows x L x vocab floats: keep that under ~512 MB when we need them.
        self._fallback_tokens = max(1, min(tokens_per_batch, (1 << 27) // vocab))

    @property
    def gathers_head(self) -> bool:
        """True when the vocabulary projection runs only at the masked positions."""
        return self._split is not None

    # -- internals --------------------------------------------------------------------------

    def _check_lengths(self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]) -> None:
        n_special = len(self._head_ids) + len(self._tail_ids)
        limit = self.lm.max_length
        for i, cont in enumerate(conts):
            total = n_special + len(prefix) + len(cont)
            if total > limit:
                raise UserError(
                    f"text {i + 1} is {total} tokens long with prefix and special tokens "
                    f"({len(prefix)} prefix + {len(cont)} text + {n_special} special); "
                    f"{self.lm.name} takes at most {limit}"
                )

    def _compute(
        self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[Sequence[float]]:
        jobs = [self._make_job((prefix, cont)) for cont in conts]
        self._run(jobs)
        out: list[Sequence[float]] = []
        for job in jobs:
            assert job.logprobs is not None
            out.append(job.logprobs.tolist())
        return out

    def _scores(self, prefix: tuple[int, ...], todo: list[Key]) -> list[TokenScores]:
        if not self.entropy:
            return super()._scores(prefix, todo)
        jobs = [self._make_job(key) for key in todo]
        self._run(jobs)
        out = []
        for job in jobs:
            assert job.logprobs is not None and job.entropies is not None
            lps = TokenScores.from_logprobs(job.logprobs.tolist())
            ents = tuple(float(x) for x in job.entropies.tolist())
            out.append(TokenScores(lps.total, lps.token_logprobs, lps.n_tokens, ents))
        return out

    def _make_job(self, key: Key) -> _Job:
        prefix, cont = key
        ids = [*self._head_ids, *prefix, *cont, *self._tail_ids]
        n = len(cont)
        masks = mask_matrix(self.lm.tokenizer, prefix, cont, self.variant)
        return _Job(
            key=key,
            input_ids=torch.tensor(ids, dtype=torch.long),
            offset=len(self._head_ids) + len(prefix),
            cont=torch.tensor(cont, dtype=torch.long),
            masks=masks,
            logprobs=torch.empty(n, dtype=torch.float32),
            entropies=torch.empty(n, dtype=torch.float32) if self.entropy else None,
        )

    def _plan(self, jobs: list[_Job], budget: int) -> list[list[tuple[_Job, int, int]]]:
        """Pack (job, first row, end row) chunks into batches of about ``budget`` tokens."""
        batches: list[list[tuple[_Job, int, int]]] = []
        current: list[tuple[_Job, int, int]] = []
        rows = cap = 0
        for job in sorted(jobs, key=lambda j: -j.length):
            j = 0
            while j < job.n:
                if not current:
                    cap = max(1, budget // job.length)  # the first job is the longest
                    rows = 0
                take = min(job.n - j, cap - rows)
                current.append((job, j, j + take))
                rows += take
                j += take
                if rows >= cap:
                    batches.append(current)
                    current = []
        if current:
            batches.append(current)
        return batches

    def _run(self, jobs: list[_Job]) -> None:
        if not self._prompted:
            self._run_batches(jobs, None)
            return
        by_prompt: dict[tuple[int, ...], list[_Job]] = {}
        for job in jobs:
            by_prompt.setdefault(tuple(job.input_ids[: job.offset].tolist()), []).append(job)
        model: Any = self.lm.model
        for prompt, group in by_prompt.items():
            states = model.prompt_states(prompt)
            self._run_batches([job.after_prompt() for job in group], states)

    def _run_batches(self, jobs: list[_Job], states: Any) -> None:
        """Every masked copy of ``jobs`` through the model in packed batches; with prompt
        ``states`` the jobs start after that cached prompt."""
        budget = self.tokens_per_batch if self._split is not None else self._fallback_tokens
        device = self.lm.device
        for batch in self._plan(jobs, budget):
            n_rows = sum(b - a for _, a, b in batch)
            width = max(job.length for job, _, _ in batch)
            ids = torch.full((n_rows, width), self._pad_id, dtype=torch.long)
            attn = torch.zeros((n_rows, width), dtype=torch.long)
            positions = torch.empty(n_rows, dtype=torch.long)
            targets = torch.empty(n_rows, dtype=torch.long)
            r = 0
            for job, a, b in batch:
                k = b - a
                rows = slice(r, r + k)
                ids[rows, : job.length] = job.input_ids
                attn[rows, : job.length] = 1
                span = slice(job.offset, job.offset + job.n)
                ids[rows, span] = torch.where(job.masks[a:b], self._mask_id, job.cont)
                positions[rows] = torch.arange(a, b) + job.offset
                targets[rows] = job.cont[a:b]
                r += k
            padded = bool((attn == 0).any())
            forward = self._forward_entropy if self.entropy else self._forward
            result = forward(
                ids.to(device),
                attn.to(device) if padded else None,
                positions.to(device),
                targets.to(device),
                states,
            )
            logprobs, ents = result if isinstance(result, tuple) else (result, None)
            logprobs = logprobs.cpu()
            self.stats.forward_passes += 1
            self.stats.forward_rows += n_rows
            self.stats.forward_tokens += n_rows * width
            r = 0
            for job, a, b in batch:
                assert job.logprobs is not None
                job.logprobs[a:b] = logprobs[r : r + b - a]
                if ents is not None and job.entropies is not None:
                    job.entropies[a:b] = ents[r : r + b - a].cpu()
                r += b - a

    def _logits(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        rows: torch.Tensor,
        positions: torch.Tensor,
        states: Any,
    ) -> torch.Tensor:
        if states is None:
            return logits_at(self.lm, self._split, ids, attn, rows, positions)
        model: Any = self.lm.model
        hidden = model.continuation_hidden(states, ids, attn)
        return model.lm_head(hidden[rows, positions])

    def _forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        positions: torch.Tensor,
        targets: torch.Tensor,
        states: Any = None,
    ) -> torch.Tensor:
        """Log-probability of ``targets[i]`` at ``positions[i]`` of row i."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        with torch.inference_mode(), self._autocast():
            logits = self._logits(ids, attn, rows, positions, states)
            logp = torch.log_softmax(logits.float(), dim=-1)
            return logp[rows, targets]

    def _forward_entropy(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        positions: torch.Tensor,
        targets: torch.Tensor,
        states: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_forward` plus the entropy of each row's distribution at its position."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        with torch.inference_mode(), self._autocast():
            logits = self._logits(ids, attn, rows, positions, states)
            logp = torch.log_softmax(logits.float(), dim=-1)
            entropy = -(logp.exp() * logp).nan_to_num(0.0, 0.0, 0.0).sum(dim=-1)  # 0 log 0 = 0
            return logp[rows, targets], entropy

    def _autocast(self) -> Any:
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.lm.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.lm.device.type, enabled=False)


def mask_matrix(
    tokenizer: Any, prefix: Sequence[int], cont: Sequence[int], variant: PLLVariant
) -> torch.Tensor:
    """[n, n] bool: scoring continuation token j masks tokens k where result[j, k].

    ``original``: only j. ``word_l2r``: j and the later pieces of j's word, within the
    continuation (word boundaries are read on prefix + continuation, so a continuation
    that begins mid-word is handled).
    """
    n = len(cont)
    if variant == "original" or n == 0:
        return torch.eye(n, dtype=torch.bool)
    starts = word_starts(tokenizer, [*prefix, *cont])[len(prefix) :]
    word_end = [n] * n
    end = n
    for j in range(n - 1, -1, -1):
        word_end[j] = end
        if starts[j]:
            end = j
    cols = torch.arange(n)
    rows = torch.arange(n).unsqueeze(1)
    return (cols >= rows) & (cols < torch.tensor(word_end).unsqueeze(1))


def naive_pll(
    lm: LoadedModel,
    texts_or_ids: Sequence[str] | Sequence[Sequence[int]],
    prefix: str | Sequence[int] = "",
    variant: PLLVariant = "original",
) -> list[TokenScores]:
    """Reference PLL: one unpadded forward with full logits per masked position.

    Slow and obviously right; for tests and ``bench/pll_speed.py``.
    """
    tok = lm.tokenizer
    if isinstance(prefix, str):
        prefix_ids = text_ids(tok, prefix) if prefix else []
    else:
        prefix_ids = [int(i) for i in prefix]
    head, tail = special_template(tok)
    mask_id = int(tok.mask_token_id)
    results = []
    for item in texts_or_ids:
        cont = text_ids(tok, item) if isinstance(item, str) else [int(i) for i in item]
        masks = mask_matrix(tok, prefix_ids, cont, variant)
        base = [*head, *prefix_ids, *cont, *tail]
        offset = len(head) + len(prefix_ids)
        lps: list[float] = []
        for j in range(len(cont)):
            ids = list(base)
            for k in range(len(cont)):
                if masks[j, k]:
                    ids[offset + k] = mask_id
            with torch.inference_mode():
                logits = mlm_logits(lm.model(input_ids=torch.tensor([ids], device=lm.device)))
            logp = torch.log_softmax(logits[0, offset + j].float(), dim=-1)
            lps.append(float(logp[cont[j]]))
        results.append(TokenScores.from_logprobs(lps))
    return results

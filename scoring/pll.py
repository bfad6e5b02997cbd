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

``dtype="bf16"`` runs under CPU/GPU bfloat16 autocast: roughly 2x faster on CPUs with bf16
matmul units, but approximate (PLL off by ~0.05-0.5 nats per text); fp32 is the default.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.results import TokenScores
from scoring.words import word_starts

Variant = Literal["original", "word_l2r"]
DType = Literal["fp32", "bf16"]
VARIANTS: tuple[Variant, ...] = ("original", "word_l2r")
DTYPES: tuple[DType, ...] = ("fp32", "bf16")

Head = Callable[[torch.Tensor], torch.Tensor]
Key = tuple[tuple[int, ...], tuple[int, ...]]  # (prefix ids, continuation ids)


PLLResult = TokenScores  # PLL of one continuation: total and per-token log-probabilities


@dataclass
class PLLStats:
    """Counters since the scorer was made (or since ``reset``)."""

    texts: int = 0  # continuations requested
    cache_hits: int = 0  # answered from the cache (or a duplicate in the same call)
    forward_rows: int = 0  # masked copies run through the model
    forward_passes: int = 0  # model forward calls
    forward_tokens: int = 0  # rows x padded length, summed over passes

    def reset(self) -> None:
        self.texts = self.cache_hits = self.forward_rows = 0
        self.forward_passes = self.forward_tokens = 0


def special_template(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special ids the tokenizer puts before and after a single sequence.

    transformers 5 fast tokenizers lack ``build_inputs_with_special_tokens``, so the template
    is read off by encoding a probe text with and without special tokens.
    """
    probe = "hello world"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            return tuple(full[:start]), tuple(full[start + n :])
    cls = getattr(tokenizer, "cls_token_id", None)
    sep = getattr(tokenizer, "sep_token_id", None)
    return ((cls,) if cls is not None else ()), ((sep,) if sep is not None else ())


def _pad_id(lm: LoadedModel) -> int:
    # RoBERTa derives position ids from the pad id given in its config: pad with exactly that.
    cfg_pad = getattr(lm.model.config, "pad_token_id", None)
    if cfg_pad is not None:
        return int(cfg_pad)
    tok_pad = getattr(lm.tokenizer, "pad_token_id", None)
    return int(tok_pad) if tok_pad is not None else 0


def mlm_logits(output: Any) -> torch.Tensor:
    """The vocabulary logits of a masked LM's output (``*ForPreTraining`` names them apart)."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.prediction_logits


def _head_candidates(model: torch.nn.Module) -> list[Head]:
    """Known MLM heads that act on each position independently (so they can be gathered)."""
    out: list[Head] = []
    cls = getattr(model, "cls", None)
    if cls is not None and hasattr(cls, "predictions"):  # BERT, MegatronBERT, ...
        out.append(cls.predictions)
    if cls is not None and not hasattr(cls, "predictions"):  # DeBERTa-v2 legacy head
        out.append(cls)
    lm_head = getattr(model, "lm_head", None)
    if isinstance(lm_head, torch.nn.Module):  # RoBERTa, XLM-R, CamemBERT, MPNet, ...
        out.append(lm_head)
    predictions = getattr(model, "predictions", None)
    if isinstance(predictions, torch.nn.Module):  # ALBERT
        out.append(predictions)
    if all(hasattr(model, a) for a in ("vocab_transform", "vocab_layer_norm", "vocab_projector")):
        m = model  # DistilBERT

        def distil(h: torch.Tensor) -> torch.Tensor:
            act = m.activation(m.vocab_transform(h))
            return m.vocab_projector(m.vocab_layer_norm(act))

        out.append(distil)
    if hasattr(model, "generator_predictions") and hasattr(model, "generator_lm_head"):
        m2 = model  # ELECTRA generator

        def electra(h: torch.Tensor) -> torch.Tensor:
            return m2.generator_lm_head(m2.generator_predictions(h))

        out.append(electra)
    head, decoder = getattr(model, "head", None), getattr(model, "decoder", None)
    if isinstance(head, torch.nn.Module) and isinstance(decoder, torch.nn.Module):
        hd, dec = head, decoder  # ModernBERT

        def modern(h: torch.Tensor) -> torch.Tensor:
            return dec(hd(h))

        out.append(modern)
    return out


def _split_model(lm: LoadedModel, probe: list[int]) -> tuple[torch.nn.Module, Head] | None:
    """Find (body, head) with head(body(x)) == model(x).logits, checked on a probe input.

    Returns None for architectures where no candidate reproduces the model's own logits; the
    scorer then falls back to full logits (exact, only slower).
    """
    model = lm.model
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        return None
    ids = torch.tensor([probe], device=lm.device)
    with torch.inference_mode():
        try:
            want = mlm_logits(model(input_ids=ids))[0]
            hidden = body(input_ids=ids)[0][0]
        except (TypeError, ValueError, RuntimeError):
            return None
        for head in _head_candidates(model):
            try:
                got = head(hidden)
            except (TypeError, ValueError, RuntimeError):
                continue
            if got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                return body, head
    return None


@dataclass
class _Job:
    """One continuation to score: its model input and which positions to mask."""

    key: Key
    input_ids: torch.Tensor  # [L] specials + prefix + continuation + specials
    offset: int  # index of the first continuation token in input_ids
    cont: torch.Tensor  # [n] continuation ids
    masks: torch.Tensor  # [n, n] bool: row j masks continuation tokens k where masks[j, k]
    logprobs: torch.Tensor | None = None  # [n] filled in by the forward passes

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n(self) -> int:
        return int(self.cont.numel())


class PLLScorer:
    """Batched, cached, exact PLL of continuations (after an optional prefix) under a masked LM.

    ``variant``: ``"original"`` (Salazar et al. 2020) or ``"word_l2r"`` (Kauf & Ivanova 2023).
    ``dtype``: ``"fp32"`` (exact) or ``"bf16"`` (autocast; faster, approximate).
    ``tokens_per_batch``: tokens (rows x padded length) per forward pass; 2-4k is fastest on
    CPU, and it bounds memory for long texts.
    """

    def __init__(
        self,
        lm: LoadedModel,
        variant: Variant = "original",
        dtype: DType = "fp32",
        tokens_per_batch: int = 4096,
        cache_size: int = 200_000,
    ) -> None:
        if variant not in VARIANTS:
            raise UserError(f"unknown PLL variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        if tokens_per_batch < 1:
            raise UserError(f"tokens_per_batch must be at least 1, got {tokens_per_batch}")
        mask_id = getattr(lm.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise UserError(f"{lm.name!r} has no mask token, so PLL cannot be computed")
        self.lm = lm
        self.variant: Variant = variant
        self.dtype: DType = dtype
        self.tokens_per_batch = tokens_per_batch
        self.cache_size = cache_size
        self.stats = PLLStats()
        self._mask_id = int(mask_id)
        self._pad_id = _pad_id(lm)
        self._head_ids, self._tail_ids = special_template(lm.tokenizer)
        self._cache: OrderedDict[Key, PLLResult] = OrderedDict()
        probe = [*self._head_ids, *self.encode("the cat sat on the mat")[:6], self._mask_id]
        self._split = _split_model(lm, [*probe, *self._tail_ids])
        vocab = int(getattr(lm.model.config, "vocab_size", 0) or 50_000)
        # Full logits hold rows x L x vocab floats: keep that under ~512 MB when we need them.
        self._fallback_tokens = max(1, min(tokens_per_batch, (1 << 27) // vocab))

    @property
    def gathers_head(self) -> bool:
        """True when the vocabulary projection runs only at the masked positions."""
        return self._split is not None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens, as ``score`` tokenises it."""
        return list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- public API -------------------------------------------------------------------------

    def score(self, texts: Sequence[str], prefix: str = "") -> list[PLLResult]:
        """PLL of each text after ``prefix``; prefix and texts are tokenised separately.

        Each text is tokenised on its own, as given: with byte-level BPE (RoBERTa) a text that
        continues a prefix with a new word should start with a space.
        """
        if isinstance(texts, str):
            texts = [texts]
        prefix_ids = self.encode(prefix) if prefix else []
        if not texts:
            return []
        conts = self.lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return self.score_ids(conts, prefix_ids)

    def score_ids(
        self, continuations: Sequence[Sequence[int]], prefix_ids: Sequence[int] = ()
    ) -> list[PLLResult]:
        """PLL of each continuation (token ids, no specials) after ``prefix_ids``."""
        prefix = tuple(int(i) for i in prefix_ids)
        keys = [(prefix, tuple(int(i) for i in c)) for c in continuations]
        n_special = len(self._head_ids) + len(self._tail_ids)
        limit = self.lm.max_length
        for i, (_, cont) in enumerate(keys):
            total = n_special + len(prefix) + len(cont)
            if total > limit:
                raise UserError(
                    f"text {i + 1} is {total} tokens long with prefix and special tokens "
                    f"({len(prefix)} prefix + {len(cont)} text + {n_special} special); "
                    f"{self.lm.name} takes at most {limit}"
                )
        self.stats.texts += len(keys)
        found: dict[Key, PLLResult] = {}
        jobs: list[_Job] = []
        for key in keys:
            if key in found:
                self.stats.cache_hits += 1
                continue
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                found[key] = hit
                continue
            if not key[1]:
                found[key] = PLLResult(0.0, (), 0)
                continue
            job = self._make_job(key)
            jobs.append(job)
            found[key] = PLLResult(0.0, (), 0)  # placeholder, also dedupes repeats
        if jobs:
            self._run(jobs)
            for job in jobs:
                assert job.logprobs is not None
                lps = tuple(float(x) for x in job.logprobs.tolist())
                result = PLLResult(
                    total=float(math.fsum(lps)), token_logprobs=lps, n_tokens=len(lps)
                )
                found[job.key] = result
                self._remember(job.key, result)
        return [found[k] for k in keys]

    # -- internals --------------------------------------------------------------------------

    def _remember(self, key: Key, result: PLLResult) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

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
            logprobs = self._forward(
                ids.to(device),
                attn.to(device) if padded else None,
                positions.to(device),
                targets.to(device),
            ).cpu()
            self.stats.forward_passes += 1
            self.stats.forward_rows += n_rows
            self.stats.forward_tokens += n_rows * width
            r = 0
            for job, a, b in batch:
                assert job.logprobs is not None
                job.logprobs[a:b] = logprobs[r : r + b - a]
                r += b - a

    def _forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        positions: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probability of ``targets[i]`` at ``positions[i]`` of row i."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        with torch.inference_mode(), self._autocast():
            if self._split is not None:
                body, head = self._split
                hidden = body(input_ids=ids, attention_mask=attn)[0]
                logits = head(hidden[rows, positions])
            else:
                out = self.lm.model(input_ids=ids, attention_mask=attn)
                logits = mlm_logits(out)[rows, positions]
            logp = torch.log_softmax(logits.float(), dim=-1)
            return logp[rows, targets]

    def _autocast(self) -> Any:
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.lm.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.lm.device.type, enabled=False)


def mask_matrix(
    tokenizer: Any, prefix: Sequence[int], cont: Sequence[int], variant: Variant
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
    k = torch.arange(n)
    j = torch.arange(n).unsqueeze(1)
    return (k >= j) & (k < torch.tensor(word_end).unsqueeze(1))


def naive_pll(
    lm: LoadedModel,
    texts_or_ids: Sequence[str] | Sequence[Sequence[int]],
    prefix: str | Sequence[int] = "",
    variant: Variant = "original",
) -> list[PLLResult]:
    """Reference PLL: one unpadded forward with full logits per masked position.

    Slow and obviously right; for tests and ``bench/pll_speed.py``.
    """
    tok = lm.tokenizer
    if isinstance(prefix, str):
        prefix_ids = list(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
    else:
        prefix_ids = [int(i) for i in prefix]
    head, tail = special_template(tok)
    mask_id = int(tok.mask_token_id)
    results = []
    for item in texts_or_ids:
        if isinstance(item, str):
            cont = list(tok(item, add_special_tokens=False)["input_ids"])
        else:
            cont = [int(i) for i in item]
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
        results.append(PLLResult(float(math.fsum(lps)), tuple(lps), len(lps)))
    return results

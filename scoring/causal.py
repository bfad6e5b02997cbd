"""Log-likelihood of continuations under a causal LM: log p(continuation | prefix).

Used as an independent judge of the texts the masked LM evolves, and for baselines. The
prefix and each continuation are tokenised separately (no special tokens), so every
continuation is scored on the same prefix ids, exactly like ``PLLScorer``. With an empty
prefix, the first continuation token is conditioned on a start token: ``<|endoftext|>`` when
the vocabulary has it (the document separator that GPT-2-style byte-level models, SmolLM2
included, were pretrained with; SmolLM2's declared BOS ``<|im_start|>`` is a chat-turn token
and scores plain English ~13 nats per sentence worse), else BOS, else EOS.

Every text of a run follows the same prefix (the prompt), so the prefix runs through the model
once: its key/value cache is kept (`PrefixCache`, a few prefixes per model, shared by every
scorer and proposer of that model object) and each batch of continuations runs on a view of
that cache, with explicit positions. Scores equal those of running prefix + continuation in
full within ~1e-5 (checked in the tests); ``prefix_cache=False`` keeps that full path (the
bench, ``bench/causal_speed.py``, compares the two).

Continuations are sorted by length and right-padded into batches of at most
``tokens_per_batch`` tokens with an attention mask (on the cached path, split where similar
lengths save more padding than another pass costs, `length_groups`); right padding leaves positions and the
causal attention of real tokens untouched, so batched scores equal unbatched ones (checked
in the tests to 1e-4). On the full path logits are computed only from the prefix's last
position on (``logits_to_keep``) when the model supports it.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from scoring.base import CachedScorer, ScorerStats
from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.names import causal_scorer_name

START_TOKEN = "<|endoftext|>"
MIN_PREFIX_ROWS = 16  # token positions a prefix's own forward pass runs at least (`PrefixCache`)


@dataclass
class CausalStats(ScorerStats):
    """Counters since the scorer was made (or since ``reset``)."""

    forward_rows: int = 0  # sequences run through the model
    forward_passes: int = 0  # model forward calls
    forward_tokens: int = 0  # rows x positions run (a shared prefix counts in its PrefixCache)


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


PASS_COST = 32  # token positions one more forward pass is worth (its fixed cost), roughly


def length_groups(widths: Sequence[int], budget: int, pass_cost: int = PASS_COST) -> list[range]:
    """Split rows sorted by width (widest first) into consecutive batches that minimise the
    padded token positions run (each batch pads to its first row's width) plus ``pass_cost``
    per batch, each batch within ``budget`` positions (a single row may exceed it).

    Padding is the main waste of one batch: grouping similar lengths cuts it, where the
    saving is worth another forward pass. Exact dynamic programming over the split points.
    """
    n = len(widths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(n):  # a batch starting at row i (its widest)
        w = max(1, int(widths[i]))
        top = min(n, i + max(1, budget // w))
        for j in range(i + 1, top + 1):
            cost = best[i] + (j - i) * w + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[range] = []
    j = n
    while j > 0:
        groups.append(range(cut[j], j))
        j = cut[j]
    return groups[::-1]


# -- the shared prefix key/value cache ------------------------------------------------------


@dataclass(frozen=True)
class PrefixState:
    """A context run through the model once: its key/value cache and last logits."""

    ids: tuple[int, ...]
    cache: Any  # the model's past_key_values for ``ids``, batch 1; never extended itself
    last_logits: torch.Tensor  # float32 [vocab]: the prediction for the token after ``ids``

    def cache_for(self, rows: int) -> Any:
        """A fresh cache of ``rows`` copies of the prefix, for one forward pass to extend."""
        return expand_rows(self.cache, rows)


def expand_rows(cache: Any, rows: int) -> Any:
    """A fresh cache of ``rows`` copies of a one-row ``cache`` (which stays as it is).

    Models extend the cache they are given in place, so each batch gets its own. Dynamic
    caches get expanded views (no copy: the model concatenates new keys onto them); any
    other cache class is deep-copied and repeated.
    """
    layers = getattr(cache, "layers", None)
    if layers and all(hasattr(la, "keys") and hasattr(la, "values") for la in layers):
        fresh = copy.copy(cache)
        fresh.layers = []
        for layer in layers:
            new = copy.copy(layer)
            new.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            new.values = layer.values.expand(rows, *layer.values.shape[1:])
            fresh.layers.append(new)
        return fresh
    fresh = copy.deepcopy(cache)
    if rows > 1:
        fresh.batch_repeat_interleave(rows)
    return fresh


def select_rows(cache: Any, index: torch.Tensor) -> Any:
    """A new cache holding the rows ``index`` of ``cache`` (which stays as it is)."""
    layers = getattr(cache, "layers", None)
    if layers and all(hasattr(la, "keys") and hasattr(la, "values") for la in layers):
        fresh = copy.copy(cache)
        fresh.layers = []
        for layer in layers:
            new = copy.copy(layer)
            new.keys, new.values = layer.keys[index], layer.values[index]
            fresh.layers.append(new)
        return fresh
    fresh = copy.deepcopy(cache)
    fresh.batch_select_indices(index)
    return fresh


@dataclass
class PrefixStats:
    """Counters of one model's `PrefixCache`."""

    computed: int = 0  # prefixes run through the model
    reused: int = 0  # lookups answered without running the model
    tokens: int = 0  # prefix tokens run through the model


class PrefixCache:
    """The key/value caches of the last ``size`` prefixes run through one model.

    Shared through `prefix_cache_of` by every `CausalScorer` and
    `evolve.ga.proposers.causal.CausalProposer` of the same model object, so a run's prompt
    goes through the model once whoever asks first. Like the score cache it assumes fixed
    weights; an in-place change of any parameter (an optimiser step) bumps torch's version
    counters, and the next lookup then forgets every prefix.
    """

    def __init__(self, model: torch.nn.Module, size: int = 8) -> None:
        self.size = size
        self.stats = PrefixStats()
        self._model = weakref.ref(model)
        self._states: OrderedDict[tuple[int, ...], PrefixState] = OrderedDict()
        self._version = -1

    def clear(self) -> None:
        self._states.clear()

    def get(self, ids: Sequence[int]) -> PrefixState:
        """The state of ``ids`` (at least one token), computed now if not kept."""
        key = tuple(int(i) for i in ids)
        if not key:
            raise ValueError("a prefix needs at least one token")
        version = weights_version(self._model())
        if version != self._version:
            self._states.clear()
            self._version = version
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
            self.stats.reused += 1
            return state
        model = self._model()
        assert model is not None
        device = next(model.parameters()).device
        # A short prefix runs as several identical rows: the matrix products of a few rows
        # take other CPU kernels, whose rounding differs from a batch's by up to ~1e-4.
        copies = -(-MIN_PREFIX_ROWS // len(key))
        ids_t = torch.tensor([key] * copies, dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {"use_cache": True}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            out = model(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), **kwargs)
        cache = out.past_key_values
        if copies > 1:
            cache.batch_select_indices(torch.tensor([0], device=device))
        state = PrefixState(key, cache, out.logits[0, -1].float())
        self.stats.computed += 1
        self.stats.tokens += len(key)
        self._states[key] = state
        if len(self._states) > self.size:
            self._states.popitem(last=False)
        return state


# -- key/value caches of whole texts, for edits of them -------------------------------------

CONTEXT_BYTES = 256 * 2**20  # key/value bytes a `ContextCache` keeps: a text's continuation
# (not its prompt) took 0.55 MB for SmolLM2 in fp32 in the README's causal run (53 texts, 29
# MB, after 3 generations of 16), so ~470 texts, many generations of a default run


@dataclass(frozen=True)
class ContextEntry:
    """The key/value cache of ``ids[start:]`` (each layer's keys and values [heads, n, dim]),
    computed in a pass that ran ``ids[:start]`` before them (the prefix cache)."""

    ids: tuple[int, ...]
    start: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    nbytes: int


class ContextCache:
    """Key/value caches of texts a model has run, for the next edit of one of them.

    A causal scorer of a run stores each text it scores (`CausalScorer` with
    ``share_contexts``); the causal proposer, about to refill a span at token k of one of
    them, takes the keys and values of tokens before k from here instead of running them
    again (`evolve.ga.proposers.causal`). Least recently used texts go first beyond
    ``max_bytes``; an in-place change of the weights forgets all (as `PrefixCache`).
    """

    def __init__(self, model: torch.nn.Module, max_bytes: int = CONTEXT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0  # lookups that found tokens to reuse
        self.reused = 0  # tokens whose keys and values were reused
        self._model = weakref.ref(model)
        self._entries: OrderedDict[tuple[int, ...], ContextEntry] = OrderedDict()
        self._version = -1

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _check_version(self) -> None:
        version = weights_version(self._model())
        if version != self._version:
            self.clear()
            self._version = version

    def put(self, ids: Sequence[int], start: int, layers: Sequence[tuple[Any, Any]]) -> None:
        """Keep the keys and values (per layer, [heads, n, dim], copied) of ``ids[start:]``."""
        key = tuple(int(i) for i in ids)
        self._check_version()
        if key in self._entries or len(key) <= start:
            return
        kept = tuple((k.detach().clone(), v.detach().clone()) for k, v in layers)
        size = sum(k.nbytes + v.nbytes for k, v in kept)
        if size > self.max_bytes:
            return
        self._entries[key] = ContextEntry(key, start, kept, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def lookup(
        self, ids: Sequence[int], lo: int, hi: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer, the keys and values of ``ids[lo:lo + m]`` from a kept text that begins
        with ``ids[:lo + m]``, for the largest such ``m <= hi - lo`` (None: no text gives any).
        """
        self._check_version()
        best, best_m = None, 0
        for entry in reversed(self._entries.values()):
            if entry.start > lo:
                continue
            top = min(hi, len(entry.ids))
            n = 0
            while n < top and entry.ids[n] == ids[n]:
                n += 1
            if n - lo > best_m:
                best, best_m = entry, n - lo
        if best is None:
            return None
        self._entries.move_to_end(best.ids)
        self.hits += 1
        self.reused += best_m
        a = lo - best.start
        return [(k[:, a : a + best_m], v[:, a : a + best_m]) for k, v in best.layers]


_PER_MODEL: weakref.WeakKeyDictionary[torch.nn.Module, dict[type, Any]] = (
    weakref.WeakKeyDictionary()
)
_Cache = TypeVar("_Cache", "PrefixCache", "ContextCache")


def _of_model(lm: LoadedModel, kind: type[_Cache]) -> _Cache:
    """The one cache of class ``kind`` of ``lm``'s model object (made on first use)."""
    per = _PER_MODEL.setdefault(lm.model, {})
    found = per.get(kind)
    if found is None:
        found = per[kind] = kind(lm.model)
    return found


def prefix_cache_of(lm: LoadedModel) -> PrefixCache:
    """The one `PrefixCache` of ``lm``'s model object (made on first use)."""
    return _of_model(lm, PrefixCache)


def context_cache_of(lm: LoadedModel) -> ContextCache:
    """The one `ContextCache` of ``lm``'s model object (made on first use)."""
    return _of_model(lm, ContextCache)


def weights_version(model: torch.nn.Module | None) -> int:
    """The sum of torch's version counters of ``model``'s weights (-1 once it is gone): it
    changes with any in-place edit of a weight, an optimiser step included."""
    return sum(p._version for p in model.parameters()) if model is not None else -1


def cache_layers(cache: Any) -> list[Any] | None:
    """The layers of a key/value cache whose keys and values are plain [batch, heads, n, dim]
    tensors (transformers' dynamic cache), or None for any other cache."""
    layers = getattr(cache, "layers", None)
    if layers and all(type(la).__name__ == "DynamicLayer" for la in layers):
        return list(layers)
    return None


# -- the scorer -----------------------------------------------------------------------------


class CausalScorer(CachedScorer):
    """Batched, cached log p(continuation | prefix) under a causal LM.

    ``prefix_cache``: run the prefix once and the continuations on its key/value cache (the
    module docstring); False runs prefix + continuation in full for every text (the path
    before the cache, kept for the bench and as the reference in the tests).
    ``share_contexts``: keep the key/value cache of every text scored in the model's
    `ContextCache`, for a causal proposer of the same model to edit it from (a run whose
    proposer is causal turns it on).
    """

    def __init__(
        self,
        lm: LoadedModel,
        tokens_per_batch: int = 2048,
        cache_size: int = 200_000,
        prefix_cache: bool = True,
        share_contexts: bool = False,
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
        self.prefix_cache = bool(prefix_cache)
        self.share_contexts = bool(share_contexts) and self.prefix_cache

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
        if self.prefix_cache:
            return list(self._run_on_prefix(self._context(prefix), conts))
        return list(self._run(self._context(prefix), conts))

    def _run_on_prefix(
        self, context: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[tuple[float, ...]]:
        """Per-token log-probs of each continuation after ``context``, in input order, with
        all of the context but its last token run once (`PrefixCache`).

        Each batch feeds the context's last token and the continuations minus their last
        token (right-padded), at positions ``len(context) - 1`` on, attending to the cached
        rest of the context. The last context token is fed with every row rather than cached
        because its logits score the first continuation token: computed inside the batch's
        matrix products they match the full path within ~1e-6, where a one-row forward of
        the prefix alone (other kernels for tiny matrices) differs by up to ~2e-4.
        """
        c = len(context)
        if c == 1:  # nothing to cache: the full path runs the same tokens
            return self._run(context, conts)
        out: list[tuple[float, ...]] = [() for _ in conts]
        state = prefix_cache_of(self.lm).get(context[:-1])
        device = self.lm.device
        order = sorted(range(len(conts)), key=lambda i: -len(conts[i]))
        widths = [len(conts[i]) for i in order]  # fed: last context token + all but the last
        for group in length_groups(widths, self.tokens_per_batch):
            batch = [order[g] for g in group]
            width = widths[group[0]]
            ids = torch.full((len(batch), width + 1), self._pad_id, dtype=torch.long)
            ids[:, 0] = context[-1]
            attn = torch.zeros((len(batch), c - 1 + width), dtype=torch.long)
            attn[:, :c] = 1
            for r, i in enumerate(batch):
                ids[r, 1 : 1 + len(conts[i])] = torch.tensor(conts[i])
                attn[r, c : c - 1 + len(conts[i])] = 1
            positions = torch.arange(c - 1, c - 1 + width).expand(len(batch), width)
            with torch.inference_mode():
                out_pass = self.lm.model(
                    input_ids=ids[:, :width].to(device),
                    attention_mask=attn.to(device),
                    position_ids=positions.to(device),
                    past_key_values=state.cache_for(len(batch)),
                    use_cache=True,
                )
                logits = out_pass.logits.float()
                if self.share_contexts:
                    self._share(context, [conts[i] for i in batch], out_pass.past_key_values)
                targets = ids[:, 1:].to(device)
                picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                logp = (picked - torch.logsumexp(logits, dim=-1)).cpu()
            self.stats.forward_passes += 1
            self.stats.forward_rows += len(batch)
            self.stats.forward_tokens += len(batch) * width
            for r, i in enumerate(batch):
                out[i] = tuple(float(x) for x in logp[r, : len(conts[i])].tolist())
        return out

    def _share(self, context: tuple[int, ...], conts: list[tuple[int, ...]], cache: Any) -> None:
        """Keep each row's keys and values past the cached prefix (the context's last token
        and the continuation but its last token) in the model's `ContextCache`."""
        layers = cache_layers(cache)
        if layers is None:
            return
        store = context_cache_of(self.lm)
        at = len(context) - 1
        for r, cont in enumerate(conts):
            n = len(cont)
            if n == 0:
                continue
            store.put(
                (*context, *cont[:-1]),
                at,
                [(la.keys[r, :, at : at + n], la.values[r, :, at : at + n]) for la in layers],
            )

    def _batches(
        self, context: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Right-padded batches of ``context`` + each continuation, longest first, about
        ``tokens_per_batch`` tokens each: yields (indices into ``conts``, the continuation
        tokens [rows, n], the float logits predicting them [rows, n, vocab]), on the device."""
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
            self.stats.forward_passes += 1
            self.stats.forward_rows += len(batch)
            self.stats.forward_tokens += len(batch) * width
            yield batch, ids[:, c:].to(device), logits

    def _run(
        self, context: tuple[int, ...], conts: list[tuple[int, ...]]
    ) -> list[tuple[float, ...]]:
        """Per-token log-probs of each continuation after ``context``, in input order."""
        out: list[tuple[float, ...]] = [() for _ in conts]
        for batch, targets, logits in self._batches(context, conts):
            with torch.inference_mode():
                picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                logp = (picked - torch.logsumexp(logits, dim=-1)).cpu()
            for r, i in enumerate(batch):
                out[i] = tuple(float(x) for x in logp[r, : len(conts[i])].tolist())
        return out

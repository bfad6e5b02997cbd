"""Held-out masked-token prediction: a decoder MLM against its causal base, same positions.

The measure of `evolve adapt-mlm` and of ``bench/mlm_heldout.py``: for every token of a
held-out text, mask that one token (the rest visible) and take the masked LM's
log-probability of the true token and whether it is the top-1 prediction; for the causal LM,
the same token's log-probability given its left context only. Both models see the start
token first, so every position has the same context to its left. Held-out texts come from
the corpus's dev or test split (`evolve.experiments.corpus`), picked by a hash of their
key, so every run and every session measures the same positions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evolve.experiments.corpus import DEFAULT_SOURCES, Split, load_corpus
from scoring.decoder_mlm import START_TOKEN, attention_mask_4d, shift_hidden

HELDOUT_MIN_TOKENS = 12  # shorter texts give little context either side
HELDOUT_MAX_TOKENS = 96  # longer than the GA's texts; the cost grows with the square


@dataclass(frozen=True)
class HeldOut:
    """Token ids of held-out texts, each ``[start, t1, ..., tn]``; positions 1..n are scored."""

    keys: tuple[str, ...]
    seqs: tuple[tuple[int, ...], ...]

    @property
    def positions(self) -> int:
        return sum(len(s) - 1 for s in self.seqs)


def heldout_set(
    tokenizer: Any,
    split: Split,
    max_positions: int,
    sources: Sequence[str] = DEFAULT_SOURCES,
) -> HeldOut:
    """Texts of ``split`` in a fixed order (by key hash, sources interleaved) until they hold
    at least ``max_positions`` positions (or the split runs out)."""
    start = int(tokenizer.convert_tokens_to_ids(START_TOKEN))
    per_source = []
    for name in sources:
        docs = sorted(
            load_corpus(split, [name]),
            key=lambda d: hashlib.sha256(d.key.encode("utf-8")).hexdigest(),
        )
        per_source.append(docs)
    keys: list[str] = []
    seqs: list[tuple[int, ...]] = []
    total = 0
    cursors = [0] * len(per_source)
    while total < max_positions and any(
        c < len(d) for c, d in zip(cursors, per_source, strict=True)
    ):
        for s, docs in enumerate(per_source):
            while cursors[s] < len(docs):
                doc = docs[cursors[s]]
                cursors[s] += 1
                ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
                if HELDOUT_MIN_TOKENS <= len(ids) <= HELDOUT_MAX_TOKENS:
                    keys.append(doc.key)
                    seqs.append((start, *ids))
                    total += len(ids)
                    break
            if total >= max_positions:
                break
    return HeldOut(tuple(keys), tuple(seqs))


@dataclass
class PositionScores:
    logprobs: list[float]
    top1: list[bool]

    def summary(self, prefix: str) -> dict[str, float]:
        n = max(1, len(self.logprobs))
        return {
            f"{prefix}logprob": sum(self.logprobs) / n,
            f"{prefix}top1": sum(self.top1) / n,
            f"{prefix}positions": float(len(self.logprobs)),
        }


def masked_scores(
    decoder: torch.nn.Module,
    head: torch.nn.Module,
    held: HeldOut,
    mask_id: int,
    tokens_per_batch: int = 4096,
    bf16: bool = False,
) -> PositionScores:
    """One masked copy per position, bidirectional attention, predicted from position - 1.

    ``decoder`` is the bare decoder body (returns ``last_hidden_state``) and ``head`` the LM
    head, so this scores a training model (with LoRA layers) and a loaded one alike.
    """
    rows = [(s, j) for s, seq in enumerate(held.seqs) for j in range(1, len(seq))]
    out = PositionScores([], [])
    device = next(decoder.parameters()).device
    i = 0
    while i < len(rows):
        width = max(len(held.seqs[s]) for s, _ in rows[i : i + 1])
        take = max(1, tokens_per_batch // width)
        chunk = rows[i : i + take]
        width = max(len(held.seqs[s]) for s, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        keep = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, (s, j) in enumerate(chunk):
            seq = held.seqs[s]
            ids[r, : len(seq)] = torch.tensor(seq)
            ids[r, j] = mask_id
            keep[r, : len(seq)] = True
        targets = torch.tensor([held.seqs[s][j] for s, j in chunk])
        cols = torch.tensor([j for _, j in chunk])
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            hidden = decoder(
                input_ids=ids.to(device), attention_mask=attention_mask_4d(keep).to(device)
            ).last_hidden_state
            logits = head(shift_hidden(hidden)[torch.arange(len(chunk)), cols.to(device)])
        _collect(out, logits, targets)
        i += len(chunk)
    return out


def causal_scores(
    model: torch.nn.Module, held: HeldOut, tokens_per_batch: int = 4096
) -> PositionScores:
    """Each position's token from its left context only (one causal pass per text)."""
    out = PositionScores([], [])
    device = next(model.parameters()).device
    for seq in held.seqs:
        ids = torch.tensor([seq], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1]
        _collect(out, logits, torch.tensor(seq[1:]))
    return out


def _collect(out: PositionScores, logits: torch.Tensor, targets: torch.Tensor) -> None:
    logp = torch.log_softmax(logits.float().cpu(), dim=-1)
    out.logprobs.extend(logp[torch.arange(len(targets)), targets].tolist())
    out.top1.extend((logp.argmax(dim=-1) == targets).tolist())

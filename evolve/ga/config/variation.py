"""Variation options: span mutation (`MutationConfig`) and crossover (`CrossoverConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from evolve.ga.operators.context import CxPoints
from evolve.ga.proposers.base import Order

ProposerDtype = Literal["fp32", "bf16"]

FILL_ORDERS: tuple[Order, ...] = get_args(Order)
CX_POINTS: tuple[CxPoints, ...] = get_args(CxPoints)
PROPOSER_DTYPES: tuple[ProposerDtype, ...] = get_args(ProposerDtype)


@dataclass(frozen=True)
class MutationConfig:
    max_span: int = field(
        default=3,
        metadata={
            "help": "Longest masked span, in tokens: 1-3 token spans are short enough that "
            "the MLM refills them coherently."
        },
    )
    indel_prob: float = field(
        default=0.2,
        metadata={
            "help": "Share of mutations that insert or delete one token, so that lengths move."
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature of span fills: 1 samples from the proposer's own "
            "distribution; 0 = greedy."
        },
    )
    top_k: int = field(
        default=50,
        metadata={
            "help": "Sample fills from the k likeliest tokens only: cuts the long tail of rare "
            "subwords that a small MLM spreads mass over; 0 = no cut."
        },
    )
    order: Order = field(
        default="l2r",
        metadata={
            "help": "How multi-token spans are filled: l2r (left to right, so each token sees "
            "its neighbours) or parallel (all at once)."
        },
    )
    candidates: int = field(
        default=8,
        metadata={"help": "Causal proposer: fills sampled per span; the likeliest text is kept."},
    )
    proposer_dtype: ProposerDtype = field(
        default="fp32",
        metadata={
            "help": "Causal proposer: precision it samples and ranks fills in. bf16 took 0.7x "
            "the time of fp32 for the README's causal run (docs/search.md) where the hardware "
            "has bf16 (CUDA GPUs, CPUs with AVX512-BF16 or AMX); fitness stays exact fp32. Not "
            "the default: bf16 rounding depends on batch shapes, so a bf16 run repeats exactly "
            "only with the same --workers."
        },
    )
    no_repeat_ngram: int = field(
        default=0,
        metadata={
            "help": "N-gram guard: no fill, splice or deletion may make an N-gram that already "
            "occurs in the continuation (the prompt's last N-1 tokens count as context), as "
            "no_repeat_ngram_size of Hugging Face generate; 0 = off (the proposer's plain "
            "distribution). Against the repetition loops likelihood rewards."
        },
    )
    ban_tokens: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "A vocabulary token never to propose (repeatable); a bare word also bans "
            "its word-start form (Ġword, ▁word). None by default: the proposer's own choice."
        },
    )


@dataclass(frozen=True)
class CrossoverConfig:
    points: CxPoints = field(
        default="random",
        metadata={"help": "Crossover cut points: one, two, or random (one or two, per mating)."},
    )
    seam: int = field(
        default=1,
        metadata={"help": "Tokens re-masked on each side of a crossover cut to repair the join."},
    )

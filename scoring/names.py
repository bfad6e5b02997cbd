"""The names scores are stored under, and the PLL variants: written once, used everywhere.

A stored score is keyed by (text, prefix, scorer name). The name says which model and which
scoring rule produced it, so scores of different scorers never mix: ``pll/<variant>/<mlm>``
(with ``/bf16`` appended when computed under bf16 autocast, since those are approximate),
and ``causal/<causal LM>``.
"""

from __future__ import annotations

from typing import Literal

PLLVariant = Literal["original", "word_l2r"]
# original: Salazar et al. 2020; word_l2r: Kauf & Ivanova 2023 (see scoring.pll).
PLL_VARIANTS: tuple[PLLVariant, ...] = ("original", "word_l2r")


def pll_scorer_name(variant: str, mlm: str, bf16: bool = False) -> str:
    """``pll/<variant>/<mlm>``, plus ``/bf16`` for scores computed under bf16 autocast."""
    return f"pll/{variant}/{mlm}" + ("/bf16" if bf16 else "")


def causal_scorer_name(causal: str) -> str:
    """``causal/<causal LM>``."""
    return f"causal/{causal}"

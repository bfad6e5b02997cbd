"""Fitness options (`FitnessConfig`): which fitness kind a run maximises and the options the
kinds read. The kinds themselves, and the choices of ``objective``, are `evolve.ga.fitness`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from evolve.ga.config.checks import choice, require
from evolve.ga.fitness import CAUSAL, KIND_NAMES, KINDS, PLL, TYPICAL, FitnessKind, help_text
from scoring.names import PLL_VARIANTS, PLLVariant

Normalisation = Literal["mean", "total"]
if TYPE_CHECKING:
    Objective = str
else:  # the registered fitness kinds (`evolve.ga.fitness`): --fitness's choices come from it
    Objective = Literal[KIND_NAMES]
TypicalModel = Literal["mlm", "causal"]

NORMALISATIONS: tuple[Normalisation, ...] = get_args(Normalisation)
OBJECTIVES: tuple[Objective, ...] = KIND_NAMES
TYPICAL_MODELS: tuple[TypicalModel, ...] = get_args(TypicalModel)


@dataclass(frozen=True)
class FitnessConfig:
    """What is maximised: `objective` names a fitness kind (`evolve.ga.fitness`: pll, causal,
    sum, nsga2, typical, each a module there); the other fields are options the kinds read
    (weights of sum/nsga2, the PLL variant, typicality's model); ``rep_penalty`` subtracts
    a repetition share from any of them. `normalise` and `length_bonus`
    turn each model score into a value the same way (per token, or total plus a prior)."""

    objective: Objective = field(default="pll", metadata={"help": help_text()})
    variant: PLLVariant = field(
        default="original",
        metadata={
            "help": "PLL variant: original, or word_l2r (Kauf & Ivanova 2023), fairer to "
            "words of several pieces."
        },
    )
    normalise: Normalisation = field(
        default="mean",
        metadata={
            "help": "Score per token (mean) or in total; a total rewards shrinking the text."
        },
    )
    length_bonus: float = field(
        default=0.0,
        metadata={"help": "Nats per token added to a total score (a length prior)."},
    )
    bf16: bool = field(
        default=False,
        metadata={"help": "Score in bfloat16: ~2x faster but shifts scores (default: exact fp32)."},
    )
    pll_weight: float = field(
        default=1.0,
        metadata={"help": "sum/nsga2: weight of the PLL value (nsga2: only for reporting)."},
    )
    causal_weight: float = field(
        default=1.0,
        metadata={"help": "sum/nsga2: weight of the causal value; both are per token, so ~1:1."},
    )
    typical_weight: float = field(
        default=0.0,
        metadata={
            "help": "sum/nsga2: weight of the typicality value (a third objective when > 0); "
            "0 by default, which keeps sum and nsga2 as they were."
        },
    )
    typical_model: TypicalModel = field(
        default="mlm",
        metadata={
            "help": "Whose distribution typicality is measured under: mlm (masked conditional, "
            "free with the PLL pass) or causal (left-to-right)."
        },
    )
    rep_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Subtract this times rep-n (share of repeated word n-grams, 0..1) of the "
            "continuation from the fitness; 0 = off, as likelihood alone is the default."
        },
    )
    rep_n: int = field(
        default=2,
        metadata={"help": "n of the repetition penalty: 2 (bigrams) catches word loops early."},
    )

    @property
    def kind(self) -> FitnessKind:
        """The fitness kind `objective` names."""
        found = KINDS.get(self.objective)
        if found is None:
            choice("fitness objective", self.objective, OBJECTIVES)
        assert found is not None
        return found

    @property
    def reads(self) -> tuple[str, ...]:
        """The score roles the fitness combines (`evolve.ga.fitness.kind`)."""
        return self.kind.reads(self)

    @property
    def uses_typical(self) -> bool:
        """Whether a typicality value is part of the fitness."""
        return TYPICAL in self.reads

    @property
    def uses_pll(self) -> bool:
        """Whether the fitness needs the MLM's PLL pass (typicality under the MLM reads its
        entropies)."""
        return PLL in self.reads or (self.uses_typical and self.typical_model == "mlm")

    @property
    def uses_causal(self) -> bool:
        """Whether the fitness needs the causal LM's log p (typicality under the causal LM
        is recorded beside it)."""
        return CAUSAL in self.reads or (self.uses_typical and self.typical_model == "causal")

    def check(self) -> None:
        """The fitness part of `RunConfig.validate`: each choice, each number, and the
        kind's own check (`FitnessKind.problem`)."""
        choice("fitness objective", self.objective, OBJECTIVES)
        choice("PLL variant", self.variant, PLL_VARIANTS)
        choice("normalisation", self.normalise, NORMALISATIONS)
        require(math.isfinite(self.length_bonus), "length_bonus must be finite")
        choice("typical model", self.typical_model, TYPICAL_MODELS)
        require(
            math.isfinite(self.rep_penalty) and self.rep_penalty >= 0,
            f"rep_penalty must be a finite number >= 0 (got {self.rep_penalty})",
        )
        require(self.rep_n >= 1, f"rep_n must be at least 1 (got {self.rep_n})")
        for name in ("pll_weight", "causal_weight", "typical_weight"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{name} must be >= 0 (got {value})")
        problem = self.kind.problem(self)
        require(problem is None, str(problem))

"""Scoring texts with language models: load a model, score continuations, name the scores.

    from scoring import load_mlm, load_causal, PLLScorer, CausalScorer

    pll = PLLScorer(load_mlm("tiny-bert"))                # pseudo-log-likelihood, masked LM
    clm = CausalScorer(load_causal("smollm2-135m"))       # log p(text | prefix), causal LM
    [s.total for s in clm.score([" yellow.", " blue."], prefix="Cheddar is")]

Every scorer follows `Scorer` (``name``, ``lm``, ``score``, ``score_ids``) and returns one
`TokenScores` per text; ``name`` is the stored scorer name (`pll_scorer_name`,
`causal_scorer_name`). This package never imports ``evolve``. Importing it loads torch but
not transformers; models load on first use.
"""

from scoring.base import CachedScorer, ScoreCache, Scorer
from scoring.causal import CausalScorer
from scoring.errors import ModelLoadError, UserError
from scoring.models import (
    DEFAULT_CAUSAL,
    DEFAULT_MLM,
    LoadedModel,
    load_causal,
    load_mlm,
    load_model,
)
from scoring.names import PLL_VARIANTS, PLLVariant, causal_scorer_name, pll_scorer_name
from scoring.pll import PLLScorer
from scoring.results import TokenScores

__all__ = [
    "DEFAULT_CAUSAL",
    "DEFAULT_MLM",
    "PLL_VARIANTS",
    "CachedScorer",
    "CausalScorer",
    "LoadedModel",
    "ModelLoadError",
    "PLLScorer",
    "PLLVariant",
    "ScoreCache",
    "Scorer",
    "TokenScores",
    "UserError",
    "causal_scorer_name",
    "load_causal",
    "load_mlm",
    "load_model",
    "pll_scorer_name",
]

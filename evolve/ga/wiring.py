"""What a run's config asks for, built from loaded models: the proposer and the scorers.

Scorers are built by role (`evolve.ga.fitness.kind`): the run's fitness kind declares the
roles it reads, and `scorers_by_role` builds one scorer per role (and what a role's scorer
stands on: typicality under the MLM reads the PLL pass). The engine hands the roles' scorer
names to the kind's objective; nothing downstream asks which class a scorer is.

The engine (`evolve.ga.engine`) and every Ray worker (`evolve.ga.workers`) build them with
these same functions, so a worker's proposer and scorers are the driver's, on their own copy
of the models.
"""

from __future__ import annotations

from dataclasses import dataclass

from evolve.ga.config import RunConfig
from evolve.ga.fitness import CAUSAL, PLL, TYPICAL
from evolve.ga.proposers import CausalProposer, MLMProposer, Proposer
from evolve.ga.proposers.sampling import ban_token_ids
from scoring.base import Scorer
from scoring.causal import CausalScorer
from scoring.models import LoadedModel, load_causal, load_mlm
from scoring.pll import PLLScorer
from scoring.typical import TypicalCausalScorer, TypicalScorer


@dataclass(frozen=True)
class Models:
    """The loaded models a run uses (None where it does not use one)."""

    mlm: LoadedModel | None
    causal: LoadedModel | None

    @classmethod
    def load(cls, cfg: RunConfig, device: str | None = None) -> Models:
        """Load what `cfg` uses onto ``device`` (default: the config's)."""
        device = device or cfg.device
        mlm = load_mlm(cfg.mlm, device=device) if cfg.uses_mlm else None
        causal = load_causal(cfg.causal, device=device) if cfg.uses_causal else None
        return cls(mlm, causal)

    def representation_lm(self, cfg: RunConfig) -> LoadedModel:
        """The model whose tokens individuals are written in (the proposer's)."""
        lm = self.mlm if cfg.representation == "mlm" else self.causal
        if lm is None:
            raise ValueError(f"the {cfg.representation} model is needed but not loaded")
        return lm


def make_proposer(cfg: RunConfig, lm: LoadedModel) -> Proposer:
    """The proposer the config names, on the representation's model, with the run's
    proposal guards (banned tokens, no repeated n-grams)."""
    m = cfg.mutation
    banned = ban_token_ids(lm, m.ban_tokens)
    if cfg.proposer == "mlm":
        return MLMProposer(
            lm,
            temperature=m.temperature,
            top_k=m.top_k,
            order=m.order,
            banned_ids=banned,
            no_repeat_ngram=m.no_repeat_ngram,
        )
    return CausalProposer(
        lm,
        dtype=m.proposer_dtype,
        candidates=m.candidates,
        temperature=m.temperature,
        top_k=m.top_k,
        banned_ids=banned,
        no_repeat_ngram=m.no_repeat_ngram,
    )


CPU_TOKENS_PER_BATCH = 4096  # 2-4k tokens per PLL pass is fastest on a CPU (scoring.pll)
GPU_BATCH_MEMORY_SHARE = 0.25  # of the free GPU memory one PLL pass may take
GPU_BYTES_PER_TOKEN_PER_HIDDEN = 64  # fp32 activations of one token in one pass, per hidden
# unit, with room to spare (the FFN's 4x intermediate, attention, the head at masked rows);
# an estimate, not measured on a GPU yet (docs/scale.md)
GPU_MAX_TOKENS_PER_BATCH = 262_144


def pll_tokens_per_batch(lm: LoadedModel) -> int:
    """Tokens per packed PLL pass: the CPU optimum, or on CUDA a share of the free memory."""
    if lm.device.type != "cuda":
        return CPU_TOKENS_PER_BATCH
    import torch

    free, _total = torch.cuda.mem_get_info(lm.device)
    hidden = int(getattr(lm.model.config, "hidden_size", 768))
    fit = int(free * GPU_BATCH_MEMORY_SHARE) // (GPU_BYTES_PER_TOKEN_PER_HIDDEN * hidden)
    return max(CPU_TOKENS_PER_BATCH, min(GPU_MAX_TOKENS_PER_BATCH, fit))


def scorers_by_role(cfg: RunConfig, models: Models) -> dict[str, Scorer]:
    """The scorers the fitness uses, by role: PLL under the MLM and/or log p under the causal
    LM, and the typicality scorer when the fitness has a typicality term (under the MLM it
    reads the entropies of the same PLL pass: no extra forward; under the causal LM the
    causal log p is scored beside it). In this order, which is the order scores are computed
    and recorded in."""
    f = cfg.fitness
    scorers: dict[str, Scorer] = {}
    typical_mlm = f.uses_typical and f.typical_model == "mlm"
    if f.uses_pll:
        assert models.mlm is not None
        pll = PLLScorer(
            models.mlm,
            variant=f.variant,
            dtype="bf16" if f.bf16 else "fp32",
            tokens_per_batch=pll_tokens_per_batch(models.mlm),
            entropy=typical_mlm,
        )
        scorers[PLL] = pll
        if typical_mlm:
            scorers[TYPICAL] = TypicalScorer(pll)
    if f.uses_causal:
        assert models.causal is not None
        # the causal proposer edits the texts it scores from their kept keys/values (fp32:
        # a bf16 proposer runs its own copy of the model, which these would not fit)
        share = cfg.proposer == "causal" and cfg.mutation.proposer_dtype == "fp32"
        scorers[CAUSAL] = CausalScorer(models.causal, share_contexts=share)
        if f.uses_typical and not typical_mlm:
            scorers[TYPICAL] = TypicalCausalScorer(models.causal)
    return scorers


def make_scorers(cfg: RunConfig, models: Models) -> list[Scorer]:
    """The scorers of `scorers_by_role`, in its order (what a worker holds)."""
    return list(scorers_by_role(cfg, models).values())

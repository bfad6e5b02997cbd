"""Stunting: fine-tune a causal LM while refusing updates toward its lookahead (issue 17).

The proposal's second half. `evolve amplify` asks whether beam-search lookahead helps a
trained model predict real text. Stunting asks what training does to that benefit: plain
fine-tuning teaches the naive model p, token by token, what a lookahead would have told it;
a "stunted" training refuses (part of) that signal, so the benefit of lookahead might be kept
or grown. Here a causal LM is fine-tuned on one text while, on a held-out dev text, the
amplify gain is tracked.

Notation, per target position t of a training batch (prefix x_<t, real next token x = x_t),
all computed on the *current* weights before the update, with gradients off:

- p: the model's next-token distribution (the naive model).
- q: the lookahead distribution of `evolve amplify`: beam search of width B and depth D from
  the prefix (the same grouped tree-attention search on the KV cache,
  `evolve.experiments.amplify.iter_positions`), each beam's first token weighted by its
  beam's probability (`amplified_distribution`). The amplified model is a(λ) = (1-λ)p + λq.
- toward(t) = q(x) > p(x). For every λ in (0, 1], a(λ)(x) > p(x) exactly when q(x) > p(x), so
  this does not depend on λ: at these positions the plain update (which raises p(x)) moves p
  toward what the lookahead already predicts. The rest are "away" positions.

Variants (`variant`), each a loss on the batch's per-position negative log-likelihoods
nll_t = -log p_θ(x_t) (p_θ with gradients, same weights as p):

- none: mean_t nll_t. Plain fine-tuning, the control.
- skip (v1): mean of nll_t over the positions that are not toward. A batch where every
  position is toward makes no update (the optimizer is not stepped).
- penalty (v2): mean_t [ nll_t + α · Σ_v q_t(v) · max(log p_θ(v | x_<t), -log V) ].
  The second term is the negative cross-entropy of p_θ against q: minimising it pushes p_θ's
  probability of the lookahead's tokens down, i.e. away from the amplified prediction. The
  clamp at -log V (V = vocabulary size) bounds it: a lookahead token stops being pushed once
  p_θ gives it less than the uniform probability 1/V, so the term lies in [-α log V, 0] and
  cannot diverge (an unclipped negative cross-entropy can be driven to -inf by sending
  p_θ(v) to 0). For α ≤ 1 the real token itself is never pushed down: its net weight in the
  gradient is 1 - α·q(x) ≥ 0.
- balance (v3): mean_t w_t · nll_t with weights that make the toward and away updates balance.
  The magnitude of position t's update along the direction naive -> amplified is
  m_t = |q(x) - p(x)| = |d a(λ)(x) / dλ|: how much the real token's probability changes as p
  moves toward the amplified model (bounded in [0, 1], zero where the lookahead agrees with p,
  defined when q(x) = 0, unlike its log-space version |q(x)/p(x) - 1|, which is unbounded for
  toward positions and at most 1 for away ones). With S_T and S_A the sums of m_t over the
  toward and away positions of the batch (count × typical magnitude), toward positions get
  weight r·c and away positions c, with r = S_A / S_T clipped to [1/R, R] (R = `balance_cap`)
  and c such that the mean weight is 1 (so the loss scale, and the learning rate, compare
  with `none`). Unclipped, Σ_T w_t m_t = Σ_A w_t m_t exactly; every weight lies in (0, R].
  If either group is empty or has zero total magnitude there is nothing to balance: all
  weights are 1.

The model is kept in eval mode during training (dropout off), so the p that the lookahead and
the masks are computed from is the very function being trained; this also makes a run
deterministic. Optimiser: AdamW without weight decay, constant learning rate, no clipping:
plain fine-tuning with nothing that could confound the comparison of variants.

Data: the training text's documents (blank-line separated, as in `evolve amplify`) are joined
by blank lines and tokenised once; windows are consecutive non-overlapping pieces of
`seq_len` target tokens (seq_len + 1 tokens each: a window's last token is the next one's
first). Each step takes `batch_tokens // seq_len` windows from a stream of seeded random
permutations of all windows (one permutation per epoch). Monitoring uses
`run_amplify` itself on the dev text at step 0, every `eval_every` steps and at the end: the
dev mean log-likelihood of p and the arithmetic amplify gain at λ = 0.01 and 0.1 and its
slope at λ = 0 (mean q/p - 1), for the same positions every time.

Domain code: no click; progress goes to a callback; Ctrl-C stops and returns what was
measured (status "interrupted").
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evolve.experiments.amplifier import (
    Amplifier,
    AmplifierSpec,
    dense_log_r,
    features,
    fit_amplifier,
    log_r_at,
    new_amplifier,
)
from evolve.experiments.amplify import (
    AmplifyConfig,
    Document,
    amplified_distribution,
    iter_positions,
    plan_positions,
    run_amplify,
)
from evolve.experiments.lookahead import (
    DEFAULT_TREE_TOKENS,
    Beam,
    Particles,
    Search,
    block_noise,
    check_particles,
    derived_seed,
    lookahead,
    pack_documents,
    particle_noise,
)
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel

KIND = "stunt"  # experiment kind in the store
Variant = Literal["none", "skip", "penalty", "balance", "particle", "adversarial"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
# The lookahead a variant stunts against, and the one its dev monitor uses instead (a "dev
# set" of lookahead: a form the training never pushed against). `none` stunts against
# nothing; it is monitored like the beam variants it is the control for.
STUNTED_AGAINST: dict[str, str | None] = {
    "none": None,
    "skip": "beam",
    "penalty": "beam",
    "balance": "beam",
    "particle": "particle",
    "adversarial": "amplifier",
}
MONITOR: dict[str, str] = {
    "none": "particle",
    "skip": "particle",
    "penalty": "particle",
    "balance": "particle",
    "particle": "beam",
    "adversarial": "beam",
}
ZERO_UPDATE_VARIANTS = ("particle", "adversarial")  # v4 and v5: the update is projected
# Purposes of the random streams derived from (seed, step, purpose): never the same numbers
# for two uses.
NOISE_TRAIN, NOISE_FIT, NOISE_FIT_INIT, NOISE_DEV_AMPLIFIER = 1, 2, 3, 4
DEV_NOISE_SEED = 0  # every dev evaluation of every run uses the same particles: paired
DEV_BLOCK = 256  # dev positions per batched-engine call (the amplifier's dev gain)
EVAL_LAMBDAS = (0.0, 0.01, 0.1)  # λ = 0 is p itself; 0.01 and 0.1 are the small λ
DEFAULT_STEPS = 20  # when neither steps nor epochs is given
TREE_ROWS = 64  # beam rows per tree forward, as `evolve amplify`'s default batch_tokens

Progress = Callable[[int, int, dict[str, Any]], None]  # (steps done, steps, latest numbers)


@dataclass(frozen=True)
class StuntConfig:
    """Everything that defines a stunting run; stored with its results.

    Each field's `metadata["help"]` says what it sets and why its default is what it is;
    `evolve stunt` makes its options from them (cli/options.py).
    """

    variant: Variant = field(
        default="none",
        metadata={
            "help": "What an update does where the lookahead beats p at the real token: none "
            "(plain fine-tuning, the control the others are compared with), skip (drop those "
            "positions), penalty (also push p away from the lookahead's tokens, weight "
            "`alpha`), balance (reweight toward and away positions, ratio at most "
            "`balance_cap`): v1-v3, against beam search; particle (v4: the update's "
            "component toward the particle lookahead's q is removed) or adversarial (v5: the "
            "same toward a learned amplifier, refit every `retrain_every` steps)."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Penalty weight (penalty variant): 0.5 is strong enough to show in a short "
            "run, and any weight up to 1 never pushes the real token itself down."
        },
    )
    steps: int | None = field(
        default=None,
        metadata={
            "help": f"Optimiser steps [default: {DEFAULT_STEPS}, or as many as `epochs` "
            "takes when that is given]."
        },
    )
    epochs: float | None = field(
        default=None,
        metadata={"help": "Passes over the training windows, instead of `steps`."},
    )
    lr: float = field(
        default=1e-4,
        metadata={
            "help": "AdamW learning rate: a usual fine-tuning rate for a ~100M-parameter model."
        },
    )
    seq_len: int = field(
        default=32,
        metadata={
            "help": "Target tokens per training window: short, so that lookahead per token "
            "stays cheap."
        },
    )
    batch_tokens: int = field(
        default=64,
        metadata={
            "help": "Target tokens per step (windows per step = this // `seq_len`): two "
            "default windows."
        },
    )
    beams: int = field(
        default=4,
        metadata={
            "help": "Beam width B of the lookahead: 4 as in evolve amplify, so they compare."
        },
    )
    depth: int = field(
        default=2,
        metadata={
            "help": "Lookahead tokens D: 2 is the shortest real lookahead (D = 1 only "
            "renormalises p's top B tokens)."
        },
    )
    eval_every: int = field(
        default=10,
        metadata={
            "help": "Steps between dev evaluations (also at step 0 and the last): a default "
            "run is evaluated at its start, middle and end."
        },
    )
    dev_positions: int = field(
        default=128,
        metadata={
            "help": "Dev positions per evaluation: one evaluation window, the same positions "
            "every time, so that changes are paired."
        },
    )
    dev_stride: int = field(
        default=1,
        metadata={
            "help": "Score every k-th dev token; more than 1 spreads the evaluation window "
            "over more text."
        },
    )
    balance_cap: float = field(
        default=10.0,
        metadata={
            "help": "Largest ratio R between toward and away weights (balance variant), so "
            "that a few positions cannot take over a batch's update."
        },
    )
    particles: int = field(
        default=8,
        metadata={
            "help": "Particle lookahead (what particle stunts against, the amplifier's "
            "rollouts, and the dev monitor of none/skip/penalty/balance): paths per position; "
            "8 at depth 2 feed 8 tokens per position, twice what 4 beams do."
        },
    )
    beta: float = field(
        default=2.0,
        metadata={
            "help": "Particle lookahead: target p(path)^beta (1: p itself; large: the best "
            "path); 2 weighs a first token by how predictable its continuation is."
        },
    )
    retrain_every: int = field(
        default=50,
        metadata={
            "help": "Adversarial: steps between refits of the amplifier on the current model "
            "(also before step 1); 50 refits it about 40 times in a 1M-token study run."
        },
    )
    amplifier_windows: int = field(
        default=16,
        metadata={
            "help": "Adversarial: training windows the amplifier is fit on at each refit, a "
            "quarter of their positions held out: 16 default windows give ~500 positions."
        },
    )
    amplifier_steps: int = field(
        default=200,
        metadata={
            "help": "Adversarial: full-batch Adam steps per refit, early-stopped on the "
            "held-out positions (the head has ~10k parameters and fixed inputs)."
        },
    )
    tree_tokens: int = field(
        default=DEFAULT_TREE_TOKENS,
        metadata={
            "help": "Lookahead rollout rows per forward pass (the whole batch's windows are "
            "searched together): speed and memory only, the results do not change."
        },
    )
    unwrap: bool = field(
        default=False,
        metadata={
            "help": "Join hard-wrapped lines within a paragraph (both texts); off, the text "
            "is read as written."
        },
    )
    model: str = field(
        default=DEFAULT_CAUSAL,
        metadata={
            "help": "Causal LM preset/folder/id: any causal LM; the default causal preset is "
            "small enough to fine-tune on a CPU."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Random seed: drives the window order (and torch's global generator), so "
            "that a run repeats exactly."
        },
    )
    device: str = "cpu"  # no option: `evolve stunt` trains on the CPU

    def validate(self) -> StuntConfig:
        """Check every field once; raise UserError with a one-line message on bad input."""
        if self.variant not in VARIANTS:
            raise UserError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)):
            raise UserError(f"alpha must be a number, got {self.alpha}")
        if self.alpha < 0:
            raise UserError(f"alpha must be 0 or more, got {self.alpha}")
        if self.steps is not None and self.epochs is not None:
            raise UserError("give steps or epochs, not both")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise UserError(f"steps must be at least 1, got {self.steps}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"epochs must be more than 0, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"lr must be more than 0, got {self.lr}")
        check_particles(self.particles, self.beta)
        for name in (
            "seq_len",
            "beams",
            "depth",
            "eval_every",
            "dev_positions",
            "dev_stride",
            "retrain_every",
            "amplifier_windows",
            "amplifier_steps",
            "tree_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if not isinstance(self.batch_tokens, int) or self.batch_tokens < self.seq_len:
            raise UserError(
                f"batch-tokens ({self.batch_tokens}) must be at least seq-len ({self.seq_len})"
            )
        if not (math.isfinite(self.balance_cap) and self.balance_cap >= 1):
            raise UserError(f"balance cap must be at least 1, got {self.balance_cap}")
        if not self.model or not self.model.strip():
            raise UserError("empty model name")
        return self

    @property
    def rows_per_step(self) -> int:
        return self.batch_tokens // self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def amplify_config(self, lookahead: str = "beam") -> AmplifyConfig:
        """The `evolve amplify` configuration of one dev evaluation (beam or particle)."""
        return AmplifyConfig(
            beams=self.beams,
            depth=self.depth,
            lambdas=EVAL_LAMBDAS,
            max_positions=self.dev_positions,
            stride=self.dev_stride,
            unwrap=self.unwrap,
            causal=self.model,
            batch_tokens=self.tree_tokens,
            batched=True,  # many short dev documents share each forward
            lookahead=lookahead,  # type: ignore[arg-type]
            particles=self.particles,
            beta=self.beta,
            seed=DEV_NOISE_SEED,
            device=self.device,
        ).validate()

    def amplifier_spec(self, lm: LoadedModel) -> AmplifierSpec:
        """The learned amplifier of the adversarial variant: particle rollouts as configured."""
        hf: Any = lm.model
        hidden = int(getattr(hf.config, "hidden_size", 0) or getattr(hf.config, "n_embd", 0))
        vocab = int(hf.get_output_embeddings().weight.shape[0])
        return AmplifierSpec(
            hidden_size=hidden,
            vocab_size=vocab,
            particles=self.particles,
            beta=self.beta,
            depth=self.depth,
            model=self.model,
        ).validate()


# -- data --------------------------------------------------------------------------------------


def training_windows(lm: LoadedModel, docs: Sequence[Document], seq_len: int) -> torch.Tensor:
    """The training text as windows [n, seq_len + 1] of consecutive token ids (long).

    UserError if the text is shorter than one window.
    """
    text = "\n\n".join(d.text for d in docs)
    ids = list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise UserError(
            f"the training text has {len(ids)} tokens, fewer than one window "
            f"(seq-len + 1 = {seq_len + 1})"
        )
    return torch.tensor([ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def window_order(n_windows: int, seed: int) -> Iterator[int]:
    """Window indices: a seeded random permutation of all windows per epoch, forever."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n_windows, generator=gen).tolist()


def resolve_steps(config: StuntConfig, n_windows: int) -> int:
    if config.steps is not None:
        return config.steps
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * n_windows / config.rows_per_step))
    return DEFAULT_STEPS


# -- the amplified predictions and the losses --------------------------------------------------


@dataclass(frozen=True)
class Amplified:
    """Lookahead at every target position of a batch [R, L], computed without gradients.

    `logp_x` and `q_x` are log p and q at the real next token (float64); `first` and
    `weight` [R, L, B] are the beams' first tokens and their weights (softmax of the beams'
    log-probabilities), so that q(v) = Σ_b weight_b [first_b = v].
    """

    logp_x: torch.Tensor
    q_x: torch.Tensor
    first: torch.Tensor
    weight: torch.Tensor
    dense: torch.Tensor | None = None  # [R, L, V] a learned amplifier's r (adversarial)
    ess: torch.Tensor | None = None  # [R, L] particles' effective sample size

    @property
    def toward(self) -> torch.Tensor:
        """Where a(λ) > p at the real token (any λ in (0, 1]): q(x) > p(x)."""
        return self.q_x > self.logp_x.exp()

    @property
    def magnitude(self) -> torch.Tensor:
        """|q(x) - p(x)|: the change of p(x) per unit λ along naive -> amplified."""
        return (self.q_x - self.logp_x.exp()).abs()


def amplify_windows(lm: LoadedModel, windows: torch.Tensor, beams: int, depth: int) -> Amplified:
    """p and the lookahead q at each position of each window, as `evolve amplify` computes them.

    Window row r predicts row[t + 1] from row[: t + 1] for t < L; each row goes through
    `iter_positions` (one KV cache per row, tree-attention beam search in groups).
    """
    n_rows, width = windows.shape
    length = width - 1
    group = max(1, TREE_ROWS // beams)
    logp_x = torch.empty(n_rows, length, dtype=torch.float64)
    q_x = torch.empty(n_rows, length, dtype=torch.float64)
    first = torch.empty(n_rows, length, beams, dtype=torch.long)
    weight = torch.empty(n_rows, length, beams, dtype=torch.float64)
    for r in range(n_rows):
        ctx = windows[r].tolist()
        for t, logp, found in iter_positions(lm, ctx, range(length), beams, depth, group):
            x = ctx[t + 1]
            q = amplified_distribution(found.tokens, found.logprobs, logp.shape[-1])
            logp_x[r, t] = logp[x]
            q_x[r, t] = q[x]
            first[r, t] = found.tokens[:, 0]
            weight[r, t] = torch.softmax(found.logprobs.double(), dim=-1)
    return Amplified(logp_x=logp_x, q_x=q_x, first=first, weight=weight)


def lookahead_windows(
    model: torch.nn.Module,
    windows: torch.Tensor,
    search: Search,
    depth: int,
    *,
    noise: torch.Tensor | None = None,
    tree_tokens: int = DEFAULT_TREE_TOKENS,
) -> Amplified:
    """`amplify_windows` for a whole batch at once (`evolve.experiments.lookahead`).

    All windows' caches in one forward, then one forward per depth step for the rollouts
    of every position of every window (cut into pieces of at most `tree_tokens` rows).
    With `Beam(B)` it finds the beams `amplify_windows` finds; `Particles` needs `noise`
    [R, L, depth, 2, n].
    """
    length = windows.shape[1] - 1
    x = windows[:, 1:]
    positions = torch.arange(length)[None].expand(windows.shape[0], -1)
    ro = lookahead(
        model,
        windows[:, :length],
        positions,
        search,
        depth,
        noise=noise,
        want=x[..., None],
        tree_tokens=tree_tokens,
    )
    assert ro.want_logp is not None
    return Amplified(
        logp_x=ro.want_logp[..., 0],
        q_x=ro.q_at(x[..., None])[..., 0],
        first=ro.first,
        weight=ro.weight,
        ess=ro.ess() if isinstance(search, Particles) else None,
    )


def amplifier_windows(
    model: torch.nn.Module,
    windows: torch.Tensor,
    amp: Amplifier,
    seed: int,
    tree_tokens: int = DEFAULT_TREE_TOKENS,
) -> Amplified:
    """The learned amplifier r at every position of a batch: r(x) and the dense r."""
    length = windows.shape[1] - 1
    x = windows[:, 1:]
    positions = torch.arange(length)[None].expand(windows.shape[0], -1)
    feats, ro = features(
        model, windows[:, :length], positions, amp.spec, seed, full=True, tree_tokens=tree_tokens
    )
    assert ro.full_logp is not None
    with torch.no_grad():
        delta = amp(feats)
    logp_x = ro.full_logp.gather(-1, x[..., None])[..., 0]
    if not bool(delta.any()):
        # r is p (a fresh amplifier, or one reset to p): there is no direction toward it,
        # and r - p computed in floating point would be rounding noise to project against.
        return Amplified(
            logp_x=logp_x,
            q_x=logp_x.exp(),
            first=feats.cand,
            weight=torch.zeros(feats.cand.shape, dtype=torch.float64),
            ess=ro.ess(),
        )
    log_r = dense_log_r(feats, delta, ro.full_logp)
    return Amplified(
        logp_x=logp_x,
        q_x=log_r.gather(-1, x[..., None])[..., 0].exp(),
        first=feats.cand,
        weight=torch.zeros(feats.cand.shape, dtype=torch.float64),
        dense=log_r.exp(),
        ess=ro.ess(),
    )


def zero_update_step(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    logits: torch.Tensor,
    targets: torch.Tensor,
    amp: Amplified,
) -> dict[str, Any]:
    """One AdamW step on the mean NLL with no first-order movement toward q (v4, v5).

    The direction that raises p toward the lookahead's q is g_q = ∇θ mean_t Σ_v q_t(v)
    log p_θ(v | x<t) (minus ∇ of the cross-entropy of p_θ against q; q - p gives the same
    direction because Σ_v p ∇log p = 0). The optimiser's step Δ is made as usual, then its
    component along g_q is removed: Δ' = Δ - (⟨Δ, g_q⟩ / ‖g_q‖²) g_q, so ⟨Δ', g_q⟩ = 0 (to
    rounding): to first order the update moves p neither toward nor away from q. The
    numbers returned record ⟨-∇NLL, g_q⟩ (what a plain gradient step would do), ⟨Δ, g_q⟩
    before and ⟨Δ', g_q⟩ after the projection, and the share of ‖Δ‖ removed.
    """
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    loss = nll.mean()
    if amp.dense is not None:
        toward_term = (amp.dense.to(logp.dtype) * logp).sum(-1).mean()
    else:
        picked = logp.gather(-1, amp.first)
        toward_term = (amp.weight.to(logp.dtype) * picked).sum(-1).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    g_q = torch.autograd.grad(toward_term, params, retain_graph=True, allow_unused=True)
    g_q = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, g_q, strict=True))
    optimiser.zero_grad(set_to_none=True)
    loss.backward()

    def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
        return math.fsum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))

    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    gq_sq, g_sq = dot(g_q, g_q), dot(grads, grads)
    grad_dot = -dot(grads, g_q)
    before = [p.detach().clone() for p in params]
    optimiser.step()
    with torch.no_grad():
        delta = [p - b for p, b in zip(params, before, strict=True)]
        d_dot, d_sq = dot(delta, g_q), dot(delta, delta)
        coef = d_dot / gq_sq if gq_sq > 0 else 0.0
        if coef:
            for p, g in zip(params, g_q, strict=True):
                p.sub_(g, alpha=coef)
        after = [p - b for p, b in zip(params, before, strict=True)]
        a_dot = dot(after, g_q)
    norm_q = math.sqrt(gq_sq)
    return {
        "loss": float(loss.detach()),
        "nll": float(loss.detach()),
        "toward": float(amp.toward.double().mean()),
        "affected": 1.0 if gq_sq > 0 else 0.0,
        "grad_dot": grad_dot,
        "grad_cos": grad_dot / (math.sqrt(g_sq) * norm_q) if g_sq > 0 and gq_sq > 0 else None,
        "update_dot_before": d_dot,
        "update_dot_after": a_dot,
        "update_cos_before": d_dot / (math.sqrt(d_sq) * norm_q) if d_sq > 0 and gq_sq > 0 else None,
        "removed_share": abs(coef) * norm_q / math.sqrt(d_sq) if d_sq > 0 else 0.0,
        "ess": None if amp.ess is None else float(amp.ess.mean()),
    }


def balance_weights(toward: torch.Tensor, magnitude: torch.Tensor, cap: float) -> torch.Tensor:
    """v3's weights (float64, mean 1): toward/away totals of magnitude made equal, ratio ≤ cap."""
    n = toward.numel()
    s_toward = float(magnitude[toward].sum())
    s_away = float(magnitude[~toward].sum())
    if s_toward == 0.0 or s_away == 0.0:
        return torch.ones(toward.shape, dtype=torch.float64)
    ratio = min(max(s_away / s_toward, 1.0 / cap), cap)
    w = torch.where(toward, ratio, 1.0).double()
    return w * (n / float(w.sum()))


def stunt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    amp: Amplified,
    variant: str,
    alpha: float = 0.0,
    cap: float = 10.0,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """The variant's loss for logits [R, L, V] (with gradients) and targets [R, L].

    Returns (loss, numbers); loss is None when nothing is to be learnt (skip, all toward).
    `numbers` holds the plain mean NLL of the batch, the share of toward positions and the
    share of positions the variant affects (skipped / penalised / down-weighted).
    """
    vocab = logits.shape[-1]
    nll = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="none")
    nll = nll.view(targets.shape)
    toward = amp.toward
    numbers: dict[str, Any] = {
        "nll": float(nll.detach().mean()),
        "toward": float(toward.double().mean()),
    }
    if variant == "none":
        return nll.mean(), numbers | {"affected": 0.0}
    if variant == "skip":
        keep = ~toward
        numbers["affected"] = float(toward.double().mean())
        return (nll[keep].mean() if bool(keep.any()) else None), numbers
    if variant == "penalty":
        floor = -math.log(vocab)
        logp_beams = logits.log_softmax(-1).gather(-1, amp.first)  # [R, L, B]
        term = (amp.weight.to(logp_beams.dtype) * logp_beams.clamp(min=floor)).sum(-1)
        active = ((logp_beams.detach() > floor) & (amp.weight > 0)).any(-1)
        numbers["affected"] = float(active.double().mean())
        numbers["penalty"] = float(term.detach().mean())
        return nll.mean() + alpha * term.mean(), numbers
    if variant == "balance":
        w = balance_weights(toward, amp.magnitude, cap)
        numbers["affected"] = float((w < 1).double().mean())
        numbers["toward_weight"] = float(w[toward].mean()) if bool(toward.any()) else None
        return (w.to(nll.dtype) * nll).mean(), numbers
    raise UserError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


# -- the run -----------------------------------------------------------------------------------


@dataclass
class StuntResult:
    """Per-step and per-evaluation rows, the summary, and the trained model."""

    config: StuntConfig
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    model: Any = None  # the fine-tuned torch module (a copy; the loaded model is untouched)
    amplifier: Amplifier | None = None  # the adversarial variant's last fit

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "finished"

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "step"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "eval"]


def evaluate_dev(
    lm: LoadedModel,
    dev: Sequence[Document],
    config: StuntConfig,
    amplifier: Amplifier | None = None,
) -> dict[str, Any]:
    """One dev evaluation on the current weights: LL, and the gain of every lookahead form.

    Beam: `run_amplify` as `evolve amplify` computes it (dev LL, gain at λ = 0.01 and 0.1,
    slope at 0). Particle: `run_amplify` with the particle lookahead on the same positions,
    with the same particles at every evaluation (seed `DEV_NOISE_SEED`). Amplifier (when
    given): the mean log r(x) - log p(x) of the learned amplifier. `monitor_*` repeats the
    numbers of the form the variant does not stunt against (`MONITOR`).

    Also keeps, per dev position, log p, log a(0.01), log a(0.1) and q/p at the real token and
    the other forms' per-position gains, so that changes between evaluations (always the same
    positions) get paired standard errors.
    """
    beam = run_amplify(lm, dev, config.amplify_config("beam"))
    if beam.interrupted:
        raise KeyboardInterrupt  # a partial evaluation is not comparable with the others
    particle = run_amplify(lm, dev, config.amplify_config("particle"))
    if particle.interrupted:
        raise KeyboardInterrupt
    s, ps = beam.summary, particle.summary
    by_lam = {row["lambda"]: row for row in s["arith"]["by_lambda"]}
    p_lam = {row["lambda"]: row for row in ps["arith"]["by_lambda"]}
    at = {lam: EVAL_LAMBDAS.index(lam) for lam in (0.01, 0.1)}

    def gains(rows: list[dict[str, Any]], lam: float) -> list[float | None]:
        return [
            None if r["log_arith"][at[lam]] is None else r["log_arith"][at[lam]] - r["logp"]
            for r in rows
        ]

    out: dict[str, Any] = {
        "positions": s["positions"],
        "dev_ll": s["naive_mean_ll"],
        "gain_0.01": by_lam[0.01]["gain"],
        "gain_0.01_se": by_lam[0.01]["gain_se"],
        "gain_0.1": by_lam[0.1]["gain"],
        "gain_0.1_se": by_lam[0.1]["gain_se"],
        "slope_at_0": s["arith"]["slope_at_0"],
        "slope_se": s["arith"]["slope_se"],
        "beam_coverage": s["beam_coverage"],
        "helped": by_lam[0.1]["helped"],
        "particle_gain_0.01": p_lam[0.01]["gain"],
        "particle_gain_0.01_se": p_lam[0.01]["gain_se"],
        "particle_gain_0.1": p_lam[0.1]["gain"],
        "particle_gain_0.1_se": p_lam[0.1]["gain_se"],
        "particle_slope_at_0": ps["arith"]["slope_at_0"],
        "particle_coverage": ps["beam_coverage"],
        "amplifier_gain": None,
        "amplifier_gain_se": None,
        "per_position": {
            "logp": [r["logp"] for r in beam.rows],
            "log_a_0.01": [r["log_arith"][at[0.01]] for r in beam.rows],
            "log_a_0.1": [r["log_arith"][at[0.1]] for r in beam.rows],
            "q_over_p": [
                0.0 if r["logq"] is None else math.exp(r["logq"] - r["logp"]) for r in beam.rows
            ],
            "particle_gain_0.01": gains(particle.rows, 0.01),
            "particle_gain_0.1": gains(particle.rows, 0.1),
            "particle_q_over_p": [
                0.0 if r["logq"] is None else math.exp(r["logq"] - r["logp"]) for r in particle.rows
            ],
        },
    }
    if amplifier is not None:
        per = amplifier_dev_gains(lm, dev, config, amplifier)
        out["amplifier_gain"] = math.fsum(per) / len(per)
        out["amplifier_gain_se"] = _se_of(per)
        out["per_position"]["amplifier_gain"] = per
    return with_monitor(out, config.variant)


def with_monitor(found: dict[str, Any], variant: str) -> dict[str, Any]:
    """A dev evaluation with its `monitor_*` numbers set for `variant`: those of the
    lookahead form the variant is not stunted against (`MONITOR`)."""
    form = MONITOR[variant]
    out = dict(found, monitor=form)
    for lam in ("0.01", "0.1"):
        key = f"gain_{lam}" if form == "beam" else f"particle_gain_{lam}"
        out[f"monitor_gain_{lam}"] = out[key]
        out[f"monitor_gain_{lam}_se"] = out[f"{key}_se"]
    return out


def amplifier_dev_gains(
    lm: LoadedModel, dev: Sequence[Document], config: StuntConfig, amp: Amplifier
) -> list[float]:
    """log r(x) - log p(x) of the learned amplifier at the dev positions `run_amplify` scores
    (same plan), many documents per forward, each document's particles from a stream fixed
    by its number."""
    contexts, positions = plan_positions(lm, dev, config.amplify_config())
    spec = amp.spec

    def doc_noise(d: int) -> torch.Tensor:
        seed = derived_seed(DEV_NOISE_SEED, d, NOISE_DEV_AMPLIFIER)
        return particle_noise(1, len(positions[d]), spec.depth, spec.particles, seed)

    out: list[float] = []
    for block in pack_documents(contexts, positions, DEV_BLOCK):
        x = torch.zeros(block.positions.shape, dtype=torch.long)
        for r, d in enumerate(block.docs):
            ctx = contexts[d]
            x[r] = torch.tensor([ctx[t + 1] for t in block.positions[r].tolist()])
        feats, ro = features(
            lm.model,
            block.ids,
            block.positions,
            spec,
            0,
            want=x[..., None],
            tree_tokens=config.tree_tokens,
            noise=block_noise(block, doc_noise, spec.depth, spec.particles),
        )
        assert ro.want_logp is not None
        logp_x = ro.want_logp[..., 0]
        with torch.no_grad():
            gain = log_r_at(feats, amp(feats), x, logp_x) - logp_x
        for r, (lo, hi) in enumerate(block.spans):
            out.extend(gain[r, : hi - lo].tolist())
    return out


def _se_of(values: Sequence[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1) / n)


CHANGE_KEYS = (
    "dev_ll",
    "gain_0.01",
    "gain_0.1",
    "slope_at_0",
    "particle_gain_0.01",
    "particle_gain_0.1",
    "particle_slope_at_0",
    "amplifier_gain",
    "monitor_gain_0.01",
    "monitor_gain_0.1",
)


def paired_change(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Change of dev LL, gains and slopes between two evaluations, with paired standard errors.

    Both evaluations score the same dev positions, so the per-position differences give the
    standard error of the change (much smaller than that of either mean when positions vary
    more than the change does). None where undefined (one position, a gain of -inf, or a
    form one of the evaluations lacks, such as an amplifier before its first fit).
    """
    a, b = first["per_position"], last["per_position"]

    def per_position(key: str) -> list[float] | None:
        if key == "dev_ll":
            return [y - x for x, y in zip(a["logp"], b["logp"], strict=True)]
        if key == "slope_at_0":
            return [y - x for x, y in zip(a["q_over_p"], b["q_over_p"], strict=True)]
        if key.startswith("monitor_"):
            form = last.get("monitor")
            if form is None or form != first.get("monitor"):
                return None
            key = key.removeprefix("monitor_") if form == "beam" else f"particle_{key[8:]}"
            return per_position(key)
        if key.startswith(("particle_", "amplifier_")):
            name = "particle_q_over_p" if key == "particle_slope_at_0" else key
            xs, ys = a.get(name), b.get(name)
            if xs is None or ys is None or None in xs or None in ys:
                return None
            return [y - x for x, y in zip(xs, ys, strict=True)]
        lam = key.removeprefix("gain_")
        diffs = []
        for pa, aa, pb, ab in zip(
            a["logp"], a[f"log_a_{lam}"], b["logp"], b[f"log_a_{lam}"], strict=True
        ):
            if aa is None or ab is None:
                return None
            diffs.append((ab - pb) - (aa - pa))
        return diffs

    out: dict[str, Any] = {}
    for key in CHANGE_KEYS:
        d = per_position(key)
        out[f"{key}_change"] = math.fsum(d) / len(d) if d else None
        out[f"{key}_change_se"] = _se_of(d) if d else None
    return out


@dataclass
class Snapshot:
    """What a checkpoint saves after a step: live objects, read while the run waits."""

    step: int
    n_rows: int  # rows recorded up to and including this step (and its evaluation)
    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    amplifier: Amplifier | None
    cost: dict[str, float]


@dataclass
class Resume:
    """A run to continue: the rows it recorded up to `step` and its state after that step."""

    step: int
    rows: list[dict[str, Any]]
    model_state: dict[str, torch.Tensor]  # named parameters
    optimiser_state: dict[str, Any]  # torch.optim state_dict
    amplifier_state: dict[str, torch.Tensor] | None
    cost: dict[str, float]


@dataclass
class Hooks:
    """Where a run reports as it goes (a study stores rows and checkpoints with these)."""

    on_row: Callable[[dict[str, Any]], None] | None = None  # each row once it is final
    on_checkpoint: Callable[[Snapshot], None] | None = None
    checkpoint_every: int = 1  # steps; also after every evaluation and the last step


def run_stunt(
    lm: LoadedModel,
    train: Sequence[Document],
    dev: Sequence[Document],
    config: StuntConfig,
    progress: Progress | None = None,
    *,
    windows: torch.Tensor | None = None,
    hooks: Hooks | None = None,
    resume: Resume | None = None,
    first_eval: dict[str, Any] | None = None,
) -> StuntResult:
    """Fine-tune a copy of `lm`'s model with the configured variant, monitoring on `dev`.

    `windows` (from `training_windows`) replaces tokenising `train`; `first_eval` is the
    step-0 evaluation when it is already known (a study computes it once for all runs: it
    depends only on the loaded model and the dev text). `resume` continues a run from the
    state a checkpoint saved: the run then goes on exactly as if it had not stopped (window
    order, particles and amplifier refits are functions of the seed and the step).

    Bad input (too short a text, a window longer than the model takes) raises UserError
    before any update. Ctrl-C stops and returns the rows so far with `interrupted=True`.
    """
    config.validate()
    hooks = hooks or Hooks()
    if lm.kind != "causal":
        raise UserError(f"{lm.name!r} is not a causal LM")
    if config.seq_len + 1 + config.depth > lm.max_length:
        raise UserError(
            f"seq-len + 1 + depth ({config.seq_len + 1 + config.depth}) exceeds what "
            f"{lm.name!r} takes ({lm.max_length} tokens)"
        )
    hf: Any = lm.model  # a transformers PreTrainedModel; its accessors are untyped upstream
    vocab = int(hf.get_output_embeddings().weight.shape[0])
    if config.beams > vocab:
        raise UserError(f"beams ({config.beams}) exceed the vocabulary size ({vocab})")
    if windows is None:
        windows = training_windows(lm, train, config.seq_len)
    n_steps = resolve_steps(config, len(windows))
    torch.manual_seed(config.seed)
    model = copy.deepcopy(lm.model)  # load_model caches: never train the shared copy
    model.eval()  # no dropout: the p being trained is the p the lookahead sees
    view = dataclasses.replace(lm, model=model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    amplifier: Amplifier | None = None
    if config.variant == "adversarial":
        amplifier = new_amplifier(
            config.amplifier_spec(lm), derived_seed(config.seed, 0, NOISE_FIT_INIT)
        )

    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    timing = {"lookahead": 0.0, "update": 0.0, "eval": 0.0, "amplifier": 0.0, "checkpoint": 0.0}
    start = 0
    if resume is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(resume.model_state[name])
        optimiser.load_state_dict(resume.optimiser_state)
        if amplifier is not None and resume.amplifier_state is not None:
            amplifier.load_state_dict(resume.amplifier_state)
        rows = list(resume.rows)
        start = resume.step
        timing.update({k: v for k, v in resume.cost.items() if k in timing})
    latest: dict[str, Any] = {}

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        if hooks.on_row is not None:
            hooks.on_row(row)

    def evaluate(step: int) -> None:
        t0 = time.perf_counter()
        found = evaluate_dev(view, dev, config, amplifier if step > 0 else None)
        timing["eval"] += time.perf_counter() - t0
        check_dev_size(found, config)
        record({"kind": "eval", "step": step, **found})
        latest.update(dev_ll=found["dev_ll"], gain=found["gain_0.1"])

    def checkpoint(step: int) -> None:
        if hooks.on_checkpoint is not None:
            t0 = time.perf_counter()
            hooks.on_checkpoint(Snapshot(step, len(rows), model, optimiser, amplifier, timing))
            timing["checkpoint"] += time.perf_counter() - t0

    if start == 0:
        if first_eval is not None:
            check_dev_size(first_eval, config)
            record({"kind": "eval", "step": 0, **first_eval})
        else:
            evaluate(0)  # before any update; also checks the dev text is long enough
    order = window_order(len(windows), config.seed)
    for _ in range(start * config.rows_per_step):
        next(order)  # the windows the finished steps took
    interrupted = False
    try:
        for step in range(start + 1, n_steps + 1):
            picked = [next(order) for _ in range(config.rows_per_step)]
            batch = windows[picked]
            if amplifier is not None and (step - 1) % config.retrain_every == 0:
                t0 = time.perf_counter()
                fit = refit_amplifier(model, windows, amplifier, config, step)
                timing["amplifier"] += time.perf_counter() - t0
                record({"kind": "amplifier", "step": step, **fit})
            t0 = time.perf_counter()
            amp = step_lookahead(model, batch, config, step, amplifier)
            t1 = time.perf_counter()
            logits = model(input_ids=batch[:, :-1].to(config.device)).logits.float().cpu()
            if config.variant in ZERO_UPDATE_VARIANTS:
                numbers = zero_update_step(model, optimiser, logits, batch[:, 1:], amp)
                loss_value: float | None = numbers.pop("loss")
            else:
                loss, numbers = stunt_loss(
                    logits, batch[:, 1:], amp, config.variant, config.alpha, config.balance_cap
                )
                optimiser.zero_grad(set_to_none=True)
                if loss is not None:
                    loss.backward()
                    optimiser.step()
                loss_value = None if loss is None else float(loss.detach())
            timing["lookahead"] += t1 - t0
            timing["update"] += time.perf_counter() - t1
            record(
                {
                    "kind": "step",
                    "step": step,
                    "windows": picked,
                    "loss": loss_value,
                    "updated": loss_value is not None,
                    **numbers,
                }
            )
            latest.update(nll=numbers["nll"], affected=numbers["affected"])
            evaluated = step % config.eval_every == 0 or step == n_steps
            if evaluated:
                evaluate(step)
            if evaluated or step % hooks.checkpoint_every == 0:
                checkpoint(step)
            if progress is not None:
                progress(step, n_steps, dict(latest))
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - began
    summary = summarise(rows, config, n_steps, len(windows))
    summary["model"] = lm.name
    summary["cost"] = {
        "seconds": seconds,
        **{f"{k}_seconds": v for k, v in timing.items()},
        "steps_this_session": sum(1 for r in rows if r["kind"] == "step") - start,
    }
    return StuntResult(config, summary, rows, interrupted, model, amplifier)


def check_dev_size(found: dict[str, Any], config: StuntConfig) -> None:
    if found["positions"] < config.dev_positions:
        raise UserError(
            f"the dev text gives {found['positions']} positions, fewer than one evaluation "
            f"window (dev-positions {config.dev_positions} at stride {config.dev_stride})"
        )


def step_lookahead(
    model: torch.nn.Module,
    batch: torch.Tensor,
    config: StuntConfig,
    step: int,
    amplifier: Amplifier | None,
) -> Amplified:
    """What the variant stunts against at every position of the step's batch."""
    seed = derived_seed(config.seed, step, NOISE_TRAIN)
    if config.variant == "adversarial":
        assert amplifier is not None
        return amplifier_windows(model, batch, amplifier, seed, config.tree_tokens)
    if config.variant == "particle":
        rows, width = batch.shape
        search: Search = Particles(config.particles, config.beta)
        noise = particle_noise(rows, width - 1, config.depth, config.particles, seed)
        return lookahead_windows(
            model, batch, search, config.depth, noise=noise, tree_tokens=config.tree_tokens
        )
    return lookahead_windows(
        model, batch, Beam(config.beams), config.depth, tree_tokens=config.tree_tokens
    )


def refit_amplifier(
    model: torch.nn.Module,
    windows: torch.Tensor,
    amplifier: Amplifier,
    config: StuntConfig,
    step: int,
) -> dict[str, Any]:
    """Fit the amplifier (warm start) on `amplifier_windows` training windows drawn for this
    step, with the current model's features. Its numbers go into an "amplifier" row."""
    gen = torch.Generator().manual_seed(derived_seed(config.seed, step, NOISE_FIT))
    n = min(config.amplifier_windows, len(windows))
    chosen = windows[torch.randperm(len(windows), generator=gen)[:n]]
    length = chosen.shape[1] - 1
    x = chosen[:, 1:]
    positions = torch.arange(length)[None].expand(n, -1)
    feats, ro = features(
        model,
        chosen[:, :length],
        positions,
        amplifier.spec,
        derived_seed(config.seed, step, NOISE_FIT, 1),
        want=x[..., None],
        tree_tokens=config.tree_tokens,
    )
    assert ro.want_logp is not None
    return fit_amplifier(
        amplifier,
        feats,
        x,
        ro.want_logp[..., 0],
        config.amplifier_steps,
        derived_seed(config.seed, step, NOISE_FIT, 2),
    )


def summarise(
    rows: Sequence[dict[str, Any]], config: StuntConfig, n_steps: int, n_windows: int
) -> dict[str, Any]:
    """First and last evaluation, mean training numbers, share of positions affected."""
    steps = [r for r in rows if r["kind"] == "step"]
    evals = [r for r in rows if r["kind"] == "eval"]

    def mean(key: str) -> float | None:
        vals = [r[key] for r in steps if r.get(key) is not None]
        return math.fsum(vals) / len(vals) if vals else None

    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    changes = paired_change(first, last) if len(evals) > 1 else {}
    tail = steps[-max(1, len(steps) // 4) :] if steps else []
    ends = (
        "dev_ll",
        "gain_0.01",
        "gain_0.1",
        "slope_at_0",
        "particle_gain_0.1",
        "amplifier_gain",
        "monitor_gain_0.1",
    )
    fits = [r for r in rows if r["kind"] == "amplifier"]
    return {
        "variant": config.variant,
        "alpha": config.alpha,
        "stunted_against": STUNTED_AGAINST[config.variant],
        "monitor": MONITOR[config.variant],
        "steps_planned": n_steps,
        "steps_done": len(steps),
        "updates": sum(1 for r in steps if r["updated"]),
        "training_windows": n_windows,
        "tokens_seen": len(steps) * config.rows_per_step * config.seq_len,
        "train_nll_first": steps[0]["nll"] if steps else None,
        "train_nll_last_quarter": (math.fsum(r["nll"] for r in tail) / len(tail)) if tail else None,
        "train_nll_mean": mean("nll"),
        "toward_share": mean("toward"),
        "affected_share": mean("affected"),
        "update_cos_before_mean": mean("update_cos_before"),
        "removed_share_mean": mean("removed_share"),
        "max_abs_update_dot_after": max(
            (abs(r["update_dot_after"]) for r in steps if r.get("update_dot_after") is not None),
            default=None,
        ),
        "amplifier_fits": len(fits),
        "amplifier_heldout_gain_last": fits[-1].get("heldout_gain") if fits else None,
        "evaluations": len(evals),
        **{f"{k}_start": first.get(k) for k in ends},
        **{f"{k}_end": last.get(k) for k in ends},
        "end_step": last.get("step"),
        **changes,
    }


# -- comparing stored runs ---------------------------------------------------------------------


TRAIN_COLUMNS = (
    ("id", "id"),
    ("variant", "variant"),
    ("alpha", "alpha"),
    ("steps_done", "steps"),
    ("updates", "updates"),
    ("train_nll_first", "train NLL first"),
    ("train_nll_last_quarter", "train NLL last 1/4"),
    ("toward_share", "toward"),
    ("affected_share", "affected"),
    ("status", "status"),
)
DEV_COLUMNS = (
    ("id", "id"),
    ("variant", "variant"),
    ("end_step", "at step"),
    ("dev_ll_start", "dev LL start"),
    ("dev_ll_change", "Δ dev LL"),
    ("dev_ll_change_se", "± se"),
    ("gain_0.1_start", "gain .1 start"),
    ("gain_0.1_change", "Δ gain .1"),
    ("gain_0.1_change_se", "± se"),
    ("gain_0.01_change", "Δ gain .01"),
    ("gain_0.01_change_se", "± se"),
    ("slope_at_0_start", "slope start"),
    ("slope_at_0_change", "Δ slope"),
    ("slope_at_0_change_se", "± se"),
)
LOOKAHEAD_COLUMNS = (
    ("id", "id"),
    ("variant", "variant"),
    ("stunted_against", "stunted against"),
    ("monitor", "monitor"),
    ("monitor_gain_0.1_start", "monitor .1 start"),
    ("monitor_gain_0.1_change", "Δ monitor .1"),
    ("monitor_gain_0.1_change_se", "± se"),
    ("particle_gain_0.1_change", "Δ particle .1"),
    ("particle_gain_0.1_change_se", "± se"),
    ("amplifier_gain_end", "amplifier gain end"),
    ("removed_share_mean", "update removed"),
)


def compare_rows(experiments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per stored stunting experiment (as `LogStore.experiment` returns them)."""
    out = []
    for exp in experiments:
        if exp.get("kind") != KIND:
            raise UserError(f"experiment {exp.get('id')} is a {exp.get('kind')!r}, not a stunt run")
        s = exp["summary"]
        row = {key: s.get(key) for key, _ in (*TRAIN_COLUMNS, *DEV_COLUMNS, *LOOKAHEAD_COLUMNS)}
        row["id"] = exp["id"]
        row["status"] = exp["status"]
        if s.get("variant") != "penalty":
            row["alpha"] = None  # alpha only acts in the penalty variant
        if s.get("variant") == "none":
            row["stunted_against"] = "nothing"
        out.append(row)
    return out


def compare_figure(experiments: Sequence[dict[str, Any]]) -> Figure:
    """Over training steps: dev log-likelihood; the gain of each lookahead form (beam at
    λ = 0.1 and 0.01, particle at 0.1, the learned amplifier); the slope at 0; and the dev
    monitor, each run's gain at λ = 0.1 for the form it is not stunted against."""
    if not experiments:
        raise UserError("no stunt experiments to compare")
    fig = Figure(figsize=(18, 8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4)
    panels = [
        (axes[0][0], "dev_ll", "dev mean log-likelihood of p (nats/token)"),
        (axes[0][1], "gain_0.1", "beam gain at λ = 0.1 (nats/token)"),
        (axes[0][2], "particle_gain_0.1", "particle gain at λ = 0.1 (nats/token)"),
        (axes[0][3], "monitor_gain_0.1", "monitor: gain at λ = 0.1 of the form not stunted"),
        (axes[1][0], "gain_0.01", "beam gain at λ = 0.01 (nats/token)"),
        (axes[1][1], "slope_at_0", "beam slope d(mean log a(λ))/dλ at λ = 0"),
        (axes[1][2], "amplifier_gain", "learned amplifier gain log r - log p"),
        (axes[1][3], "particle_gain_0.01", "particle gain at λ = 0.01 (nats/token)"),
    ]
    for exp in experiments:
        evals = [r for r in exp["rows"] if r.get("kind") == "eval"]
        s = exp["summary"]
        label = f"{exp['id']}: {s.get('variant')}"
        if s.get("variant") == "penalty":
            label += f" α={s.get('alpha'):g}"
        if s.get("monitor"):
            label += f" (monitor: {s['monitor']})"
        for ax, key, _ in panels:
            pts = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    for ax, _, title in panels:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax, _, _ in panels[1:]:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    models = sorted({str(e["summary"].get("model")) for e in experiments})
    fig.suptitle(f"stunting: {', '.join(models)}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
    return fig

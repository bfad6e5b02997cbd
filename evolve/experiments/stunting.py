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

from evolve.experiments.amplify import (
    AmplifyConfig,
    Document,
    amplified_distribution,
    iter_positions,
    run_amplify,
)
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel

KIND = "stunt"  # experiment kind in the store
Variant = Literal["none", "skip", "penalty", "balance"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
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
            "`balance_cap`)."
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
        for name in ("seq_len", "beams", "depth", "eval_every", "dev_positions", "dev_stride"):
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

    def amplify_config(self) -> AmplifyConfig:
        """The `evolve amplify` configuration of one dev evaluation."""
        return AmplifyConfig(
            beams=self.beams,
            depth=self.depth,
            lambdas=EVAL_LAMBDAS,
            max_positions=self.dev_positions,
            stride=self.dev_stride,
            unwrap=self.unwrap,
            causal=self.model,
            batch_tokens=TREE_ROWS,
            device=self.device,
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

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "finished"

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "step"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "eval"]


def evaluate_dev(lm: LoadedModel, dev: Sequence[Document], config: StuntConfig) -> dict[str, Any]:
    """One dev evaluation with `run_amplify` on the current weights: LL, gains, slope.

    Also keeps, per dev position, log p, log a(0.01), log a(0.1) and q/p at the real token, so
    that changes between evaluations (always the same positions) get paired standard errors.
    """
    result = run_amplify(lm, dev, config.amplify_config())
    if result.interrupted:
        raise KeyboardInterrupt  # a partial evaluation is not comparable with the others
    s = result.summary
    by_lam = {row["lambda"]: row for row in s["arith"]["by_lambda"]}
    at = {lam: EVAL_LAMBDAS.index(lam) for lam in (0.01, 0.1)}
    return {
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
        "per_position": {
            "logp": [r["logp"] for r in result.rows],
            "log_a_0.01": [r["log_arith"][at[0.01]] for r in result.rows],
            "log_a_0.1": [r["log_arith"][at[0.1]] for r in result.rows],
            "q_over_p": [
                0.0 if r["logq"] is None else math.exp(r["logq"] - r["logp"]) for r in result.rows
            ],
        },
    }


def paired_change(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Change of dev LL, gains and slope between two evaluations, with paired standard errors.

    Both evaluations score the same dev positions, so the per-position differences give the
    standard error of the change (much smaller than that of either mean when positions vary
    more than the change does). None where undefined (one position, or a gain of -inf).
    """
    a, b = first["per_position"], last["per_position"]

    def per_position(key: str) -> list[float] | None:
        if key == "dev_ll":
            return [y - x for x, y in zip(a["logp"], b["logp"], strict=True)]
        if key == "slope_at_0":
            return [y - x for x, y in zip(a["q_over_p"], b["q_over_p"], strict=True)]
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
    for key in ("dev_ll", "gain_0.01", "gain_0.1", "slope_at_0"):
        d = per_position(key)
        mean: float | None = None
        se: float | None = None
        if d:
            n = len(d)
            mean = math.fsum(d) / n
            if n > 1:
                var = math.fsum((x - mean) ** 2 for x in d) / (n - 1)
                se = math.sqrt(var / n)
        out[f"{key}_change"] = mean
        out[f"{key}_change_se"] = se
    return out


def run_stunt(
    lm: LoadedModel,
    train: Sequence[Document],
    dev: Sequence[Document],
    config: StuntConfig,
    progress: Progress | None = None,
) -> StuntResult:
    """Fine-tune a copy of `lm`'s model with the configured variant, monitoring on `dev`.

    Bad input (too short a text, a window longer than the model takes) raises UserError
    before any update. Ctrl-C stops and returns the rows so far with `interrupted=True`.
    """
    config.validate()
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
    windows = training_windows(lm, train, config.seq_len)
    n_steps = resolve_steps(config, len(windows))
    torch.manual_seed(config.seed)
    model = copy.deepcopy(lm.model)  # load_model caches: never train the shared copy
    model.eval()  # no dropout: the p being trained is the p the lookahead sees
    view = dataclasses.replace(lm, model=model)

    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    timing = {"lookahead": 0.0, "update": 0.0, "eval": 0.0}
    latest: dict[str, Any] = {}

    def evaluate(step: int) -> None:
        t0 = time.perf_counter()
        found = evaluate_dev(view, dev, config)
        timing["eval"] += time.perf_counter() - t0
        if step == 0 and found["positions"] < config.dev_positions:
            raise UserError(
                f"the dev text gives {found['positions']} positions, fewer than one evaluation "
                f"window (dev-positions {config.dev_positions} at stride {config.dev_stride})"
            )
        rows.append({"kind": "eval", "step": step, **found})
        latest.update(dev_ll=found["dev_ll"], gain=found["gain_0.1"])

    evaluate(0)  # before any update; also checks the dev text is long enough
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    order = window_order(len(windows), config.seed)
    interrupted = False
    try:
        for step in range(1, n_steps + 1):
            picked = [next(order) for _ in range(config.rows_per_step)]
            batch = windows[picked]
            t0 = time.perf_counter()
            amp = amplify_windows(view, batch, config.beams, config.depth)
            t1 = time.perf_counter()
            logits = model(input_ids=batch[:, :-1].to(config.device)).logits.float().cpu()
            loss, numbers = stunt_loss(
                logits, batch[:, 1:], amp, config.variant, config.alpha, config.balance_cap
            )
            optimiser.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
                optimiser.step()
            timing["lookahead"] += t1 - t0
            timing["update"] += time.perf_counter() - t1
            rows.append(
                {
                    "kind": "step",
                    "step": step,
                    "windows": picked,
                    "loss": None if loss is None else float(loss.detach()),
                    "updated": loss is not None,
                    **numbers,
                }
            )
            latest.update(nll=numbers["nll"], affected=numbers["affected"])
            if step % config.eval_every == 0 or step == n_steps:
                evaluate(step)
            if progress is not None:
                progress(step, n_steps, dict(latest))
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - began
    summary = summarise(rows, config, n_steps, len(windows))
    summary["model"] = lm.name
    summary["cost"] = {"seconds": seconds, **{f"{k}_seconds": v for k, v in timing.items()}}
    return StuntResult(config, summary, rows, interrupted, model)


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
    return {
        "variant": config.variant,
        "alpha": config.alpha,
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
        "evaluations": len(evals),
        **{f"{k}_start": first.get(k) for k in ("dev_ll", "gain_0.01", "gain_0.1", "slope_at_0")},
        **{f"{k}_end": last.get(k) for k in ("dev_ll", "gain_0.01", "gain_0.1", "slope_at_0")},
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


def compare_rows(experiments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per stored stunting experiment (as `LogStore.experiment` returns them)."""
    out = []
    for exp in experiments:
        if exp.get("kind") != KIND:
            raise UserError(f"experiment {exp.get('id')} is a {exp.get('kind')!r}, not a stunt run")
        s = exp["summary"]
        row = {key: s.get(key) for key, _ in (*TRAIN_COLUMNS, *DEV_COLUMNS)}
        row["id"] = exp["id"]
        row["status"] = exp["status"]
        if s.get("variant") != "penalty":
            row["alpha"] = None  # alpha only acts in the penalty variant
        out.append(row)
    return out


def compare_figure(experiments: Sequence[dict[str, Any]]) -> Figure:
    """Dev log-likelihood, lookahead gain (λ = 0.1 and 0.01) and slope at 0 over steps."""
    if not experiments:
        raise UserError("no stunt experiments to compare")
    fig = Figure(figsize=(11, 7.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0][0], "dev_ll", "dev mean log-likelihood of p (nats/token)"),
        (axes[0][1], "gain_0.1", "amplify gain at λ = 0.1 (nats/token)"),
        (axes[1][0], "gain_0.01", "amplify gain at λ = 0.01 (nats/token)"),
        (axes[1][1], "slope_at_0", "slope d(mean log a(λ))/dλ at λ = 0"),
    ]
    for exp in experiments:
        evals = [r for r in exp["rows"] if r.get("kind") == "eval"]
        s = exp["summary"]
        label = f"{exp['id']}: {s.get('variant')}"
        if s.get("variant") == "penalty":
            label += f" α={s.get('alpha'):g}"
        for ax, key, _ in panels:
            pts = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    for ax, _, title in panels:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in (axes[0][1], axes[1][0], axes[1][1]):
        ax.axhline(0.0, color="grey", linewidth=0.8)
    models = sorted({str(e["summary"].get("model")) for e in experiments})
    fig.suptitle(f"stunting: {', '.join(models)}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
    return fig

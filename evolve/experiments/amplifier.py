"""A learned lookahead amplifier: a small head that gets better predictions out of p (issue 23).

Stunting v5 ("adversarial anti-lookahead stunting") needs a *freeform* amplifier: something
trained to predict the real next token better than the naive model p by looking ahead with
it. Design, and why:

- **Output family: p reweighted on a candidate set.** r(v) ∝ p(v)·exp(Δ(v)) where Δ is
  learned on a set C of candidate tokens and 0 elsewhere. r gives every token p's support
  (no token gets probability 0, unlike q of beam search), starts as exactly p (the last layer
  is initialised to zero, so a fresh or badly fit amplifier cannot be worse than p), and
  Δ is bounded (|Δ| < 8) so one candidate cannot take all the mass. log r(x) needs only
  p at the candidates and at x: log Z = log(1 - p(C) + Σ_c p(c)·exp(Δ(c))).
- **Candidates**: p's top `top_k` tokens and the first tokens of `particles` lookahead
  rollouts (`evolve.experiments.lookahead.Particles`, sampled from p and reweighted toward
  p(path)^beta). The rollouts are sampled, not beam-searched, so that a run stunted against
  this amplifier can still be monitored with beam search, a lookahead it never saw.
- **Features per candidate** (all cheap, all computed from one batched lookahead): log p(c);
  the particles' weighted mass on c and their share starting with c; whether any starts
  with c; the best and the mean log-probability of the continuations after c (how
  predictable what follows c is: the signal lookahead has and p lacks); whether c is in p's
  top-k and its rank there; and per position the entropy of p, its largest log-probability
  and the particles' effective sample size. Plus the naive model's last hidden state,
  projected to `hidden_proj` numbers, so that the head can learn *where* lookahead helps.
- **Head**: one hidden layer (`width`, tanh) scoring each candidate from its features and
  the projected hidden state: ~10k parameters for SmolLM2's 576-wide hidden state. Small
  enough to fit in seconds on a few thousand positions, and too small to memorise them.

Fitting maximises the mean log r(x) - log p(x) over positions of training text (full-batch
Adam); a quarter of the positions is held out and the parameters of the best held-out gain
are kept (early stopping); if even those are worse than p on the held-out positions, the
last layer is zeroed (r = p again), so a refit never ends worse than p on held-out text. Checkpoints are a safetensors file of the weights and a JSON file of the spec
(never pickle); loading a missing or malformed checkpoint is a one-line UserError.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evolve.experiments.lookahead import (
    DEFAULT_TREE_TOKENS,
    Particles,
    Rollouts,
    check_particles,
    derived_seed,
    lookahead,
    particle_noise,
)
from scoring.errors import UserError

FORMAT = "mlm-evolve-amplifier"
VERSION = 1
WEIGHTS_FILE = "amplifier.safetensors"
SPEC_FILE = "amplifier.json"
DELTA_MAX = 8.0  # |Δ| bound: r(v)/p(v) stays within e^±8 (about 3000x) relative to Z
N_FEATURES = 11
FIT_LR = 0.01  # Adam on ~10k parameters and fixed features: converges in ~100 steps
HOLDOUT = 0.25  # share of fitting positions held out for early stopping
EVAL_EVERY = 10  # fit iterations between held-out checks


@dataclass(frozen=True)
class AmplifierSpec:
    """The amplifier's shape and the lookahead it reads; stored as JSON beside the weights."""

    hidden_size: int  # the naive model's hidden size
    vocab_size: int
    particles: int = 8
    beta: float = 2.0
    depth: int = 2
    top_k: int = 8
    hidden_proj: int = 16
    width: int = 32
    model: str = ""  # the naive model it was fit on (for the record)

    def validate(self) -> AmplifierSpec:
        for name in ("hidden_size", "vocab_size", "depth", "top_k", "hidden_proj", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"amplifier {name.replace('_', ' ')} must be at least 1")
        check_particles(self.particles, self.beta)
        if self.top_k > self.vocab_size:
            raise UserError(f"amplifier top-k ({self.top_k}) exceeds the vocabulary")
        return self

    @property
    def candidates(self) -> int:
        return self.top_k + self.particles

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> AmplifierSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not set(data) <= names:
            raise UserError("the amplifier spec is not an object of the known fields")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise UserError(f"the amplifier spec is incomplete ({exc})") from exc


@dataclass(frozen=True)
class Features:
    """Candidates and their features at R×P positions (module docstring)."""

    cand: torch.Tensor  # [R, P, C] long
    valid: torch.Tensor  # [R, P, C] bool: first occurrence of a token among the candidates
    x: torch.Tensor  # [R, P, C, N_FEATURES] float32
    logp_c: torch.Tensor  # [R, P, C] float64 log p of each candidate
    hidden: torch.Tensor  # [R, P, H] float32

    def _parts(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def flat(self) -> Features:
        """The same positions as one row [1, R·P, ...]."""
        return Features(*(t.reshape(1, -1, *t.shape[2:]) for t in self._parts()))

    def take(self, idx: torch.Tensor) -> Features:
        """Positions idx of a flat (one-row) Features."""
        return Features(*(t[:, idx] for t in self._parts()))


def candidate_features(ro: Rollouts, depth: int) -> Features:
    """Features of the top-k and particle candidates from one lookahead (module docstring)."""
    if ro.hidden is None:
        raise ValueError("the lookahead was run without hidden states")
    top_k = ro.top_ids.shape[-1]
    n = ro.first.shape[-1]
    cand = torch.cat([ro.top_ids, ro.first], dim=-1)  # [R, P, C]
    logp_c = torch.cat([ro.top_logp, ro.first_logp], dim=-1)
    same = cand[..., :, None] == cand[..., None, :]  # [R, P, C, C]
    earlier = torch.ones(same.shape[-1], same.shape[-1], dtype=torch.bool).tril(-1)
    valid = ~(same & earlier).any(-1)
    starts = same[..., top_k:].double()  # [R, P, C, N]: particle i starts with candidate c
    mass = (starts * ro.weight[..., None, :]).sum(-1)
    share = starts.sum(-1) / n
    cont = (ro.path_logp - ro.first_logp)[..., None, :].expand_as(starts)  # continuation logp
    has = share > 0
    best = torch.where(starts > 0, cont, -math.inf).amax(-1)
    mean_cont = (starts * cont).sum(-1) / starts.sum(-1).clamp(min=1)
    rank = torch.arange(cand.shape[-1], dtype=torch.float64)
    in_top = rank < top_k
    ctx_entropy = ro.entropy[..., None].expand_as(mass)
    ctx_max = ro.top_logp[..., :1].expand_as(mass) if top_k else torch.zeros_like(mass)
    ctx_ess = (ro.ess() / n)[..., None].expand_as(mass)
    scale = 10.0 * depth  # continuation log-probabilities grow with depth
    x = torch.stack(
        [
            logp_c.clamp(min=-30.0) / 10.0,
            mass,
            share,
            has.double(),
            torch.where(has, best, 0.0) / scale,
            torch.where(has, mean_cont, 0.0) / scale,
            in_top.double().expand_as(mass),
            torch.where(in_top, rank / max(1, top_k), 1.0).expand_as(mass),
            ctx_entropy / 5.0,
            ctx_max.clamp(min=-30.0) / 10.0,
            ctx_ess,
        ],
        dim=-1,
    ).float()
    return Features(cand=cand, valid=valid, x=x, logp_c=logp_c, hidden=ro.hidden.float())


def features(
    model: torch.nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    spec: AmplifierSpec,
    seed: int,
    *,
    want: torch.Tensor | None = None,
    full: bool = False,
    tree_tokens: int = DEFAULT_TREE_TOKENS,
    noise: torch.Tensor | None = None,
) -> tuple[Features, Rollouts]:
    """Run the amplifier's lookahead at the prefixes ids[r, : positions[r, j] + 1]; its
    particles from `seed`, or from `noise` when given (`particle_noise`'s shape)."""
    rows, n_pos = positions.shape
    if noise is None:
        noise = particle_noise(rows, n_pos, spec.depth, spec.particles, seed)
    ro = lookahead(
        model,
        ids,
        positions,
        Particles(spec.particles, spec.beta),
        spec.depth,
        noise=noise,
        want=want,
        top_k=spec.top_k,
        hidden=True,
        full=full,
        tree_tokens=tree_tokens,
    )
    return candidate_features(ro, spec.depth), ro


class Amplifier(torch.nn.Module):
    """The head: Δ(c) for each candidate c from its features and the projected hidden state."""

    def __init__(self, spec: AmplifierSpec) -> None:
        super().__init__()
        self.spec = spec.validate()
        self.proj = torch.nn.Linear(spec.hidden_size, spec.hidden_proj)
        self.inner = torch.nn.Linear(N_FEATURES + spec.hidden_proj, spec.width)
        self.out = torch.nn.Linear(spec.width, 1)
        torch.nn.init.zeros_(self.out.weight)  # Δ = 0 at the start: r is exactly p
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, feats: Features) -> torch.Tensor:  # noqa: D102 - see class docstring
        ctx = self.proj(feats.hidden)[..., None, :].expand(*feats.x.shape[:-1], -1)
        raw = self.out(torch.tanh(self.inner(torch.cat([feats.x, ctx], dim=-1)))).squeeze(-1)
        delta = DELTA_MAX * torch.tanh(raw / DELTA_MAX)
        return delta.double() * feats.valid


def new_amplifier(spec: AmplifierSpec, seed: int) -> Amplifier:
    """A fresh amplifier whose initial weights come from `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Amplifier(spec)


def log_z(feats: Features, delta: torch.Tensor) -> torch.Tensor:
    """log Σ_v p(v)·exp(Δ(v)) [R, P] from the candidates alone (Δ = 0 off the candidates)."""
    logp = torch.where(feats.valid, feats.logp_c, -math.inf)
    rest = torch.log1p(-logp.exp().sum(-1).clamp(max=1.0))  # log p(V \\ C)
    return torch.logsumexp(torch.cat([rest[..., None], logp + delta], dim=-1), dim=-1)


def log_r_at(
    feats: Features, delta: torch.Tensor, x: torch.Tensor, logp_x: torch.Tensor
) -> torch.Tensor:
    """log r(x) [R, P] at tokens x [R, P] whose log p is logp_x."""
    hit = (feats.cand == x[..., None]) & feats.valid
    return logp_x + (delta * hit).sum(-1) - log_z(feats, delta)


def dense_log_r(feats: Features, delta: torch.Tensor, full_logp: torch.Tensor) -> torch.Tensor:
    """log r over the whole vocabulary [R, P, V], normalised exactly over it."""
    v = full_logp.scatter_add(-1, feats.cand, delta * feats.valid)
    return v - torch.logsumexp(v, dim=-1, keepdim=True)


def fit_amplifier(
    amp: Amplifier,
    feats: Features,
    x: torch.Tensor,
    logp_x: torch.Tensor,
    steps: int,
    seed: int,
) -> dict[str, Any]:
    """Fit `amp` in place to maximise mean log r(x) - log p(x); early-stopped on held-out.

    `feats`, `x` and `logp_x` cover the fitting positions ([R, P] each). Returns the gains
    (nats/token) on the fitted and the held-out positions at the kept iteration.
    """
    flat = feats.flat()
    x, logp_x = x.reshape(1, -1), logp_x.reshape(1, -1)
    n = x.shape[1]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_out = max(1, int(n * HOLDOUT)) if n > 1 else 0
    held, fit = perm[:n_out], perm[n_out:] if n > 1 else perm
    f_fit, f_held = flat.take(fit), flat.take(held)

    def gain(f: Features, idx: torch.Tensor) -> torch.Tensor:
        return (log_r_at(f, amp(f), x[:, idx], logp_x[:, idx]) - logp_x[:, idx]).mean()

    opt = torch.optim.Adam(amp.parameters(), lr=FIT_LR)
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    for it in range(steps + 1):
        if n_out and (it % EVAL_EVERY == 0 or it == steps):
            with torch.no_grad():
                held_gain = float(gain(f_held, held))
            if best is None or held_gain > best[0]:
                best = (held_gain, {k: v.clone() for k, v in amp.state_dict().items()}, it)
        if it == steps:
            break
        opt.zero_grad(set_to_none=True)
        (-gain(f_fit, fit)).backward()
        opt.step()
    reset = False
    if best is not None:
        amp.load_state_dict(best[1])
        if best[0] < 0:  # worse than p itself on held-out text: fall back to r = p
            with torch.no_grad():
                amp.out.weight.zero_()
                amp.out.bias.zero_()
            best, reset = (0.0, best[1], best[2]), True
    with torch.no_grad():
        fit_gain = float(gain(f_fit, fit))
    return {
        "positions": n,
        "heldout_positions": n_out,
        "fit_gain": fit_gain,
        "heldout_gain": None if best is None else best[0],
        "best_iteration": steps if best is None else best[2],
        "reset": reset,
    }


# -- checkpoints ---------------------------------------------------------------------------------


def save_amplifier(amp: Amplifier, folder: Path, record: dict[str, Any] | None = None) -> None:
    """Write the weights (safetensors) and the spec plus `record` (JSON) into `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous() for k, v in amp.state_dict().items()}, folder / WEIGHTS_FILE
    )
    meta = {"format": FORMAT, "version": VERSION, "spec": amp.spec.to_dict(), **(record or {})}
    (folder / SPEC_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_amplifier(folder: str | Path) -> Amplifier:
    """The amplifier saved in `folder`; UserError (one line) if it is missing or malformed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise UserError(f"no amplifier checkpoint at {folder} (not a folder)")
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise UserError(f"no amplifier checkpoint at {folder}: {path.name} is missing")
    try:
        meta = json.loads(spec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{spec_path} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{spec_path} is not an mlm-evolve amplifier spec")
    if meta.get("version") != VERSION:
        raise UserError(f"{spec_path} has version {meta.get('version')}; this code reads {VERSION}")
    amp = Amplifier(AmplifierSpec.from_dict(meta.get("spec")))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights_path} is not a readable safetensors file ({exc})") from exc
    want = {k: tuple(v.shape) for k, v in amp.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        raise UserError(f"{weights_path} does not hold the weights its spec describes")
    amp.load_state_dict(state)
    return amp.eval()


def check_fits(amp: Amplifier, model: torch.nn.Module) -> None:
    """UserError unless the amplifier was made for a model of this hidden size and vocabulary."""
    hf: Any = model
    hidden = int(getattr(hf.config, "hidden_size", 0) or getattr(hf.config, "n_embd", 0))
    vocab = int(hf.get_output_embeddings().weight.shape[0])
    spec = amp.spec
    if (spec.hidden_size, spec.vocab_size) != (hidden, vocab):
        raise UserError(
            f"the amplifier was fit on a model with hidden size {spec.hidden_size} and "
            f"{spec.vocab_size} tokens; this one has {hidden} and {vocab}"
        )


def learned_next(model: torch.nn.Module, amp: Amplifier, seed: int) -> Any:
    """log r after a context (`evolve.experiments.amplify.NextLogprobs`); step s of a sample
    draws its particles from a stream seeded by (seed, s)."""
    check_fits(amp, model)

    def next_logprobs(ids: Any, step: int) -> torch.Tensor:
        feats, ro = features(
            model,
            torch.tensor([list(ids)]),
            torch.tensor([[len(ids) - 1]]),
            amp.spec,
            derived_seed(seed, step),
            full=True,
        )
        assert ro.full_logp is not None
        with torch.no_grad():
            return dense_log_r(feats, amp(feats), ro.full_logp)[0, 0]

    return next_logprobs

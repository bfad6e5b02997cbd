"""Run configuration: frozen dataclasses, validated in one place, stored with every run.

Each default carries a comment on why it is what it is. `RunConfig.to_dict()` is what the
store keeps (as JSON) so a run can be reproduced or resumed from its own record, and
`RunConfig.from_dict()` reads it back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, DEFAULT_MLM

ALGORITHMS = ("simple", "mu_plus_lambda")
FILL_ORDERS = ("l2r", "parallel")
CX_POINTS = ("one", "two", "random")
PLL_VARIANTS = ("original", "word_l2r")
NORMALISATIONS = ("mean", "total")
PROPOSERS = ("mlm", "causal")
OBJECTIVES = ("pll", "causal", "sum", "nsga2")
INITS = ("auto", "seed", "mlm", "beam", "greedy", "sample")
BASELINE_INITS = ("beam", "greedy", "sample")  # starts made by decoding with the causal LM


class ConfigError(UserError):
    """An option value that cannot make a valid run."""


@dataclass(frozen=True)
class MutationConfig:
    max_span: int = 3  # 1-3 token spans: short enough that the MLM refills them coherently
    indel_prob: float = 0.2  # share of mutations that insert or delete one token (length moves)
    temperature: float = 1.0  # sample from the MLM's own distribution; 0 = greedy
    top_k: int = 50  # cut the long tail of rare subwords that a small MLM spreads mass over
    order: str = "l2r"  # fill multi-token spans left to right: each token sees its neighbours
    candidates: int = 8  # causal proposer: fills sampled per span, the likeliest text kept


@dataclass(frozen=True)
class CrossoverConfig:
    points: str = "random"  # one- or two-point, chosen per mating
    seam: int = 1  # tokens re-masked on each side of a cut to repair the join


@dataclass(frozen=True)
class FitnessConfig:
    """What is maximised. ``pll``: MLM pseudo-log-likelihood; ``causal``: causal-LM
    log p(continuation | prompt); ``sum``: ``pll_weight * pll + causal_weight * causal``;
    ``nsga2``: Pareto selection over (pll, causal, diversity). `normalise` and `length_bonus`
    turn each model score into a value the same way (per token, or total plus a prior)."""

    objective: str = "pll"  # pseudo-log-likelihood under the MLM (Salazar et al. 2020)
    variant: str = "original"  # or word_l2r (Kauf & Ivanova 2023), fairer to multi-piece words
    normalise: str = "mean"  # per-token score: a total would reward shrinking the text
    length_bonus: float = 0.0  # nats per token added to a total score (a length prior)
    bf16: bool = False  # exact fp32 by default; bf16 is ~2x faster but shifts scores
    pll_weight: float = 1.0  # sum/nsga2: weight of the PLL value (nsga2: only for reporting)
    causal_weight: float = 1.0  # sum/nsga2: weight of the causal value; both per token: ~1:1

    @property
    def uses_pll(self) -> bool:
        return self.objective in ("pll", "sum", "nsga2")

    @property
    def uses_causal(self) -> bool:
        return self.objective in ("causal", "sum", "nsga2")


@dataclass(frozen=True)
class RunConfig:
    prompt: str
    seed_texts: tuple[str, ...] = ()  # user-given starting continuations (init "seed")
    population: int = 16  # enough diversity for tournaments, small enough for 2 CPU cores
    generations: int = 10
    algorithm: str = "simple"  # DEAP eaSimple-style; or mu_plus_lambda
    offspring: int = 0  # lambda for mu_plus_lambda; 0 = same as population
    cxpb: float = 0.5  # DEAP's customary crossover probability
    mutpb: float = 0.8  # high: span refills are the main search move
    tournament: int = 3  # tournament size; 3 is DEAP's usual mild selection pressure
    elites: int = 1  # best individuals copied unchanged: best fitness never decreases
    patience: int = 0  # stop after this many generations without improvement; 0 = never
    min_tol: float = 1e-6  # smallest gain in best fitness that counts as improvement
    dedupe: bool = True  # re-mutate offspring identical to another member of the population
    init_len: int = 12  # continuation length (MLM tokens) of sampled initial texts
    min_len: int = 4  # continuation length bounds for insertion/deletion and crossover
    max_len: int = 32
    mlm: str = DEFAULT_MLM  # offline preset; any hub name or local folder works too
    causal: str = DEFAULT_CAUSAL  # judge/baseline model; also proposer/fitness when asked for
    proposer: str = "mlm"  # who refills spans: the MLM, or the causal LM (sample K, keep best)
    init: str = "auto"  # auto: seed texts if given, else the proposer's own samples
    seed: int = 0  # drives python, numpy and torch
    mh: bool = False  # Metropolis-Hastings acceptance of mutations (Goyal et al. 2022)
    device: str = "cpu"
    mutation: MutationConfig = field(default_factory=MutationConfig)
    crossover: CrossoverConfig = field(default_factory=CrossoverConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)

    def validate(self) -> RunConfig:
        """Check every option once; raise ConfigError with a one-line message. Returns self."""
        _require(bool(self.prompt and self.prompt.strip()), "the prompt is empty")
        _require(self.population >= 2, f"population must be at least 2 (got {self.population})")
        _require(self.generations >= 1, f"generations must be at least 1 (got {self.generations})")
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _require(self.offspring >= 0, "offspring must be >= 0")
        for name in ("cxpb", "mutpb", "mutation.indel_prob"):
            value = _get(self, name)
            _require(0.0 <= value <= 1.0, f"{name} must be within [0, 1] (got {value})")
        if self.algorithm == "mu_plus_lambda":
            _require(self.cxpb + self.mutpb <= 1.0, "mu_plus_lambda needs cxpb + mutpb <= 1")
        _require(self.tournament >= 1, "tournament size must be at least 1")
        _require(0 <= self.elites < self.population, "elites must be in [0, population)")
        _require(self.patience >= 0, "patience must be >= 0")
        _require(1 <= self.min_len <= self.max_len, "need 1 <= min_len <= max_len")
        _require(
            self.min_len <= self.init_len <= self.max_len,
            f"init_len {self.init_len} must lie within [min_len {self.min_len}, "
            f"max_len {self.max_len}]",
        )
        m = self.mutation
        _require(m.max_span >= 1, "max_span must be at least 1")
        _require(
            m.max_span <= self.max_len,
            f"max_span {m.max_span} is larger than the longest continuation ({self.max_len})",
        )
        _require(m.temperature >= 0 and math.isfinite(m.temperature), "temperature must be >= 0")
        _require(m.top_k >= 0, "top_k must be >= 0 (0 = no cut)")
        _choice("fill order", m.order, FILL_ORDERS)
        _require(m.candidates >= 1, f"candidates must be at least 1 (got {m.candidates})")
        _choice("crossover points", self.crossover.points, CX_POINTS)
        _require(self.crossover.seam >= 0, "seam must be >= 0")
        f = self.fitness
        _choice("fitness objective", f.objective, OBJECTIVES)
        _choice("PLL variant", f.variant, PLL_VARIANTS)
        _choice("normalisation", f.normalise, NORMALISATIONS)
        _require(math.isfinite(f.length_bonus), "length_bonus must be finite")
        for name in ("pll_weight", "causal_weight"):
            value = getattr(f, name)
            _require(math.isfinite(value) and value >= 0, f"{name} must be >= 0 (got {value})")
        if f.objective == "sum":
            _require(
                f.pll_weight + f.causal_weight > 0,
                "fitness sum needs a positive pll_weight or causal_weight",
            )
        _choice("proposer", self.proposer, PROPOSERS)
        _choice("init", self.init, INITS)
        for text in self.seed_texts:
            _require(bool(text.strip()), "a seed text is empty")
        self._validate_combinations()
        return self

    def _validate_combinations(self) -> None:
        """Options that are valid alone but not together."""
        f = self.fitness
        if self.mh:
            _require(
                self.proposer == "mlm",
                "Metropolis-Hastings needs the proposal probability, which only the MLM "
                "proposer gives (use --proposer mlm or drop --mh)",
            )
            _require(
                f.objective != "nsga2", "Metropolis-Hastings needs a single fitness, not nsga2"
            )
        if f.objective == "nsga2":
            _require(
                self.algorithm == "simple",
                "nsga2 chooses survivors from parents + offspring itself; "
                "drop --algorithm mu_plus_lambda",
            )
        if self.seed_texts:
            _require(
                self.init in ("auto", "seed"),
                f"seed texts were given but init is {self.init!r}; use --init seed",
            )
        else:
            _require(self.init != "seed", "init 'seed' needs at least one seed text")
        _require(
            not (self.init == "mlm" and self.proposer != "mlm"),
            "init 'mlm' fills with the MLM proposer; with --proposer causal use --init sample, "
            "greedy or beam",
        )

    @property
    def representation(self) -> str:
        """Whose tokens individuals are made of: the proposer's (scorers of the other model
        read them through text, see evolve.ga.representation)."""
        return self.proposer

    @property
    def start(self) -> str:
        """The init method `auto` stands for."""
        if self.init != "auto":
            return self.init
        if self.seed_texts:
            return "seed"
        return "mlm" if self.proposer == "mlm" else "sample"

    @property
    def uses_mlm(self) -> bool:
        """Whether the run loads the masked LM (proposer, fitness or init)."""
        return self.proposer == "mlm" or self.fitness.uses_pll

    @property
    def uses_causal(self) -> bool:
        """Whether the run loads the causal LM (proposer, fitness or a baseline init)."""
        return self.proposer == "causal" or self.fitness.uses_causal or self.start in BASELINE_INITS

    @property
    def n_offspring(self) -> int:
        return self.offspring or self.population

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["seed_texts"] = tuple(data.get("seed_texts", ()))
        data["mutation"] = MutationConfig(**data.get("mutation", {}))
        data["crossover"] = CrossoverConfig(**data.get("crossover", {}))
        data["fitness"] = FitnessConfig(**data.get("fitness", {}))
        return cls(**data)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"unknown {what} {value!r}; choose from {', '.join(allowed)}")

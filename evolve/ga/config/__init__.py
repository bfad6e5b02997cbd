"""Run configuration: frozen dataclasses, validated in one place, stored with every run.

Each field carries its help in `metadata["help"]`: what it sets and why its default is what it
is. `evolve run` builds its options from these fields (cli/options.py), so each help text and
each default is written once, here. The allowed values of a choice are a `Literal` type, and
the tuples that validation and the CLI use are derived from it with `typing.get_args` (the
fitness kinds' from their registry, `evolve.ga.fitness`).

`RunConfig.to_dict()` is what the store keeps (as JSON) so a run can be reproduced or resumed
from its own record, and `RunConfig.from_dict()` reads it back, refusing keys it does not know.

This module holds `RunConfig` (the run's own options and `validate`, which checks them all);
its parts are modules of their own: `variation` (mutation, crossover), `fitness` (what is
maximised), `scale` (workers, islands) and `checks` (the error, the shared checks, reading a
stored config back, available memory). Every name is importable from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from evolve.ga.config.checks import (
    INT64_MAX,
    ConfigError,
    at_most,
    available_memory,
    build,
    check_types,
    choice,
    get_dotted,
    require,
    size_text,
)
from evolve.ga.config.fitness import (
    NORMALISATIONS,
    OBJECTIVES,
    TYPICAL_MODELS,
    FitnessConfig,
    Normalisation,
    Objective,
    TypicalModel,
)
from evolve.ga.config.scale import IslandConfig, WorkersConfig
from evolve.ga.config.variation import (
    CX_POINTS,
    FILL_ORDERS,
    PROPOSER_DTYPES,
    CrossoverConfig,
    MutationConfig,
    ProposerDtype,
)
from evolve.ga.proposers.sampling import SamplingPolicy
from scoring.devices import check_device
from scoring.models import DEFAULT_CAUSAL, DEFAULT_MLM
from scoring.names import PLL_VARIANTS

Algorithm = Literal["simple", "mu_plus_lambda"]
ProposerKind = Literal["mlm", "causal"]
BaselineInit = Literal["beam", "greedy", "sample"]  # starts made by decoding with the causal LM
Init = Literal["auto", "seed", "mlm", BaselineInit]

ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
PROPOSERS: tuple[ProposerKind, ...] = get_args(ProposerKind)
BASELINE_INITS: tuple[BaselineInit, ...] = get_args(BaselineInit)
INITS: tuple[Init, ...] = get_args(Init)  # a nested Literal is flattened

# Upper bounds, checked before a run exists. Without them `-p 1000000000` built individuals
# for 45 s until 4 GB were gone and left a run row behind, and a seed of 2**64 ended in an
# OverflowError when the run was stored. (INT64_MAX: `checks`.)
MAX_POPULATION = 100_000  # also for offspring; one generation of that many PLL scorings takes
# hours on a CPU already, and the memory check below refuses less where memory is short
MAX_GENERATIONS = 1_000_000  # a row per generation; at 1 s each, 11 days
MAX_LEN = 4096  # tokens; 8x the 512-token window of BERT-family MLMs, and PLL of a text of n
# tokens costs n forward passes of n tokens
MAX_WORKERS = 4096  # Ray actors; more than any cluster a run of this tool would get
MAX_CANDIDATES = 1024  # causal proposer: fills sampled per span, all in one batch
# Sampling temperature (0 = greedy). Outside these, fp32 sampling is already argmax (logit
# gaps are multiplied by 100 and more) or uniform (gaps of ~20 nats shrink below 0.2), and at
# the extremes the logits overflow: 1e300 ended in a traceback and a failed run.
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.01, 100.0
# Memory of one individual: tracemalloc of 5,000 Individuals with fitness, origin and one
# stored TokenScores at 8, 128 and 512 tokens gave 1,937, 10,577 and 38,225 bytes, i.e.
# ~1,400 bytes plus ~72 per token (CPython 3.12).
INDIVIDUAL_BYTES, TOKEN_BYTES = 1_400, 72
MEMORY_SHARE = 0.5  # of the available memory the population may take; models and scores need
# the rest


# Variation rates per algorithm, used where the user gave none (`RunConfig.for_algorithm`).
# simple (DEAP's varAnd) applies crossover and mutation independently, so they may sum past
# 1; mu_plus_lambda (DEAP's varOr) makes each child by exactly one of crossover, mutation or
# copy, so cxpb + mutpb must stay <= 1. There, a copy is wasted (its parent survives anyway),
# so the rates sum to 1: mutation keeps its 0.8 (span refills are the main search move) and
# crossover takes the rest.
ALGORITHM_RATES: dict[str, tuple[float, float]] = {
    "simple": (0.5, 0.8),
    "mu_plus_lambda": (0.2, 0.8),
}


@dataclass(frozen=True)
class RunConfig:
    prompt: str = field(metadata={"help": "Fixed prompt prefix that every text continues."})
    seed_texts: tuple[str, ...] = field(
        default=(), metadata={"help": "User-given starting continuations (init seed)."}
    )
    population: int = field(
        default=16,
        metadata={
            "help": "Individuals per generation: enough diversity for tournaments, small "
            "enough for 2 CPU cores."
        },
    )
    generations: int = field(
        default=10, metadata={"help": "Generations to evolve after generation 0."}
    )
    algorithm: Algorithm = field(
        default="simple",
        metadata={"help": "DEAP eaSimple-style generations, or mu_plus_lambda."},
    )
    offspring: int = field(
        default=0, metadata={"help": "Lambda for mu_plus_lambda; 0 = same as population."}
    )
    cxpb: float = field(
        default=ALGORITHM_RATES["simple"][0],
        metadata={
            "help": "Crossover probability; 0.5 is DEAP's customary one (mu_plus_lambda: 0.2, "
            "as each child there is one of crossover, mutation or a copy)."
        },
    )
    mutpb: float = field(
        default=ALGORITHM_RATES["simple"][1],
        metadata={"help": "Mutation probability; high, as span refills are the main search move."},
    )
    tournament: int = field(
        default=3,
        metadata={"help": "Tournament size; 3 is DEAP's usual mild selection pressure."},
    )
    elites: int = field(
        default=1,
        metadata={"help": "Best individuals copied unchanged, so best fitness never decreases."},
    )
    patience: int = field(
        default=0,
        metadata={"help": "Stop after this many generations without improvement; 0 = never."},
    )
    min_tol: float = field(
        default=1e-6,
        metadata={"help": "Smallest gain in best fitness that counts as an improvement."},
    )
    dedupe: bool = field(
        default=True,
        metadata={"help": "Re-mutate offspring identical to another member of the population."},
    )
    init_len: int = field(
        default=12,
        metadata={"help": "Continuation length (proposer tokens) of sampled initial texts."},
    )
    min_len: int = field(
        default=4,
        metadata={"help": "Shortest continuation that insertion/deletion and crossover allow."},
    )
    max_len: int = field(
        default=32,
        metadata={"help": "Longest continuation that insertion/deletion and crossover allow."},
    )
    mlm: str = field(
        default=DEFAULT_MLM,
        metadata={"help": "Masked LM: an offline preset; any hub name or local folder works too."},
    )
    causal: str = field(
        default=DEFAULT_CAUSAL,
        metadata={
            "help": "Causal LM: the judge and baselines; also proposer/fitness when asked for."
        },
    )
    proposer: ProposerKind = field(
        default="mlm",
        metadata={
            "help": "Who refills spans: the MLM, or the causal LM (samples `candidates` fills, "
            "keeps the likeliest text). Individuals are in the proposer's tokens."
        },
    )
    init: Init = field(
        default="auto",
        metadata={
            "help": "Generation 0: seed texts, MLM fills, or the causal LM's beam search (one "
            "beam per member), greedy or sampled decoding of `init_len` tokens. auto: seed "
            "texts if given, else the proposer's own samples."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "The one seed that drives python, numpy and torch."}
    )
    mh: bool = field(
        default=False,
        metadata={"help": "Metropolis-Hastings acceptance of mutations (Goyal et al. 2022)."},
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "Torch device of the models: auto (CUDA when available, else cpu), cpu, "
            "cuda, cuda:N or mps."
        },
    )
    mutation: MutationConfig = field(
        default_factory=MutationConfig, metadata={"help": "Span mutation settings."}
    )
    crossover: CrossoverConfig = field(
        default_factory=CrossoverConfig, metadata={"help": "Crossover settings."}
    )
    fitness: FitnessConfig = field(
        default_factory=FitnessConfig, metadata={"help": "What is maximised, and how."}
    )
    workers: WorkersConfig = field(
        default_factory=WorkersConfig, metadata={"help": "Ray workers (scale-out)."}
    )
    island: IslandConfig = field(
        default_factory=IslandConfig, metadata={"help": "Island populations."}
    )

    def validate(self, *, here: bool = True) -> RunConfig:
        """Check every option once; raise ConfigError with a one-line message. Returns self.

        With `here` (the default) it also checks what depends on this machine: that the
        device exists and that the population fits in the available memory. `evolve runs`
        passes False to ask only whether this version can read a stored config.
        """
        require(bool(self.prompt and self.prompt.strip()), "the prompt is empty")
        check_types(self)
        require(self.population >= 2, f"population must be at least 2 (got {self.population})")
        at_most("population", self.population, MAX_POPULATION)
        require(self.generations >= 1, f"generations must be at least 1 (got {self.generations})")
        at_most("generations", self.generations, MAX_GENERATIONS)
        choice("algorithm", self.algorithm, ALGORITHMS)
        require(self.offspring >= 0, "offspring must be >= 0")
        at_most("offspring", self.offspring, MAX_POPULATION)
        require(0 <= self.seed <= INT64_MAX, f"seed must be within [0, 2**63-1] (got {self.seed})")
        for name in ("cxpb", "mutpb", "mutation.indel_prob"):
            value = get_dotted(self, name)
            require(0.0 <= value <= 1.0, f"{name} must be within [0, 1] (got {value})")
        if self.algorithm == "mu_plus_lambda":
            require(
                self.cxpb + self.mutpb <= 1.0,
                f"mu_plus_lambda makes each child by one of crossover or mutation, so it needs "
                f"cxpb + mutpb <= 1 (got {self.cxpb:g} + {self.mutpb:g}; its defaults are "
                f"{ALGORITHM_RATES['mu_plus_lambda'][0]:g} + {ALGORITHM_RATES['mu_plus_lambda'][1]:g})",
            )
        require(self.tournament >= 1, "tournament size must be at least 1")
        require(0 <= self.elites < self.population, "elites must be in [0, population)")
        require(self.patience >= 0, "patience must be >= 0")
        require(
            math.isfinite(self.min_tol) and self.min_tol >= 0,
            f"min_tol must be a finite number >= 0 (got {self.min_tol})",
        )
        require(1 <= self.min_len <= self.max_len, "need 1 <= min_len <= max_len")
        at_most("max_len", self.max_len, MAX_LEN)
        require(
            self.min_len <= self.init_len <= self.max_len,
            f"init_len {self.init_len} must lie within [min_len {self.min_len}, "
            f"max_len {self.max_len}]",
        )
        m = self.mutation
        require(m.max_span >= 1, "max_span must be at least 1")
        require(
            m.max_span <= self.max_len,
            f"max_span {m.max_span} is larger than the longest continuation ({self.max_len})",
        )
        require(
            m.temperature == 0 or TEMPERATURE_MIN <= m.temperature <= TEMPERATURE_MAX,
            f"temperature must be 0 (greedy) or within [{TEMPERATURE_MIN:g}, "
            f"{TEMPERATURE_MAX:g}] (got {m.temperature:g})",
        )
        SamplingPolicy.validate(m.temperature, m.top_k)  # the rule every sampler shares
        choice("fill order", m.order, FILL_ORDERS)
        require(
            m.no_repeat_ngram >= 0,
            f"no_repeat_ngram must be at least 1, or 0 for off (got {m.no_repeat_ngram})",
        )
        for token in m.ban_tokens:
            require(bool(token.strip()), "a ban token is empty")
        require(m.candidates >= 1, f"candidates must be at least 1 (got {m.candidates})")
        at_most("candidates", m.candidates, MAX_CANDIDATES)
        choice("proposer dtype", m.proposer_dtype, PROPOSER_DTYPES)
        choice("crossover points", self.crossover.points, CX_POINTS)
        require(self.crossover.seam >= 0, "seam must be >= 0")
        at_most("seam", self.crossover.seam, self.max_len)
        self.fitness.check()
        choice("proposer", self.proposer, PROPOSERS)
        choice("init", self.init, INITS)
        for text in self.seed_texts:
            require(bool(text.strip()), "a seed text is empty")
        self._validate_combinations()
        self._validate_scale()
        if here:
            check_device(self.device)
            self._check_memory()
            object.__setattr__(self, "_checked_here", True)  # not a field: eq and to_dict skip it
        return self

    def validated(self) -> RunConfig:
        """Self, validated unless this very object already was (with `here`): a config
        passes through the CLI, the API and the engine, and is checked once on its way.
        `dataclasses.replace` makes a new object, which is checked again."""
        if not self.__dict__.get("_checked_here", False):
            self.validate()
        return self

    def memory_estimate(self) -> int:
        """Bytes the individuals of one generation take at most: parents and offspring,
        twice (variation works on clones), at the longest allowed length."""
        alive = 2 * (self.population + self.n_offspring)
        return alive * (INDIVIDUAL_BYTES + TOKEN_BYTES * self.max_len)

    def _check_memory(self) -> None:
        available = available_memory()
        if available is None:  # the system cannot tell; the upper bounds still hold
            return
        need = self.memory_estimate()
        require(
            need <= MEMORY_SHARE * available,
            f"population {self.population} + offspring {self.n_offspring} of up to "
            f"{self.max_len} tokens need about {size_text(need)}, more than half of the "
            f"{size_text(available)} of memory available; lower --population or --max-len",
        )

    def _validate_combinations(self) -> None:
        """Options that are valid alone but not together."""
        f = self.fitness
        require(
            self.proposer == "causal" or self.mutation.proposer_dtype != "bf16",
            "proposer_dtype bf16 applies to the causal proposer (--proposer causal); the MLM "
            "proposer samples in fp32",
        )
        require(
            not (f.uses_typical and self.workers.workers),
            "typicality is not computed on Ray workers yet: drop --workers or the typical term",
        )
        if self.mh:
            require(
                self.proposer == "mlm",
                "Metropolis-Hastings needs the proposal probability, which only the MLM "
                "proposer gives (use --proposer mlm or drop --mh)",
            )
            require(
                not f.kind.pareto,
                f"Metropolis-Hastings needs a single fitness, not {f.objective}",
            )
        if f.kind.pareto:
            require(
                self.algorithm == "simple",
                f"{f.objective} chooses survivors from parents + offspring itself; "
                "drop --algorithm mu_plus_lambda",
            )
        if self.seed_texts:
            require(
                self.init in ("auto", "seed"),
                f"seed texts were given but init is {self.init!r}; use --init seed",
            )
        else:
            require(self.init != "seed", "init 'seed' needs at least one seed text")
        require(
            not (self.init == "mlm" and self.proposer != "mlm"),
            "init 'mlm' fills with the MLM proposer; with --proposer causal use --init sample, "
            "greedy or beam",
        )

    def _validate_scale(self) -> None:
        w, isl = self.workers, self.island
        require(w.workers >= 0, f"workers must be >= 0 (got {w.workers})")
        at_most("workers", w.workers, MAX_WORKERS)
        require(
            w.threads_per_worker >= 1,
            f"threads_per_worker must be at least 1 (got {w.threads_per_worker})",
        )
        require(
            math.isfinite(w.gpus_per_worker) and w.gpus_per_worker >= 0,
            f"gpus_per_worker must be >= 0 (got {w.gpus_per_worker})",
        )
        if w.workers == 0:
            require(not w.ray_address, "--ray-address needs --workers N (N >= 1)")
            require(w.gpus_per_worker == 0, "--gpus-per-worker needs --workers N (N >= 1)")
        k = isl.islands
        require(k >= 1, f"islands must be at least 1 (got {k})")
        require(
            self.population % k == 0 and self.population // k >= 2,
            f"population {self.population} does not split into {k} islands of 2 or more equal "
            "parts",
        )
        require(
            self.offspring % k == 0,
            f"offspring {self.offspring} does not split equally into {k} islands",
        )
        require(
            isl.migration_interval >= 1,
            f"migration_interval must be at least 1 (got {isl.migration_interval})",
        )
        if k > 1:
            require(
                0 <= isl.migrants < self.population // k,
                f"migrants must be in [0, {self.population // k}) (an island's size)",
            )
            require(
                self.elites < self.population // k,
                f"elites must be fewer than an island's {self.population // k} individuals",
            )

    def for_island(self) -> RunConfig:
        """The config one island evolves under: its share of population and offspring."""
        k = self.island.islands
        if k == 1:
            return self
        return dataclasses.replace(
            self, population=self.population // k, offspring=self.offspring // k
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

    @staticmethod
    def for_algorithm(data: dict[str, Any], given: Collection[str] = ()) -> dict[str, Any]:
        """`data` (a `from_dict` mapping) with cxpb and mutpb set to its algorithm's rates
        (`ALGORITHM_RATES`) where they are not in `given` (the keys the user chose). So
        ``--algorithm mu_plus_lambda`` alone makes a valid run, and the simple algorithm
        keeps the field defaults."""
        rates = ALGORITHM_RATES.get(str(data.get("algorithm", "simple")))
        if rates is None:  # an unknown algorithm: validate() names it
            return data
        out = dict(data)
        for key, value in zip(("cxpb", "mutpb"), rates, strict=True):
            if key not in given:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config `to_dict` wrote (missing keys take their defaults); an unknown key is
        a ConfigError naming it, so a typo or a newer program's config is never ignored."""
        return build(cls, data, "")


__all__ = [
    "ALGORITHMS",
    "ALGORITHM_RATES",
    "BASELINE_INITS",
    "CX_POINTS",
    "FILL_ORDERS",
    "INITS",
    "INT64_MAX",
    "MAX_CANDIDATES",
    "MAX_GENERATIONS",
    "MAX_LEN",
    "MAX_POPULATION",
    "MAX_WORKERS",
    "NORMALISATIONS",
    "OBJECTIVES",
    "PLL_VARIANTS",
    "PROPOSERS",
    "PROPOSER_DTYPES",
    "TEMPERATURE_MAX",
    "TEMPERATURE_MIN",
    "TYPICAL_MODELS",
    "Algorithm",
    "BaselineInit",
    "ConfigError",
    "CrossoverConfig",
    "FitnessConfig",
    "Init",
    "IslandConfig",
    "MutationConfig",
    "Normalisation",
    "Objective",
    "ProposerDtype",
    "ProposerKind",
    "RunConfig",
    "TypicalModel",
    "WorkersConfig",
    "available_memory",
]

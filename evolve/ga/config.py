"""Run configuration: frozen dataclasses, validated in one place, stored with every run.

Each field carries its help in `metadata["help"]`: what it sets and why its default is what it
is. `evolve run` builds its options from these fields (cli/options.py), so each help text and
each default is written once, here. The allowed values of a choice are a `Literal` type, and
the tuples that validation and the CLI use are derived from it with `typing.get_args`.

`RunConfig.to_dict()` is what the store keeps (as JSON) so a run can be reproduced or resumed
from its own record, and `RunConfig.from_dict()` reads it back, refusing keys it does not know.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from evolve.ga.fitness import CAUSAL, KIND_NAMES, KINDS, PLL, TYPICAL, FitnessKind, help_text
from evolve.ga.operators.context import CxPoints
from evolve.ga.proposers.base import Order
from evolve.ga.proposers.sampling import SamplingPolicy
from scoring.devices import check_device
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, DEFAULT_MLM
from scoring.names import PLL_VARIANTS, PLLVariant

Algorithm = Literal["simple", "mu_plus_lambda"]
Normalisation = Literal["mean", "total"]
ProposerKind = Literal["mlm", "causal"]
ProposerDtype = Literal["fp32", "bf16"]
if TYPE_CHECKING:
    Objective = str
else:  # the registered fitness kinds (`evolve.ga.fitness`): --fitness's choices come from it
    Objective = Literal[KIND_NAMES]
TypicalModel = Literal["mlm", "causal"]
BaselineInit = Literal["beam", "greedy", "sample"]  # starts made by decoding with the causal LM
Init = Literal["auto", "seed", "mlm", BaselineInit]

ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
FILL_ORDERS: tuple[Order, ...] = get_args(Order)
CX_POINTS: tuple[CxPoints, ...] = get_args(CxPoints)
NORMALISATIONS: tuple[Normalisation, ...] = get_args(Normalisation)
PROPOSERS: tuple[ProposerKind, ...] = get_args(ProposerKind)
PROPOSER_DTYPES: tuple[ProposerDtype, ...] = get_args(ProposerDtype)
OBJECTIVES: tuple[Objective, ...] = KIND_NAMES
TYPICAL_MODELS: tuple[TypicalModel, ...] = get_args(TypicalModel)
BASELINE_INITS: tuple[BaselineInit, ...] = get_args(BaselineInit)
INITS: tuple[Init, ...] = get_args(Init)  # a nested Literal is flattened

# Upper bounds, checked before a run exists. Without them `-p 1000000000` built individuals
# for 45 s until 4 GB were gone and left a run row behind, and a seed of 2**64 ended in an
# OverflowError when the run was stored.
INT64_MAX = 2**63 - 1  # SQLite INTEGER and torch seeds are signed 64-bit: larger ints overflow
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


class ConfigError(UserError):
    """An option value that cannot make a valid run."""


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
            _choice("fitness objective", self.objective, OBJECTIVES)
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


@dataclass(frozen=True)
class WorkersConfig:
    """Where the model work of a run happens (`evolve.ga.workers`). None of it changes the
    run's result, so a run may be resumed with other values than it was started with."""

    workers: int = field(
        default=0,
        metadata={
            "help": "Ray workers that fill and score each generation's shards, each with its "
            "own copy of the models; 0 = everything in this process, without Ray."
        },
    )
    ray_address: str = field(
        default="",
        metadata={
            "help": "Join the Ray cluster at this address (auto: the one RAY_ADDRESS names) "
            "instead of starting a local Ray; needs `workers`."
        },
    )
    gpus_per_worker: float = field(
        default=0.0,
        metadata={"help": "GPUs Ray gives each worker (a fraction shares one); 0 = CPU workers."},
    )
    threads_per_worker: int = field(
        default=1,
        metadata={
            "help": "Torch threads (and Ray CPUs) of each worker; 1 lets workers use one core "
            "each without competing."
        },
    )


@dataclass(frozen=True)
class IslandConfig:
    """Island model (DEAP's ``migRing``): sub-populations evolved in step, exchanging their
    best individuals around a ring. Changes the run, unlike `WorkersConfig`."""

    islands: int = field(
        default=1,
        metadata={"help": "Sub-populations sharing `population` equally; 1 = one population."},
    )
    migration_interval: int = field(
        default=5,
        metadata={
            "help": "Generations between migrations; a few, so islands diverge before they mix."
        },
    )
    migrants: int = field(
        default=1,
        metadata={"help": "Best individuals each island sends to the next one per migration."},
    )


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
        _require(bool(self.prompt and self.prompt.strip()), "the prompt is empty")
        _types(self)
        _require(self.population >= 2, f"population must be at least 2 (got {self.population})")
        _at_most("population", self.population, MAX_POPULATION)
        _require(self.generations >= 1, f"generations must be at least 1 (got {self.generations})")
        _at_most("generations", self.generations, MAX_GENERATIONS)
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _require(self.offspring >= 0, "offspring must be >= 0")
        _at_most("offspring", self.offspring, MAX_POPULATION)
        _require(0 <= self.seed <= INT64_MAX, f"seed must be within [0, 2**63-1] (got {self.seed})")
        for name in ("cxpb", "mutpb", "mutation.indel_prob"):
            value = _get(self, name)
            _require(0.0 <= value <= 1.0, f"{name} must be within [0, 1] (got {value})")
        if self.algorithm == "mu_plus_lambda":
            _require(
                self.cxpb + self.mutpb <= 1.0,
                f"mu_plus_lambda makes each child by one of crossover or mutation, so it needs "
                f"cxpb + mutpb <= 1 (got {self.cxpb:g} + {self.mutpb:g}; its defaults are "
                f"{ALGORITHM_RATES['mu_plus_lambda'][0]:g} + {ALGORITHM_RATES['mu_plus_lambda'][1]:g})",
            )
        _require(self.tournament >= 1, "tournament size must be at least 1")
        _require(0 <= self.elites < self.population, "elites must be in [0, population)")
        _require(self.patience >= 0, "patience must be >= 0")
        _require(
            math.isfinite(self.min_tol) and self.min_tol >= 0,
            f"min_tol must be a finite number >= 0 (got {self.min_tol})",
        )
        _require(1 <= self.min_len <= self.max_len, "need 1 <= min_len <= max_len")
        _at_most("max_len", self.max_len, MAX_LEN)
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
        _require(
            m.temperature == 0 or TEMPERATURE_MIN <= m.temperature <= TEMPERATURE_MAX,
            f"temperature must be 0 (greedy) or within [{TEMPERATURE_MIN:g}, "
            f"{TEMPERATURE_MAX:g}] (got {m.temperature:g})",
        )
        SamplingPolicy.validate(m.temperature, m.top_k)  # the rule every sampler shares
        _choice("fill order", m.order, FILL_ORDERS)
        _require(
            m.no_repeat_ngram >= 0,
            f"no_repeat_ngram must be at least 1, or 0 for off (got {m.no_repeat_ngram})",
        )
        for token in m.ban_tokens:
            _require(bool(token.strip()), "a ban token is empty")
        _require(m.candidates >= 1, f"candidates must be at least 1 (got {m.candidates})")
        _at_most("candidates", m.candidates, MAX_CANDIDATES)
        _choice("proposer dtype", m.proposer_dtype, PROPOSER_DTYPES)
        _choice("crossover points", self.crossover.points, CX_POINTS)
        _require(self.crossover.seam >= 0, "seam must be >= 0")
        _at_most("seam", self.crossover.seam, self.max_len)
        f = self.fitness
        _choice("fitness objective", f.objective, OBJECTIVES)
        _choice("PLL variant", f.variant, PLL_VARIANTS)
        _choice("normalisation", f.normalise, NORMALISATIONS)
        _require(math.isfinite(f.length_bonus), "length_bonus must be finite")
        _choice("typical model", f.typical_model, TYPICAL_MODELS)
        _require(
            math.isfinite(f.rep_penalty) and f.rep_penalty >= 0,
            f"rep_penalty must be a finite number >= 0 (got {f.rep_penalty})",
        )
        _require(f.rep_n >= 1, f"rep_n must be at least 1 (got {f.rep_n})")
        for name in ("pll_weight", "causal_weight", "typical_weight"):
            value = getattr(f, name)
            _require(math.isfinite(value) and value >= 0, f"{name} must be >= 0 (got {value})")
        problem = f.kind.problem(f)
        _require(problem is None, str(problem))
        _choice("proposer", self.proposer, PROPOSERS)
        _choice("init", self.init, INITS)
        for text in self.seed_texts:
            _require(bool(text.strip()), "a seed text is empty")
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
        _require(
            need <= MEMORY_SHARE * available,
            f"population {self.population} + offspring {self.n_offspring} of up to "
            f"{self.max_len} tokens need about {_size(need)}, more than half of the "
            f"{_size(available)} of memory available; lower --population or --max-len",
        )

    def _validate_combinations(self) -> None:
        """Options that are valid alone but not together."""
        f = self.fitness
        _require(
            self.proposer == "causal" or self.mutation.proposer_dtype != "bf16",
            "proposer_dtype bf16 applies to the causal proposer (--proposer causal); the MLM "
            "proposer samples in fp32",
        )
        _require(
            not (f.uses_typical and self.workers.workers),
            "typicality is not computed on Ray workers yet: drop --workers or the typical term",
        )
        if self.mh:
            _require(
                self.proposer == "mlm",
                "Metropolis-Hastings needs the proposal probability, which only the MLM "
                "proposer gives (use --proposer mlm or drop --mh)",
            )
            _require(
                not f.kind.pareto,
                f"Metropolis-Hastings needs a single fitness, not {f.objective}",
            )
        if f.kind.pareto:
            _require(
                self.algorithm == "simple",
                f"{f.objective} chooses survivors from parents + offspring itself; "
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

    def _validate_scale(self) -> None:
        w, isl = self.workers, self.island
        _require(w.workers >= 0, f"workers must be >= 0 (got {w.workers})")
        _at_most("workers", w.workers, MAX_WORKERS)
        _require(
            w.threads_per_worker >= 1,
            f"threads_per_worker must be at least 1 (got {w.threads_per_worker})",
        )
        _require(
            math.isfinite(w.gpus_per_worker) and w.gpus_per_worker >= 0,
            f"gpus_per_worker must be >= 0 (got {w.gpus_per_worker})",
        )
        if w.workers == 0:
            _require(not w.ray_address, "--ray-address needs --workers N (N >= 1)")
            _require(w.gpus_per_worker == 0, "--gpus-per-worker needs --workers N (N >= 1)")
        k = isl.islands
        _require(k >= 1, f"islands must be at least 1 (got {k})")
        _require(
            self.population % k == 0 and self.population // k >= 2,
            f"population {self.population} does not split into {k} islands of 2 or more equal "
            "parts",
        )
        _require(
            self.offspring % k == 0,
            f"offspring {self.offspring} does not split equally into {k} islands",
        )
        _require(
            isl.migration_interval >= 1,
            f"migration_interval must be at least 1 (got {isl.migration_interval})",
        )
        if k > 1:
            _require(
                0 <= isl.migrants < self.population // k,
                f"migrants must be in [0, {self.population // k}) (an island's size)",
            )
            _require(
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
        return _build(cls, data, "")


_D = TypeVar("_D")


def _build(cls: type[_D], data: dict[str, Any], prefix: str) -> _D:
    """`cls(**data)` with nested config dataclasses built from their dicts, tuples restored
    from JSON lists, and unknown keys refused."""
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    types = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise ConfigError(f"config has no {prefix + name!r}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        kind = types[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if isinstance(value, dict):
                value = _build(kind, value, f"{prefix}{name}.")
            elif not isinstance(value, kind):
                raise ConfigError(f"config {prefix + name!r} is not a mapping")
        elif typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def available_memory() -> int | None:
    """Bytes of memory that can still be taken, or None if the system cannot tell.

    Linux: MemAvailable of /proc/meminfo, capped by the cgroup v2 limit of a container;
    elsewhere the free physical pages that `os.sysconf` reports.
    """
    found: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:
        group = Path("/sys/fs/cgroup")
        limit = (group / "memory.max").read_text().strip()
        if limit != "max":
            used = int((group / "memory.current").read_text())
            found = min(found, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return found if found > 0 else None


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _types(cfg: Any) -> None:
    """Every field holds a value of its annotated type, and every int fits in 64 bits, so no
    later step (SQLite, torch) meets one that overflows, and a stored config read back (from
    JSON, by `from_dict`) is checked as strictly as options are."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        kind, value = hints[f.name], getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _types(value)
        elif kind is bool:
            _require(isinstance(value, bool), f"{f.name} must be true or false (got {value!r})")
        elif kind is int:
            _require(
                isinstance(value, int) and not isinstance(value, bool),
                f"{f.name} must be an integer (got {value!r})",
            )
            _require(
                -INT64_MAX <= value <= INT64_MAX, f"{f.name} {value} is out of the 64-bit range"
            )
        elif kind is float:
            _require(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"{f.name} must be a number (got {value!r})",
            )
        elif kind is str or typing.get_origin(kind) is Literal:
            _require(isinstance(value, str), f"{f.name} must be a string (got {value!r})")
        elif typing.get_origin(kind) is tuple:
            _require(
                isinstance(value, tuple) and all(isinstance(v, str) for v in value),
                f"{f.name} must be a list of strings",
            )


def _at_most(name: str, value: int, bound: int) -> None:
    _require(value <= bound, f"{name} must be at most {bound:,} (got {value:,})")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"unknown {what} {value!r}; choose from {', '.join(allowed)}")

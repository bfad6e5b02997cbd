"""The generation loop, shaped like DEAP's `eaSimple`: it yields one `Generation` per
generation and takes hooks; it does no I/O of its own.

What a run is made of is plugged in from the config (`Engine.build`): the proposer that
refills spans (the MLM, or the causal LM's best of K samples), whose tokens individuals are
written in (`evolve.ga.representation`), the objective (`evolve.ga.objectives`) and the
evaluator with its caches (`evolve.ga.evaluate`). Each model is loaded only if the run uses
it. Generation 0 comes from seed texts, the proposer's own fills, or texts made outside the
GA by an injected `StartTexts` callable (`evolve.ga.population`).

After each generation the engine calls, in order: the `record` hook, which writes the
generation somewhere and returns the ids of its individuals (the store's row ids; lineage
refers to them), then every observer hook (progress bars, logs). Without a `record` hook the
engine numbers individuals itself, so a run needs no database at all. Exceptions from hooks
propagate: a caller that records a run marks it interrupted or failed (`evolve.store.recorder`).

Randomness is the global `random`, numpy and torch generators (DEAP and the proposers use
them); the caller seeds them (`evolve.ga.seeding.rng_scope`) and each `Generation` carries
their state at its end, which is what makes a resumed run continue exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from evolve.ga.config import BASELINE_INITS, RunConfig
from evolve.ga.evaluate import EvalStats, Evaluator, NewScore
from evolve.ga.individual import Individual
from evolve.ga.objectives import build_objective
from evolve.ga.operators import OperatorContext
from evolve.ga.pareto import ParetoIndividual, pareto_ranks, set_diversity
from evolve.ga.population import StartTexts, from_proposer, from_seed_texts, from_texts
from evolve.ga.proposers import CausalProposer, MLMProposer, Proposer
from evolve.ga.proposers.sampling import ban_token_ids
from evolve.ga.representation import Representation
from evolve.ga.seeding import get_rng_state, set_rng_state
from evolve.ga.steps import Parts, step_for
from scoring.base import Scorer
from scoring.causal import CausalScorer
from scoring.errors import UserError
from scoring.models import LoadedModel, load_causal, load_mlm
from scoring.pll import PLLScorer
from scoring.results import TokenScores
from scoring.typical import TypicalCausalScorer, TypicalScorer


@dataclass
class Generation:
    """One completed generation: the population with its fitness, and the loop's state."""

    number: int
    population: list[Individual]
    texts: list[str]  # each individual's continuation as text
    fitness: list[float]  # the objective's scalar per individual
    pareto_ranks: list[int] | None  # NSGA-II: non-dominated rank per individual
    stats: EvalStats
    seconds: float
    best_so_far: float  # for early stopping (patience)
    stall: int  # generations without improvement of best_so_far
    stopped: bool  # patience ran out: the loop ends after this generation
    rng_state: str  # the generators' state at the end of this generation
    new_scores: list[NewScore]  # model scores computed in this generation (all texts tried)

    @property
    def best(self) -> float:
        return max(self.fitness)

    @property
    def mean(self) -> float:
        return sum(self.fitness) / len(self.fitness)

    @property
    def std(self) -> float:
        m = self.mean
        return (sum((f - m) ** 2 for f in self.fitness) / len(self.fitness)) ** 0.5

    @property
    def worst(self) -> float:
        return min(self.fitness)

    @property
    def best_index(self) -> int:
        return max(range(len(self.fitness)), key=self.fitness.__getitem__)

    @property
    def best_text(self) -> str:
        return self.texts[self.best_index]


Record = Callable[[Generation], Sequence[int]]
Hook = Callable[[Generation], None]


@dataclass(frozen=True)
class Models:
    """The loaded models a run uses (None where it does not use one)."""

    mlm: LoadedModel | None
    causal: LoadedModel | None

    @classmethod
    def load(cls, cfg: RunConfig) -> Models:
        mlm = load_mlm(cfg.mlm, device=cfg.device) if cfg.uses_mlm else None
        causal = load_causal(cfg.causal, device=cfg.device) if cfg.uses_causal else None
        return cls(mlm, causal)


class Engine:
    """A configured GA: `run()` evolves from generation 0, `resume()` from a stored one."""

    def __init__(
        self,
        cfg: RunConfig,
        models: Models,
        *,
        start_texts: StartTexts | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.models = models
        self.start_texts = start_texts
        rep_lm = models.mlm if cfg.representation == "mlm" else models.causal
        if rep_lm is None:
            raise ValueError(f"the {cfg.representation} model is needed but not loaded")
        self.rep = Representation.build(rep_lm, cfg.prompt)
        self.rep.check_window(cfg.max_len)
        self.proposer = self._proposer(rep_lm)
        m = cfg.mutation
        self.ctx = OperatorContext(
            proposer=self.proposer,
            prompt_ids=self.rep.prompt_ids,
            max_span=m.max_span,
            min_len=cfg.min_len,
            max_len=cfg.max_len,
            mask_id=self.rep.placeholder_id,
            indel_prob=m.indel_prob,
            cx_points=cfg.crossover.points,
            seam=cfg.crossover.seam,
            tokenizer=rep_lm.tokenizer,
            with_logq=cfg.mh,
            template=self.rep.template,
            no_repeat_ngram=m.no_repeat_ngram,
        )
        f = cfg.fitness
        scorers: list[Scorer] = []
        pll_name = causal_name = typical_name = None
        typical_mlm = f.uses_typical and f.typical_model == "mlm"
        if f.uses_pll:
            assert models.mlm is not None
            dtype = "bf16" if f.bf16 else "fp32"
            # typicality reads the entropies of this same PLL pass (no extra forward)
            pll = PLLScorer(models.mlm, variant=f.variant, dtype=dtype, entropy=typical_mlm)
            scorers.append(pll)
            pll_name = pll.name
            if typical_mlm:
                typ: Scorer = TypicalScorer(pll)
                scorers.append(typ)
                typical_name = typ.name
        if f.uses_causal:
            assert models.causal is not None
            clm = CausalScorer(models.causal)
            scorers.append(clm)
            causal_name = clm.name
            if f.uses_typical and not typical_mlm:
                typ = TypicalCausalScorer(models.causal)
                scorers.append(typ)
                typical_name = typ.name
        self.objective = build_objective(f, pll_name, causal_name, typical_name)
        self.evaluator = Evaluator(self.objective, self.rep, scorers)
        self.multi = f.objective == "nsga2"
        self.parts = Parts(cfg, self.ctx, self.evaluator, self.make)
        self.step = step_for(cfg)
        self.best_so_far = float("-inf")
        self.stall = 0
        self._next_id = 0

    @classmethod
    def build(
        cls,
        cfg: RunConfig,
        *,
        start_texts: StartTexts | None = None,
    ) -> Engine:
        """Load the models the config asks for and wire the engine."""
        return cls(cfg.validate(), Models.load(cfg), start_texts=start_texts)

    def _proposer(self, lm: LoadedModel) -> Proposer:
        m = self.cfg.mutation
        banned = ban_token_ids(lm, m.ban_tokens)
        if self.cfg.proposer == "mlm":
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
            candidates=m.candidates,
            temperature=m.temperature,
            top_k=m.top_k,
            banned_ids=banned,
            no_repeat_ngram=m.no_repeat_ngram,
        )

    @property
    def fitness_label(self) -> str:
        """What the fitness is, e.g. ``pll/original/tiny-bert/mean``."""
        return self.objective.label

    def make(self, ids: Sequence[int] = ()) -> Individual:
        """A new individual of this run's kind (Pareto fitness under nsga2)."""
        return ParetoIndividual(ids) if self.multi else Individual(ids)

    def text_of(self, ids: Sequence[int]) -> str:
        """The continuation as text, with the spacing it has after the prompt."""
        return self.rep.text_of(ids)

    # -- generation 0 ---------------------------------------------------------------------

    def initial_population(self) -> list[Individual]:
        cfg, start = self.cfg, self.cfg.start
        if start == "seed":
            return from_seed_texts(
                cfg.seed_texts, cfg.population, self.rep, cfg.min_len, cfg.max_len, self.make
            )
        if start in BASELINE_INITS:
            if self.start_texts is None:
                raise UserError(f"init {start!r} needs a source of starting texts")
            saved = get_rng_state()  # the texts' maker seeds its own sampling
            made = self.start_texts(start, cfg.population)
            set_rng_state(saved)
            return from_texts(start, made, cfg.population, self.rep, self.ctx, self.make)
        return from_proposer(cfg.population, cfg.init_len, self.ctx, self.make)

    # -- the loop -------------------------------------------------------------------------

    def run(self, record: Record | None = None, hooks: Sequence[Hook] = ()) -> Iterator[Generation]:
        """Evolve from generation 0; yields each generation after its hooks ran."""
        started = time.perf_counter()
        pop = self.initial_population()
        stats = self.evaluator.evaluate(pop)
        if self.multi:
            set_diversity(pop)
        gen = self._complete(0, pop, stats, started, record, hooks)
        yield gen
        if not gen.stopped:
            yield from self._loop(pop, 1, record, hooks)

    def resume(
        self,
        pop: list[Individual],
        number: int,
        best_so_far: float,
        stall: int,
        rng_state: str,
        stored_scores: Mapping[str, Mapping[str, TokenScores]],
        record: Record | None = None,
        hooks: Sequence[Hook] = (),
    ) -> Iterator[Generation]:
        """Continue after stored generation `number` (its population, early-stopping state,
        random state and every score the run computed), exactly as the uninterrupted run
        would have."""
        self.best_so_far, self.stall = best_so_far, stall
        self.evaluator.warm(stored_scores)
        self._next_id = max((ind.db_id or 0 for ind in pop), default=-1) + 1
        set_rng_state(rng_state)
        if self.cfg.patience and stall >= self.cfg.patience:
            return
        yield from self._loop(pop, number + 1, record, hooks)

    def _loop(
        self, pop: list[Individual], first: int, record: Record | None, hooks: Sequence[Hook]
    ) -> Iterator[Generation]:
        for number in range(first, self.cfg.generations + 1):
            started = time.perf_counter()
            pop, stats = self.step(self.parts, pop)
            gen = self._complete(number, pop, stats, started, record, hooks)
            yield gen
            if gen.stopped:
                return

    def _complete(
        self,
        number: int,
        pop: list[Individual],
        stats: EvalStats,
        started: float,
        record: Record | None,
        hooks: Sequence[Hook],
    ) -> Generation:
        fits = [self.evaluator.scalar(ind) for ind in pop]
        best = max(fits)
        if best > self.best_so_far + self.cfg.min_tol:
            self.best_so_far, self.stall = best, 0
        else:
            self.stall += 1
        gen = Generation(
            number=number,
            population=pop,
            texts=[self.text_of(ind) for ind in pop],
            fitness=fits,
            pareto_ranks=pareto_ranks(pop) if self.multi else None,
            stats=stats,
            seconds=time.perf_counter() - started,
            best_so_far=self.best_so_far,
            stall=self.stall,
            stopped=bool(self.cfg.patience and self.stall >= self.cfg.patience),
            rng_state=get_rng_state(),
            new_scores=self.evaluator.take_fresh(),
        )
        if record is not None:
            ids = list(record(gen))
        else:
            ids = list(range(self._next_id, self._next_id + len(pop)))
            self._next_id += len(pop)
        for ind, db_id in zip(pop, ids, strict=True):
            ind.db_id = db_id
        for hook in hooks:
            hook(gen)
        return gen

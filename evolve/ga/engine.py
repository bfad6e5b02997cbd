"""The generation loop, shaped like DEAP's `eaSimple`: it yields one `Generation` per
generation and takes hooks; it does no I/O of its own.

What a run is made of is plugged in from the config (`Engine.build`): the proposer that
refills spans (the MLM, or the causal LM's best of K samples), whose tokens individuals are
written in (`evolve.ga.representation`), the scorers and the objective that the fitness kind
declares (`evolve.ga.fitness`: the engine sees only the score record and whether the kind is
Pareto) and the evaluator with its caches (`evolve.ga.evaluate`). Each model is loaded only if the run uses
it. Generation 0 comes from seed texts, the proposer's own fills, or texts made outside the
GA by an injected `StartTexts` callable (`evolve.ga.population`).

After each generation the engine calls, in order: the `record` hook, which writes the
generation somewhere and returns the ids of its individuals (the store's row ids; lineage
refers to them), then every observer hook (progress bars, logs). Without a `record` hook the
engine numbers individuals itself, so a run needs no database at all. Exceptions from hooks
propagate: a caller that records a run marks it interrupted or failed (`evolve.store.recorder`).

Randomness is the global `random`, numpy and torch generators (DEAP uses `random`; each
fill request gets a seed of its own from torch's, see `evolve.ga.workers`); the caller seeds
them (`evolve.ga.seeding.rng_scope`) and each `Generation` carries their state at its end,
which is what makes a resumed run continue exactly.

Model work (fills and scoring) runs in this process, or on Ray workers when the engine is
given a `WorkerPool` (`evolve.ga.workers`), with the same result. With ``--islands K`` each
generation is a migration every few generations and one step per island
(`evolve.ga.islands`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from evolve.ga.config import BASELINE_INITS, RunConfig
from evolve.ga.evaluate import EvalStats, Evaluator, NewScore
from evolve.ga.fitness import build_objective
from evolve.ga.individual import Individual
from evolve.ga.islands import Migration, island_of, migrate, split
from evolve.ga.operators import OperatorContext
from evolve.ga.pareto import ParetoIndividual, pareto_ranks, set_diversity
from evolve.ga.population import StartTexts, from_proposer, from_seed_texts, from_texts
from evolve.ga.representation import Representation
from evolve.ga.seeding import get_rng_state, set_rng_state
from evolve.ga.steps import Parts, step_for
from evolve.ga.wiring import Models, make_proposer, scorers_by_role
from evolve.ga.workers import DrivenProposer, ShardedScorer, WorkerPool
from scoring.errors import UserError
from scoring.results import TokenScores

__all__ = ["Engine", "Generation", "Hook", "Models", "Record"]


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
    islands: list[int] | None = None  # island of each individual (runs with --islands K > 1)
    migrations: list[Migration] = field(default_factory=list)  # made before this step

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


class Engine:
    """A configured GA: `run()` evolves from generation 0, `resume()` from a stored one."""

    def __init__(
        self,
        cfg: RunConfig,
        models: Models,
        *,
        start_texts: StartTexts | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        cfg.validated()
        self.cfg = cfg
        self.models = models
        self.start_texts = start_texts
        self.pool = pool
        rep_lm = models.representation_lm(cfg)
        self.rep = Representation.build(rep_lm, cfg.prompt)
        self.rep.check_window(cfg.max_len)
        # Every fill goes through the driven proposer: per-request seeds, local or on workers.
        self.proposer = DrivenProposer(make_proposer(cfg, rep_lm), pool)
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
        by_role = scorers_by_role(cfg, models)
        local = list(by_role.values())
        scorers = local if pool is None else [ShardedScorer(x, pool) for x in local]
        self.objective = build_objective(f, {role: x.name for role, x in by_role.items()})
        self.evaluator = Evaluator(self.objective, self.rep, scorers)
        self.multi = f.kind.pareto
        self.islands = cfg.island.islands
        self.parts = Parts(cfg.for_island(), self.ctx, self.evaluator, self.make)
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
        pool: WorkerPool | None = None,
    ) -> Engine:
        """Load the models the config asks for and wire the engine. With a worker pool the
        workers hold the models that do the work; this process loads its copy on the CPU
        (tokenizers, and generation 0 from the causal LM's decoding)."""
        cfg.validated()
        models = Models.load(cfg, device="cpu" if pool is not None else None)
        return cls(cfg, models, start_texts=start_texts, pool=pool)

    @property
    def fitness_label(self) -> str:
        """What the fitness is, e.g. ``pll/original/tiny-bert/mean``."""
        return self.objective.label

    def make(self, ids: Sequence[int] = ()) -> Individual:
        """A new individual of this run's kind (Pareto fitness under nsga2)."""
        if self.multi:
            return ParetoIndividual(ids, self.objective.n_values)
        return Individual(ids)

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
            pop, stats, moves = self._step(number, pop)
            gen = self._complete(number, pop, stats, started, record, hooks, moves)
            yield gen
            if gen.stopped:
                return

    def _step(
        self, number: int, pop: list[Individual]
    ) -> tuple[list[Individual], EvalStats, list[Migration]]:
        """One generation: one step of the whole population, or with islands a migration
        (every `migration_interval` generations) and then one step per island."""
        if self.islands == 1:
            stepped, stats = self.step(self.parts, pop)
            return stepped, stats, []
        isl = self.cfg.island
        demes = split(pop, self.islands)
        moves: list[Migration] = []
        if number % isl.migration_interval == 0:
            moves = migrate(demes, isl.migrants, self.evaluator.scalar, self.make)
        new_pop: list[Individual] = []
        n_invalid = n_evaluated = n_hits = 0
        for deme in demes:
            stepped, st = self.step(self.parts, deme)
            new_pop.extend(stepped)
            n_invalid += st.n_invalid
            n_evaluated += st.n_evaluated
            n_hits += st.n_cache_hits
        return new_pop, EvalStats(n_invalid, n_evaluated, n_hits), moves

    def _complete(
        self,
        number: int,
        pop: list[Individual],
        stats: EvalStats,
        started: float,
        record: Record | None,
        hooks: Sequence[Hook],
        migrations: Sequence[Migration] = (),
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
            islands=island_of(len(pop), self.islands) if self.islands > 1 else None,
            migrations=list(migrations),
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

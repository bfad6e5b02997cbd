"""The generation loop: DEAP selection and our batched span operators, logged per generation.

We write the loop ourselves on DEAP's `tools` (rather than calling `algorithms.eaSimple`) so
that variation and evaluation run as one batch per generation, every generation is written
to the store in one transaction together with the RNG states, and a run can be resumed from
its last completed generation with the same result as an uninterrupted run.

Three loops: `simple` (eaSimple with elitism: select, clone, cross, mutate, keep the elites),
`mu_plus_lambda` (offspring from random parents, survivors are the best mu of parents +
offspring), and with ``--fitness nsga2`` NSGA-II (`evolve.ga.pareto`: crowded tournaments,
survivors by ``selNSGA2`` from parents + offspring).

What a run is made of is plugged in from the config: the proposer that refills spans (the
MLM, or the causal LM's best of K samples), whose tokens individuals are written in
(`evolve.ga.representation`), the fitness (`evolve.ga.evaluate`), and generation 0 (seed texts,
proposer fills, or the causal LM's beam/greedy/sampled decoding via `evolve.experiments.baselines`).
Each model is loaded only if the run uses it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deap import tools

from evolve.ga.config import BASELINE_INITS, RunConfig
from evolve.ga.evaluate import SCORE_KEYS, Evaluator, Score
from evolve.ga.individual import Individual, Origin
from evolve.ga.operators import OperatorContext, crossover_batch, mh_accept, mutate_batch
from evolve.ga.pareto import (
    ParetoIndividual,
    crowded_tournament,
    pareto_ranks,
    select_survivors,
    set_diversity,
)
from evolve.ga.proposers import CausalProposer, MLMProposer, Proposer
from evolve.ga.representation import Representation
from evolve.ga.seeding import get_rng_state, seed_everything, set_rng_state
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import LoadedModel, check_kind, load_causal, load_mlm

DEDUPE_TRIES = 3  # re-mutations of a duplicate before we accept it as it is


class RunInterrupted(Exception):
    """Ctrl-C during a run: the store holds every completed generation."""

    def __init__(self, run_id: int, generation: int) -> None:
        super().__init__(f"run {run_id} interrupted after generation {generation}")
        self.run_id = run_id
        self.generation = generation


@dataclass(frozen=True)
class GenerationReport:
    """What the loop tells its caller (the CLI's progress bar) after each generation."""

    run_id: int
    generation: int
    generations: int
    best: float
    mean: float
    best_text: str
    n_evaluated: int
    n_cache_hits: int
    seconds: float


@dataclass
class RunSummary:
    run_id: int
    status: str
    generations_done: int
    best: list[dict[str, Any]] = field(default_factory=list)  # best distinct texts


Progress = Callable[[GenerationReport], None]


def _load_models(cfg: RunConfig) -> tuple[LoadedModel | None, LoadedModel | None]:
    """The masked and the causal LM, each only if the run uses it."""
    mlm = load_mlm(cfg.mlm, device=cfg.device) if cfg.uses_mlm else None
    causal = load_causal(cfg.causal, device=cfg.device) if cfg.uses_causal else None
    return mlm, causal


def start_run(cfg: RunConfig, store: LogStore, progress: Progress | None = None) -> RunSummary:
    """Create a run in the store and evolve it to the end (or until early stopping)."""
    cfg.validate()
    if not cfg.uses_causal:  # recorded as the run's judge: refuse a wrong kind now, not later
        check_kind(cfg.causal, "causal")
    engine = _Engine(cfg, store, *_load_models(cfg))
    run_id = store.create_run(
        prompt=cfg.prompt,
        seed=cfg.seed,
        config=cfg.to_dict(),
        mlm=cfg.mlm,
        causal=cfg.causal,
        fitness=engine.fitness_name,
    )
    engine.run_id = run_id
    seed_everything(cfg.seed)
    return engine.guarded(lambda: engine.evolve_from_start(), progress)


def resume_run(run_id: int, store: LogStore, progress: Progress | None = None) -> RunSummary:
    """Continue an interrupted run from its last completed generation."""
    record = store.run(run_id)
    if record["status"] == "finished":
        raise UserError(f"run {run_id} already finished; nothing to resume")
    cfg = RunConfig.from_dict(_json(record["config"])).validate()
    engine = _Engine(cfg, store, *_load_models(cfg))
    engine.run_id = run_id
    # Claim the run first: set_status refuses if its recorded process is still alive.
    store.set_status(run_id, "running")
    last = store.last_generation(run_id)
    if last is None:  # interrupted before generation 0 was written: start it afresh
        seed_everything(cfg.seed)
        return engine.guarded(lambda: engine.evolve_from_start(), progress)
    return engine.guarded(lambda: engine.evolve_from_record(last), progress)


class _Engine:
    def __init__(
        self,
        cfg: RunConfig,
        store: LogStore,
        mlm: LoadedModel | None,
        causal: LoadedModel | None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.mlm = mlm
        self.causal = causal
        self.run_id = -1
        rep_lm = mlm if cfg.representation == "mlm" else causal
        assert rep_lm is not None
        self.rep = Representation.build(rep_lm, cfg.prompt)
        self.rep.check_window(cfg.max_len)
        self.tokenizer = rep_lm.tokenizer
        self.prompt_ids = self.rep.prompt_ids
        m = cfg.mutation
        self.proposer: Proposer
        if cfg.proposer == "mlm":
            self.proposer = MLMProposer(
                rep_lm, temperature=m.temperature, top_k=m.top_k, order=m.order
            )
        else:
            self.proposer = CausalProposer(
                rep_lm, candidates=m.candidates, temperature=m.temperature, top_k=m.top_k
            )
        self.ctx = OperatorContext(
            proposer=self.proposer,
            prompt_ids=self.prompt_ids,
            max_span=m.max_span,
            min_len=cfg.min_len,
            max_len=cfg.max_len,
            mask_id=self.rep.placeholder_id,
            indel_prob=m.indel_prob,
            cx_points=cfg.crossover.points,
            seam=cfg.crossover.seam,
            tokenizer=self.tokenizer,
            with_logq=cfg.mh,
            template=self.rep.template,
        )
        self.evaluator = Evaluator(cfg.fitness, self.rep, mlm=mlm, causal=causal)
        self.fitness_name = self.evaluator.scorer_name
        self.multi = cfg.fitness.objective == "nsga2"
        self.best_so_far = float("-inf")
        self.stall = 0
        self.progress: Progress | None = None
        # (ids, scores) of texts scored this generation that are not in the population
        # (undone by Metropolis-Hastings, dropped by survivor selection): their scores are
        # stored with the generation and their ids in its state, for a resume to warm with.
        self.unkept: list[tuple[list[int], dict[str, Any]]] = []

    # -- set-up ---------------------------------------------------------------------------

    def make(self, ids: Sequence[int] = ()) -> Individual:
        """A new individual of this run's kind (three objectives under nsga2)."""
        return ParetoIndividual(ids) if self.multi else Individual(ids)

    def text_of(self, ids: Sequence[int]) -> str:
        """The continuation as text, with the spacing it has after the prompt."""
        return self.rep.text_of(ids)

    # -- scores in the store (a stopgap between Individual.scores and the scores table) ----

    def score_name(self, kind: str) -> str:
        """The stored scorer name of a channel: bf16 PLL scores are kept apart from fp32 ones."""
        name = self.evaluator.channels[kind].name
        return f"{name}/bf16" if kind == "pll" and self.cfg.fitness.bf16 else name

    def score_records(self, ids: Sequence[int], scores: dict[str, Any]) -> list[dict[str, Any]]:
        """`Individual.scores` of ids as rows of the store's scores table."""
        text = self.text_of(ids)
        out = []
        for kind in self.evaluator.channels:
            total, _, n = SCORE_KEYS[kind]
            if scores.get(total) is not None:
                out.append(
                    {
                        "text": text,
                        "prefix": self.cfg.prompt,
                        "scorer": self.score_name(kind),
                        "total": scores[total],
                        "n_tokens": scores[n],
                        "per_token": None,
                    }
                )
        return out

    def engine_scores(self, by_scorer: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Stored {scorer: {total, n_tokens, ...}} back as `Individual.scores`."""
        scores: dict[str, Any] = {}
        for kind, channel in self.evaluator.channels.items():
            found = by_scorer.get(self.score_name(kind))
            if found is not None:
                scores.update(channel.record(Score(found["total"], found["n_tokens"])))
        return scores

    def warm_from_store(self) -> None:
        """Refill the score caches with every text the run scored (`Evaluator.warm`), by the
        ids it scored them as: individuals, and the unkept texts in each generation's state
        (undone by MH, or dropped by survivor selection, the undone ones included)."""
        stored = self.store.scores_for_run(self.run_id)
        seen = [row["token_ids"] for row in self.store.individuals(self.run_id)]
        for gen in self.store.generation_states(self.run_id):
            seen.extend(gen["state"].get("unkept_ids", ()))
        self.evaluator.warm(
            (ids, self.engine_scores(stored.get(self.text_of(ids), {}))) for ids in seen
        )

    def initial_population(self) -> list[Individual]:
        cfg = self.cfg
        start = cfg.start
        if start == "seed":
            seeds = []
            for text in cfg.seed_texts:
                ids = self.rep.encode(text)[: cfg.max_len]
                if len(ids) < cfg.min_len:
                    raise UserError(
                        f"seed text {text[:40]!r} has {len(ids)} tokens, fewer than "
                        f"min_len {cfg.min_len}"
                    )
                seeds.append(ids)
            pop = [self.make(seeds[i % len(seeds)]) for i in range(cfg.population)]
            for ind in pop:
                ind.origin = Origin(op="seed")
            return pop
        if start in BASELINE_INITS:
            return self.baseline_population(start)
        mask = self.rep.placeholder_id
        pop = [self.make([mask] * cfg.init_len) for _ in range(cfg.population)]
        filled = self.proposer.fill(
            [self.ctx.request(list(ind), range(cfg.init_len)) for ind in pop]
        )
        for ind, ids in zip(pop, filled, strict=True):
            ind[:] = self.ctx.continuation_of(ids)
            ind.origin = Origin(op="init", detail={"proposer": self.proposer.name})
        return pop

    def baseline_population(self, method: str) -> list[Individual]:
        """Generation 0 from the causal LM's own decoding of the prompt (`evolve.experiments.baselines`):
        beam search with one beam per member (all returned), greedy (copied), or samples.

        The texts are stored as the run's baselines and encoded into the representation;
        one longer than max_len is cut, one shorter than min_len is extended by the proposer.
        The GA's random state is left as it was (the baselines seed their own sampling).
        """
        from evolve.experiments.baselines import BaselineConfig, generate_baselines

        cfg = self.cfg
        n = cfg.population
        bcfg = BaselineConfig(
            prompt=cfg.prompt,
            run_id=self.run_id,
            methods=(method,),
            causal=cfg.causal,
            new_tokens=cfg.init_len,
            num_beams=n,
            num_return_sequences=n,
            samples=n,
            seed=cfg.seed,
            device=cfg.device,
        )
        state = get_rng_state()
        made = generate_baselines(bcfg, self.store, lm=self.causal)
        set_rng_state(state)
        pop: list[Individual] = []
        short: list[tuple[Individual, int]] = []
        for i in range(n):
            b = made[i % len(made)]
            ids = self.rep.encode(b.text)[: cfg.max_len]
            ind = self.make(ids)
            ind.origin = Origin(op="init", detail={"init": method, "baseline_id": b.id})
            if len(ids) < cfg.min_len:
                short.append((ind, len(ids)))
            pop.append(ind)
        if short:
            filled = self.proposer.fill(
                [
                    self.ctx.request(
                        [*ind, *[self.rep.placeholder_id] * (cfg.min_len - k)],
                        range(k, cfg.min_len),
                    )
                    for ind, k in short
                ]
            )
            for (ind, k), ids in zip(short, filled, strict=True):
                ind[:] = self.ctx.continuation_of(ids)
                ind.origin.detail.update(extended=cfg.min_len - k, proposer=self.proposer.name)
        return pop

    # -- the loop ---------------------------------------------------------------------------

    def guarded(self, body: Callable[[], None], progress: Progress | None) -> RunSummary:
        self.progress = progress
        try:
            body()
        except KeyboardInterrupt:
            last = self.store.last_generation(self.run_id)
            self.store.set_status(self.run_id, "interrupted")
            raise RunInterrupted(self.run_id, last["generation"] if last else -1) from None
        except BaseException as exc:
            self.store.set_status(self.run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        self.store.finish_run(self.run_id, "finished")
        record = self.store.run(self.run_id)
        return RunSummary(
            run_id=self.run_id,
            status="finished",
            generations_done=record["generations_done"],
            best=self.store.best(self.run_id, 5),
        )

    def evolve_from_start(self) -> None:
        started = time.perf_counter()
        pop = self.initial_population()
        stats = self.evaluator.evaluate(pop)
        if self.multi:
            set_diversity(pop)
        self.commit(0, pop, stats, started)
        self.loop(pop, 1)

    def evolve_from_record(self, last: dict[str, Any]) -> None:
        rows = self.store.population(self.run_id, last["generation"])
        pop = []
        for row in rows:
            ind = self.make(row["token_ids"])
            if self.multi:
                ind.fitness.values = tuple(row["objectives"])
            else:
                ind.fitness.values = (row["fitness"],)
            ind.scores = self.engine_scores(row["scores"])
            ind.db_id = row["id"]
            pop.append(ind)
        state = _json(last["state"])
        self.best_so_far = state["best_so_far"]
        self.stall = state["stall"]
        self.warm_from_store()
        set_rng_state(last["rng_state"])
        if state.get("stopped"):
            return
        self.loop(pop, last["generation"] + 1)

    def loop(self, pop: list[Individual], first: int) -> None:
        cfg = self.cfg
        for gen in range(first, cfg.generations + 1):
            if cfg.patience and self.stall >= cfg.patience:
                break
            started = time.perf_counter()
            if self.multi:
                pop, stats = self.step_nsga2(pop)
            elif cfg.algorithm == "simple":
                pop, stats = self.step_simple(pop)
            else:
                pop, stats = self.step_mu_plus_lambda(pop)
            self.commit(gen, pop, stats, started)

    def step_simple(self, pop: list[Individual]) -> tuple[list[Individual], Any]:
        cfg = self.cfg
        elites = [self.copy_of(ind, "elite") for ind in tools.selBest(pop, cfg.elites)]
        chosen = tools.selTournament(pop, len(pop) - len(elites), tournsize=cfg.tournament)
        offspring = [self.copy_of(ind, "copy") for ind in chosen]
        parents_by_id = {ind.db_id: ind for ind in pop}
        self.vary(offspring)
        new_pop = elites + offspring
        self.dedupe(new_pop)
        stats = self.evaluator.evaluate(new_pop)
        if cfg.mh:
            self.metropolis_hastings(new_pop, parents_by_id)
        return new_pop, stats

    def step_mu_plus_lambda(self, pop: list[Individual]) -> tuple[list[Individual], Any]:
        cfg = self.cfg
        offspring: list[Individual] = []
        pairs: list[tuple[Individual, Individual]] = []
        mutants: list[Individual] = []
        for _ in range(cfg.n_offspring):  # DEAP's varOr: each child is cx, mut or a copy
            op = random.random()
            if op < cfg.cxpb:
                a, b = (self.copy_of(ind, "copy") for ind in random.sample(pop, 2))
                pairs.append((a, b))
                offspring.append(a)
            elif op < cfg.cxpb + cfg.mutpb:
                child = self.copy_of(random.choice(pop), "copy")
                mutants.append(child)
                offspring.append(child)
            else:
                offspring.append(self.copy_of(random.choice(pop), "copy"))
        if pairs:
            crossover_batch(pairs, ctx=self.ctx)
        if mutants:
            mutate_batch(mutants, ctx=self.ctx)
        self.dedupe(offspring, others=pop)
        stats = self.evaluator.evaluate(offspring)
        if cfg.mh:
            self.metropolis_hastings(offspring, {ind.db_id: ind for ind in pop})
        survivors = _best_distinct(pop + offspring, cfg.population)
        self.note_dropped(offspring, survivors)
        old = {id(ind) for ind in pop}
        return [self.copy_of(ind, "copy") if id(ind) in old else ind for ind in survivors], stats

    def step_nsga2(self, pop: list[Individual]) -> tuple[list[Individual], Any]:
        """NSGA-II (see evolve.ga.pareto): crowded tournaments, variation as in the simple loop,
        survivors by selNSGA2 from parents + offspring, diversity measured in that pool."""
        cfg = self.cfg
        chosen = crowded_tournament(pop, cfg.n_offspring)
        offspring = [self.copy_of(ind, "copy") for ind in chosen]
        self.vary(offspring)
        self.dedupe(offspring, others=pop)
        stats = self.evaluator.evaluate(offspring)
        pool = pop + offspring
        set_diversity(pool)
        survivors = select_survivors(pool, cfg.population)
        self.note_dropped(offspring, survivors)
        old = {id(ind) for ind in pop}
        return [self.copy_of(ind, "copy") if id(ind) in old else ind for ind in survivors], stats

    def note_dropped(
        self, offspring: Sequence[Individual], survivors: Sequence[Individual]
    ) -> None:
        """Remember scored offspring that did not survive: a resume must warm its cache
        with them too, or it would score them again in other batches."""
        kept = {id(ind) for ind in survivors}
        dropped = {tuple(ind): dict(ind.scores) for ind in offspring if id(ind) not in kept}
        self.unkept.extend((list(ids), scores) for ids, scores in dropped.items())

    def vary(self, offspring: list[Individual]) -> None:
        """DEAP's varAnd: cross neighbouring pairs with cxpb, then mutate each with mutpb;
        every crossover and every mutation of the generation goes in one batch."""
        pairs = [
            (offspring[i - 1], offspring[i])
            for i in range(1, len(offspring), 2)
            if random.random() < self.cfg.cxpb
        ]
        if pairs:
            crossover_batch(pairs, ctx=self.ctx)
        mutants = [ind for ind in offspring if random.random() < self.cfg.mutpb]
        if mutants:
            mutate_batch(mutants, ctx=self.ctx)

    def copy_of(self, ind: Individual, op: str) -> Individual:
        """A clone that records `ind` as its single parent; kept as is unless varied."""
        child = self.make(ind)
        if ind.fitness.valid:
            child.fitness.values = ind.fitness.values
        child.scores = dict(ind.scores)
        child.db_id = ind.db_id
        child.origin = Origin(op=op, parents=(ind.db_id,) if ind.db_id is not None else ())
        return child

    def dedupe(self, pop: list[Individual], others: Sequence[Individual] = ()) -> None:
        """Re-mutate varied children that repeat another member (duplicate suppression)."""
        if not self.cfg.dedupe:
            return
        for _ in range(DEDUPE_TRIES):
            seen = {tuple(ind) for ind in others}
            dups = []
            for ind in pop:
                key = tuple(ind)
                if key in seen and not ind.fitness.valid:
                    dups.append(ind)
                seen.add(key)
            if not dups:
                return
            mutate_batch(dups, ctx=self.ctx)

    def metropolis_hastings(
        self, pop: list[Individual], parents_by_id: dict[int | None, Individual]
    ) -> None:
        """Accept or undo each pure mutation by the MH rule on the energy: minus the total
        log-likelihood the fitness is made of (`Evaluator.energy`; -PLL by default)."""
        for i, ind in enumerate(pop):
            detail = ind.origin.detail
            if "log_q_forward" not in detail or len(ind.origin.parents) != 1:
                continue
            parent = parents_by_id.get(ind.origin.parents[0])
            if parent is None:
                continue
            accepted = mh_accept(
                old_energy=self.evaluator.energy(parent.scores),
                new_energy=self.evaluator.energy(ind.scores),
                log_q_forward=detail["log_q_forward"],
                log_q_reverse=detail["log_q_reverse"],
            )
            detail["mh_accepted"] = accepted
            if not accepted:
                undone = self.copy_of(parent, "mh_reject")
                # The lineage keeps what was undone; its scores go to the store with the
                # generation (`unkept`), so a resumed run can warm its cache with them.
                undone.origin.detail = dict(
                    detail, rejected_op=ind.origin.op, rejected_ids=list(ind)
                )
                self.unkept.append((list(ind), dict(ind.scores)))
                pop[i] = undone

    def commit(self, gen: int, pop: list[Individual], stats: Any, started: float) -> None:
        """Write one generation (individuals, stats, RNG state) in one transaction."""
        fits = [self.evaluator.scalar(ind) for ind in pop]
        ranks = pareto_ranks(pop) if self.multi else None
        best = max(fits)
        if best > self.best_so_far + self.cfg.min_tol:
            self.best_so_far, self.stall = best, 0
        else:
            self.stall += 1
        rows = []
        for pos, ind in enumerate(pop):
            o = ind.origin
            rows.append(
                {
                    "text": self.text_of(ind),
                    "token_ids": list(ind),
                    "fitness": fits[pos],
                    "op": o.op,
                    "parents": [p for p in o.parents if p is not None],
                    "span": o.span,
                    "detail": o.detail,
                    "position": pos,
                }
            )
            if ranks is not None:
                rows[-1]["objectives"] = list(ind.fitness.values)
                rows[-1]["pareto_rank"] = ranks[pos]
        mean = sum(fits) / len(fits)
        state = {
            "best_so_far": self.best_so_far,
            "stall": self.stall,
            "stopped": bool(self.cfg.patience and self.stall >= self.cfg.patience),
            "unkept_ids": [ids for ids, _ in self.unkept],
        }
        scored = [(list(ind), ind.scores) for ind in pop] + self.unkept
        self.unkept = []
        seconds = time.perf_counter() - started
        ids = self.store.write_generation(
            self.run_id,
            gen,
            rows,
            {
                "best": best,
                "mean": mean,
                "std": (sum((f - mean) ** 2 for f in fits) / len(fits)) ** 0.5,
                "worst": min(fits),
                "n_evaluated": stats.n_evaluated,
                "n_cache_hits": stats.n_cache_hits,
                "n_unique": len({tuple(ind) for ind in pop}),
                "best_individual_id": None,
                "seconds": seconds,
            },
            rng_state=get_rng_state(),
            state=state,
            scores=[r for ids, scores in scored for r in self.score_records(ids, scores)],
        )
        for ind, db_id in zip(pop, ids, strict=True):
            ind.db_id = db_id
        if self.progress is not None:
            top = pop[max(range(len(pop)), key=fits.__getitem__)]
            self.progress(
                GenerationReport(
                    run_id=self.run_id,
                    generation=gen,
                    generations=self.cfg.generations,
                    best=best,
                    mean=mean,
                    best_text=self.text_of(top),
                    n_evaluated=stats.n_evaluated,
                    n_cache_hits=stats.n_cache_hits,
                    seconds=seconds,
                )
            )


def _best_distinct(pop: Sequence[Individual], k: int) -> list[Individual]:
    """The k fittest, preferring distinct texts so survivors do not collapse to clones."""
    ranked = sorted(pop, key=lambda ind: ind.fitness.values[0], reverse=True)
    seen: set[tuple[int, ...]] = set()
    distinct, repeats = [], []
    for ind in ranked:
        (repeats if tuple(ind) in seen else distinct).append(ind)
        seen.add(tuple(ind))
    return (distinct + repeats)[:k]


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value

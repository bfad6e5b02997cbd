"""The recorder: the one piece of a run that talks to the store.

The GA (`evolve.ga.engine`) knows nothing of SQLite; a `Recorder` plugs into it as its
`record` hook:

- it creates the run row (config, models, fitness label) and owns the run's status:
  ``running`` while a process works on it, then ``finished``, ``interrupted`` or ``failed``;
- it writes each generation in one transaction (individuals, parents, operator and span,
  statistics, the random state, the loop state, and every model score computed in that
  generation into the `scores` table, the one record of model scores; with islands, each
  individual's island and the generation's migrations) and hands the engine the new row ids;
- it reads back what a resume needs: the last population, its loop and random state, and
  every score the run stored (`evolve.ga.evaluate` says why that keeps resume exact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from evolve.ga.config import RunConfig
from evolve.ga.engine import Engine, Generation
from evolve.ga.individual import Individual
from evolve.store import LogStore
from evolve.store.scores import score_row, to_token_scores
from scoring.errors import UserError
from scoring.results import TokenScores


@dataclass(frozen=True)
class RunLabels:
    """What a researcher calls a run: a name, tags and a note (none of them is needed)."""

    name: str | None = None
    tags: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class ResumePoint:
    """What the engine needs to continue a run after its last stored generation."""

    number: int
    population: list[Individual]
    best_so_far: float
    stall: int
    rng_state: str
    scores: dict[str, dict[str, TokenScores]]  # every score the run stored, by text and scorer


class Recorder:
    """Records one run: `__call__` is the engine's `record` hook."""

    def __init__(self, store: LogStore, run_id: int) -> None:
        self.store = store
        self.run_id = run_id
        self.prompt = str(store.run(run_id)["prompt"])

    @classmethod
    def create(
        cls,
        store: LogStore,
        cfg: RunConfig,
        fitness_label: str,
        labels: RunLabels | None = None,
    ) -> Recorder:
        labels = labels or RunLabels()
        run_id = store.create_run(
            prompt=cfg.prompt,
            seed=cfg.seed,
            config=cfg.to_dict(),
            mlm=cfg.mlm,
            causal=cfg.causal,
            fitness=fitness_label,
            name=labels.name,
            tags=labels.tags,
            note=labels.note,
        )
        return cls(store, run_id)

    @staticmethod
    def config_of(store: LogStore, run_id: int) -> RunConfig:
        """A stored run's config (UserError if this version cannot read it)."""
        return RunConfig.from_dict(store.run(run_id)["config"]).validate()

    # -- the hook -------------------------------------------------------------------------

    def __call__(self, gen: Generation) -> list[int]:
        rows = []
        for pos, ind in enumerate(gen.population):
            o = ind.origin
            row: dict[str, Any] = {
                "text": gen.texts[pos],
                "token_ids": list(ind),
                "fitness": gen.fitness[pos],
                "op": o.op,
                "parents": [p for p in o.parents if p is not None],
                "span": o.span,
                "detail": o.detail,
                "position": pos,
            }
            if gen.pareto_ranks is not None:
                row["objectives"] = list(ind.fitness.values)
                row["pareto_rank"] = gen.pareto_ranks[pos]
            if gen.islands is not None:
                row["island"] = gen.islands[pos]
            rows.append(row)
        return self.store.write_generation(
            self.run_id,
            gen.number,
            rows,
            {
                "best": gen.best,
                "mean": gen.mean,
                "std": gen.std,
                "worst": gen.worst,
                "n_evaluated": gen.stats.n_evaluated,
                "n_cache_hits": gen.stats.n_cache_hits,
                "n_unique": len({tuple(ind) for ind in gen.population}),
                "best_individual_id": None,
                "seconds": gen.seconds,
            },
            rng_state=gen.rng_state,
            state={"best_so_far": gen.best_so_far, "stall": gen.stall, "stopped": gen.stopped},
            scores=[
                score_row(new.text, self.prompt, new.scorer, new.score) for new in gen.new_scores
            ],
            migrations=[
                {
                    "individual_id": m.individual_id,
                    "from_island": m.from_island,
                    "to_island": m.to_island,
                }
                for m in gen.migrations
                if m.individual_id is not None
            ],
        )

    # -- statuses -------------------------------------------------------------------------

    def claim(self) -> None:
        """Make this process the run's owner (refused while another live process runs it)."""
        self.store.set_status(self.run_id, "running")

    def finished(self) -> None:
        self.store.finish_run(self.run_id, "finished")

    def interrupted(self) -> int:
        """Mark the run interrupted; returns its last stored generation (-1: none)."""
        last = self.store.last_generation(self.run_id)
        self.store.set_status(self.run_id, "interrupted")
        return last["generation"] if last else -1

    def failed(self, exc: BaseException) -> None:
        self.store.set_status(self.run_id, "failed", error=f"{type(exc).__name__}: {exc}")

    # -- resume ---------------------------------------------------------------------------

    def resume_point(self, engine: Engine) -> ResumePoint | None:
        """The last stored generation as the engine's objects; None if there is none."""
        last = self.store.last_generation(self.run_id)
        if last is None:
            return None
        if last["rng_state"] is None:
            raise UserError(
                f"run {self.run_id} has no usable random state for generation "
                f"{last['generation']} (an old pickled state that could not be read safely); "
                "it cannot be resumed exactly"
            )
        state = last["state"]
        if isinstance(state, str):
            state = json.loads(state)
        pop = []
        for row in self.store.population(self.run_id, last["generation"]):
            ind = engine.make(row["token_ids"])
            if engine.multi:
                ind.fitness.values = tuple(row["objectives"])
            else:
                ind.fitness.values = (row["fitness"],)
            ind.scores = {name: to_token_scores(s) for name, s in row["scores"].items()}
            ind.db_id = row["id"]
            pop.append(ind)
        missing = set(engine.objective.scorers) - set(pop[0].scores if pop else ())
        if missing:
            raise UserError(
                f"run {self.run_id} lacks stored scores under {', '.join(sorted(missing))}; "
                "it cannot be resumed exactly"
            )
        return ResumePoint(
            number=last["generation"],
            population=pop,
            best_so_far=float(state["best_so_far"]),
            stall=int(state["stall"]),
            rng_state=last["rng_state"],
            scores={
                text: {name: to_token_scores(row) for name, row in by_scorer.items()}
                for text, by_scorer in self.store.scores_for_run(self.run_id).items()
            },
        )

"""The Python API: evolve a run, resume it, and read it back, from a notebook or a script.

    from evolve import RunConfig, run_ga
    run = run_ga(RunConfig(prompt="Cheddar is", population=8, generations=3, seed=0))
    run.best(5)          # [Candidate(id, generation, text, fitness, scores), ...]
    run.records()        # one plain dict per individual (pandas.DataFrame(run.records()))
    run.lineage(run.best(1)[0].id)   # ancestry with the edits
    run.rescore(scorer)  # any scoring.Scorer; stored and cached like the run's own scores

`run_ga` records into an in-memory store unless ``db=`` names a file (or passes a
`LogStore` or a `sqlite_utils.Database`). The caller's global random states are given back
after a run (`evolve.ga.seeding.rng_scope`), so a notebook's own random numbers are not
disturbed. The CLI uses `start_run` / `resume_run`, which add a progress callback and
translate Ctrl-C into `RunInterrupted`.

With ``cfg.workers.workers > 0`` the run's model work goes to Ray workers
(`evolve.ga.workers`), started before the run is recorded (so a Ray that cannot start leaves
no run behind) and stopped when it ends. A resume may use another worker count than the
run started with (``workers=``): the result does not depend on it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evolve.ga.config import RunConfig, WorkersConfig
from evolve.ga.engine import Engine, Generation, Hook
from evolve.ga.population import StartText, StartTexts
from evolve.ga.seeding import rng_scope
from evolve.ga.workers import open_workers
from evolve.store import LogStore
from evolve.store.recorder import Recorder, RunLabels
from evolve.store.scores import ScoreBook
from scoring.base import Scorer
from scoring.decoding import Decoding, decode, prompt_ids
from scoring.errors import UserError
from scoring.models import check_kind, load_causal


class RunInterrupted(Exception):
    """Ctrl-C (or SIGTERM) during a run: the store holds every completed generation."""

    def __init__(self, run_id: int, generation: int) -> None:
        super().__init__(f"run {run_id} interrupted after generation {generation}")
        self.run_id = run_id
        self.generation = generation


@dataclass(frozen=True)
class GenerationReport:
    """What a progress callback gets after each generation."""

    run_id: int
    generation: int
    generations: int
    best: float
    mean: float
    best_text: str
    n_evaluated: int
    n_cache_hits: int
    seconds: float


Progress = Callable[[GenerationReport], None]


@dataclass(frozen=True)
class Candidate:
    """One stored individual as a notebook sees it."""

    id: int
    generation: int
    text: str
    fitness: float
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # by scorer name


@dataclass
class RunSummary:
    run_id: int
    status: str
    generations_done: int
    best: list[dict[str, Any]] = field(default_factory=list)  # best distinct texts


class Run:
    """A recorded run in a store: read it back, extend its scores."""

    def __init__(self, store: LogStore, run_id: int) -> None:
        self.store = store
        self.id = run_id

    @property
    def config(self) -> RunConfig:
        return Recorder.config_of(self.store, self.id)

    @property
    def status(self) -> str:
        return str(self.store.run(self.id)["status"])

    def best(self, n: int = 5) -> list[Candidate]:
        """The n fittest distinct texts of the run."""
        return [
            Candidate(
                id=row["id"],
                generation=row["generation"],
                text=row["text"],
                fitness=row["fitness"],
                scores=row["scores"],
            )
            for row in self.store.best(self.id, n)
        ]

    def generations(self) -> list[dict[str, Any]]:
        """Statistics per generation (best, mean, std, worst, evaluations, seconds)."""
        return self.store.generation_stats(self.id)

    def records(self) -> list[dict[str, Any]]:
        """Every individual of the run as a flat dict (DataFrame-ready), in generation and
        population order: id, generation, position, text, fitness, op, span, parents, and
        one ``<scorer>`` column (total) and ``<scorer>/mean`` per scorer."""
        rows = self.store.individuals(self.id)
        out = []
        for row in rows:
            flat = {k: v for k, v in row.items() if k != "scores"}
            for name, s in row["scores"].items():
                flat[name] = s["total"]
                flat[f"{name}/mean"] = s["mean"]
            out.append(flat)
        return out

    def migrations(self) -> list[dict[str, Any]]:
        """Every migration of an island run: generation, individual_id, from/to island."""
        return self.store.migrations(self.id)

    def lineage(self, individual_id: int, max_depth: int | None = None) -> list[dict[str, Any]]:
        """Every ancestor of an individual (itself at depth 0) with the edit that made it."""
        return self.store.lineage(individual_id, max_depth)

    def rescore(self, scorer: Scorer) -> dict[str, dict[str, Any]]:
        """Score every text of the run under `scorer` (only texts without a stored score
        under its name are computed); returns {text: stored score}."""
        texts = sorted({r["text"] for r in self.store.individuals(self.id)})
        book = ScoreBook(self.store, self.store.run(self.id)["prompt"], lambda _name: scorer)
        return book.get(scorer.name, texts)


def _open(db: LogStore | str | Path | Any | None) -> LogStore:
    if isinstance(db, LogStore):
        return db
    return LogStore(":memory:" if db is None else db)


def baseline_starts(store: LogStore, run_id: int, cfg: RunConfig, engine: Engine) -> StartTexts:
    """Generation 0 from the causal LM's own decoding of the prompt (`scoring.decoding`):
    beam search with one beam per member, greedy, or samples (one seed each, from the run's);
    the texts are stored as the run's baselines, which `evolve compare` measures it against."""

    def starts(method: str, n: int) -> Sequence[StartText]:
        lm = engine.models.causal or load_causal(cfg.causal, device=cfg.device)
        decoding = Decoding(
            new_tokens=cfg.init_len, num_beams=n, num_return_sequences=n, samples=n, seed=cfg.seed
        ).validate()
        ids = prompt_ids(lm, cfg.prompt, decoding.new_tokens, cfg.causal)
        out: list[StartText] = []
        for seed in decoding.seeds(sampled=method == "sample"):
            made = store.stored_or_new_baselines(
                cfg.prompt,
                method,
                cfg.causal,
                decoding.params(method),
                seed,
                decoding.texts_per_call(method),
                functools.partial(decode, lm, ids, method, decoding, seed),
                run_id=run_id,
            )
            out.extend(StartText(text, {"baseline_id": i}) for i, text, _ in made)
        return out

    return starts


def _progress_hook(run_id: int, cfg: RunConfig, progress: Progress) -> Hook:
    def hook(gen: Generation) -> None:
        progress(
            GenerationReport(
                run_id=run_id,
                generation=gen.number,
                generations=cfg.generations,
                best=gen.best,
                mean=gen.mean,
                best_text=gen.best_text,
                n_evaluated=gen.stats.n_evaluated,
                n_cache_hits=gen.stats.n_cache_hits,
                seconds=gen.seconds,
            )
        )

    return hook


def _drive(recorder: Recorder, generations: Iterator[Generation]) -> None:
    """Run the generator to its end, keeping the run's status true whatever happens."""
    try:
        for _ in generations:
            pass
    except KeyboardInterrupt:
        last = recorder.interrupted()
        raise RunInterrupted(recorder.run_id, last) from None
    except BaseException as exc:
        recorder.failed(exc)
        raise
    recorder.finished()


def _summary(store: LogStore, run_id: int) -> RunSummary:
    record = store.run(run_id)
    return RunSummary(run_id, record["status"], record["generations_done"], store.best(run_id, 5))


def start_run(
    cfg: RunConfig,
    store: LogStore,
    progress: Progress | None = None,
    hooks: Sequence[Hook] = (),
    labels: RunLabels | None = None,
) -> RunSummary:
    """Create a run in the store (with its name, tags and note) and evolve it to the end
    (or until early stopping)."""
    cfg.validated()
    if not cfg.uses_causal:  # recorded as the run's judge: refuse a wrong kind now, not later
        check_kind(cfg.causal, "causal")
    with open_workers(cfg) as pool:
        engine = Engine.build(cfg, pool=pool)
        recorder = Recorder.create(store, cfg, engine.fitness_label, labels)
        engine.start_texts = baseline_starts(store, recorder.run_id, cfg, engine)
        extra = [*hooks, *([_progress_hook(recorder.run_id, cfg, progress)] if progress else [])]
        with rng_scope(cfg.seed):
            _drive(recorder, engine.run(recorder, extra))
    return _summary(store, recorder.run_id)


def extended_config(store: LogStore, run_id: int, generations: int | None) -> RunConfig:
    """The config a resume continues to: the stored one, with `generations` if given.

    Without `generations` a finished run has nothing left to do. With it, the run is
    extended as if it had been started with that many generations (the loop's bound is the
    only use of the count, and each generation's random state is stored), so it must not be
    below the generations the run has, nor extend a run that stopped early (patience)."""
    record = store.run(run_id)
    cfg = Recorder.config_of(store, run_id)
    if generations is None:
        if record["status"] == "finished":
            raise UserError(
                f"run {run_id} already finished; `evolve resume {run_id} --generations N` "
                "extends it to N generations"
            )
        return cfg
    last = store.last_generation(run_id)
    done = last["generation"] if last else 0
    if generations < done:
        raise UserError(
            f"run {run_id} already has {done} generations; --generations must be at least that"
        )
    if last and last["state"].get("stopped"):
        raise UserError(
            f"run {run_id} stopped early at generation {done} (no gain for patience "
            f"{cfg.patience} generations); more generations would not change it"
        )
    if record["status"] == "finished" and generations <= cfg.generations:
        raise UserError(
            f"run {run_id} already finished its {cfg.generations} generations; give "
            f"--generations above {cfg.generations} to extend it"
        )
    return dataclasses.replace(cfg, generations=generations).validate()


def resume_run(
    run_id: int,
    store: LogStore,
    progress: Progress | None = None,
    hooks: Sequence[Hook] = (),
    generations: int | None = None,
    workers: WorkersConfig | None = None,
) -> RunSummary:
    """Continue an interrupted run from its last completed generation, exactly; with
    `generations`, extend a finished or interrupted run to that many generations, exactly
    as if it had been started with them (the stored config records the new count); with
    ``workers`` on those workers (None: in this process), whatever the run started with."""
    cfg = extended_config(store, run_id, generations)
    cfg = dataclasses.replace(cfg, workers=workers or WorkersConfig()).validate()
    recorder = Recorder(store, run_id)
    with open_workers(cfg) as pool:
        engine = Engine.build(cfg, pool=pool)
        engine.start_texts = baseline_starts(store, run_id, cfg, engine)
        recorder.claim()  # refused while another live process runs it
        if generations is not None:
            store.set_config(run_id, cfg.to_dict())
        _resume(recorder, engine, cfg, run_id, progress, hooks)
    return _summary(store, run_id)


def _resume(
    recorder: Recorder,
    engine: Engine,
    cfg: RunConfig,
    run_id: int,
    progress: Progress | None,
    hooks: Sequence[Hook],
) -> None:
    extra = [*hooks, *([_progress_hook(run_id, cfg, progress)] if progress else [])]
    with rng_scope(cfg.seed):
        point = recorder.resume_point(engine)
        if point is None:  # interrupted before generation 0 was written: start afresh
            gens = engine.run(recorder, extra)
        else:
            gens = engine.resume(
                point.population,
                point.number,
                point.best_so_far,
                point.stall,
                point.rng_state,
                point.scores,
                recorder,
                extra,
            )
        _drive(recorder, gens)


def run_ga(
    cfg: RunConfig,
    db: LogStore | str | Path | Any | None = None,
    *,
    progress: Progress | None = None,
    hooks: Sequence[Hook] = (),
) -> Run:
    """Evolve `cfg` and return the recorded `Run` (in memory unless `db` is given)."""
    store = _open(db)
    summary = start_run(cfg, store, progress, hooks)
    return Run(store, summary.run_id)


def resume_ga(
    run_id: int,
    db: LogStore | str | Path | Any,
    *,
    progress: Progress | None = None,
    hooks: Sequence[Hook] = (),
    generations: int | None = None,
    workers: WorkersConfig | None = None,
) -> Run:
    """Continue an interrupted run in `db` (or extend it to `generations`) and return it
    (on ``workers`` if given)."""
    store = _open(db)
    resume_run(run_id, store, progress, hooks, generations, workers)
    return Run(store, run_id)


__all__ = [
    "Candidate",
    "GenerationReport",
    "Run",
    "RunInterrupted",
    "RunLabels",
    "RunSummary",
    "resume_ga",
    "resume_run",
    "run_ga",
    "start_run",
]

"""Scale-out: the model work of each generation on Ray workers, with the same result as in
one process.

The driver (the process running the engine) keeps everything that decides the run:
selection, the operators' random choices, the random stream, and the record of the run (one
SQLite writer). What costs time is model work, and it goes through two seams:

- proposing: every `Proposer.fill` goes through `DrivenProposer`, which first gives each
  request its own seed, drawn from the driver's torch RNG in request order. A request then
  samples from its own generator (`FillRequest.seed`), so its fill does not depend on which
  requests share its batch or its worker;
- scoring: every `Scorer.score_ids` of the evaluator goes through `ShardedScorer`.

Without workers both call the local proposer and scorers (in this process, no Ray import).
With ``--workers N`` (`WorkerPool`), each of N Ray actors loads its own copy of the run's
models once (`Models.load` in the worker, ``--gpus-per-worker``, ``--threads-per-worker``)
and the driver cuts each call into N contiguous shards (`shards`), one per worker, gathered
in order. Worker-count invariance follows: the same seed gives the same texts and parents
with no Ray, 1 worker or N; scores agree within ~1e-6, as batched PLL differs in the last
float bits with the company a text keeps in its batch (`evolve.ga.evaluate`), which only a
tie within that margin could turn into another selection.

Faults: a worker that dies (its process killed, its node lost) is replaced by a new actor and
its shard sent again; shards are pure functions of their input, so the generation comes out
the same. Ray missing, unable to start, an unreachable address, or more GPUs or CPUs asked
for than the cluster has are `UserError`s (one line, exit 2) raised before a run is recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from evolve.ga.config import RunConfig, WorkersConfig
from evolve.ga.proposers import FillRequest, Proposer
from evolve.ga.proposers.base import FillOverloads
from evolve.ga.wiring import Models, make_proposer, make_scorers
from scoring.base import Scorer
from scoring.devices import check_device
from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.results import TokenScores

SEED_BOUND = 2**62  # request seeds are drawn in [0, SEED_BOUND): any torch.Generator seed
RETRIES = 3  # replacements of a dead worker for one shard before the run fails


def shards(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into at most `parts` contiguous, non-empty pieces whose sizes differ
    by at most one (larger ones first): the same cut for the same (n, parts), always."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        out.append(range(start, start + size))
        start += size
    return [r for r in out if len(r)]


class _Worker:
    """One worker: its own copy of the run's models, proposer and scorers. Runs inside a Ray
    actor (`WorkerPool`); pure functions of their arguments, so a retried shard gives the
    same answer. Each call answers (seconds it computed, result), for the pool's timing."""

    def __init__(self, config: dict[str, Any], threads: int) -> None:
        torch.set_num_threads(threads)
        cfg = RunConfig.from_dict(config)
        check_device(cfg.device)  # the worker's machine, not the driver's
        models = Models.load(cfg)
        self.proposer = make_proposer(cfg, models.representation_lm(cfg))
        self.scorers = {s.name: s for s in make_scorers(cfg, models)}

    def pid(self) -> int:
        return os.getpid()

    def fill(self, requests: list[FillRequest], return_logq: bool) -> tuple[float, Any]:
        started = time.perf_counter()
        if return_logq:
            out: Any = self.proposer.fill(requests, return_logq=True)
        else:
            out = self.proposer.fill(requests)
        return time.perf_counter() - started, out

    def logprob_of(
        self, requests: list[FillRequest], targets: list[list[int]]
    ) -> tuple[float, list[float]]:
        started = time.perf_counter()
        out = self.proposer.logprob_of(requests, targets)
        return time.perf_counter() - started, out

    def score(
        self, name: str, continuations: list[list[int]], prefix_ids: list[int]
    ) -> tuple[float, list[TokenScores]]:
        started = time.perf_counter()
        out = self.scorers[name].score_ids(continuations, prefix_ids)
        return time.perf_counter() - started, out


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "--workers needs Ray, which is not installed here: pip install 'ray==2.60.0'"
        ) from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """UserError unless something listens at the Ray address (``auto``: the one RAY_ADDRESS
    names, if any). Ray itself retries an unreachable address for minutes."""
    addr = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if not addr or addr == "auto":
        return  # Ray looks for a cluster started on this machine and says so if none
    host, _, port = addr.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {addr!r} is not of the form host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {addr}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class WorkerPool:
    """N Ray actors serving fill and score shards (see the module docstring).

    `open` starts a local Ray (or joins ``ray_address``) unless Ray is already initialised
    in this process (then the caller's cluster is used and left running), checks the
    cluster's resources, and starts the actors; `close` stops the actors, and Ray if `open`
    started it.
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.wcfg: WorkersConfig = cfg.workers
        self._ray = _ray()
        self._started_ray = False
        self._actor_class: Any = None
        self.actors: list[Any] = []
        self.replaced = 0  # dead workers replaced so far
        # Timing (bench/scale.py): wall seconds the driver waited in `map`, and the sum over
        # calls of the busiest worker's compute seconds (the rest of the wait is transfer,
        # scheduling and imbalance).
        self.wait_seconds = 0.0
        self.critical_seconds = 0.0

    @classmethod
    def open(cls, cfg: RunConfig) -> WorkerPool:
        pool = cls(cfg)
        try:
            pool._start()
        except BaseException:
            pool.close()
            raise
        return pool

    @property
    def size(self) -> int:
        return len(self.actors)

    def _start(self) -> None:
        ray, w = self._ray, self.wcfg
        if w.ray_address:
            check_reachable(w.ray_address)
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
            }
            if w.ray_address:
                options["address"] = w.ray_address
            else:
                options["num_cpus"] = w.workers * w.threads_per_worker
            try:
                ray.init(**options)
            except Exception as exc:
                where = f"at {w.ray_address!r}" if w.ray_address else "locally"
                raise UserError(f"cannot start Ray {where}: {_first_line(exc)}") from None
            self._started_ray = True
        have = ray.cluster_resources()
        for kind, each in (("GPU", w.gpus_per_worker), ("CPU", float(w.threads_per_worker))):
            need = w.workers * each
            if need > have.get(kind, 0.0) + 1e-9:
                raise UserError(
                    f"{w.workers} workers x {each:g} {kind}s need {need:g} {kind}s; the Ray "
                    f"cluster has {have.get(kind, 0.0):g}"
                )
        self._actor_class = ray.remote(
            num_cpus=w.threads_per_worker, num_gpus=w.gpus_per_worker or 0
        )(_Worker)
        self.actors = [self._new_actor() for _ in range(w.workers)]
        try:  # wait until every worker has loaded its models (a load error surfaces here)
            ray.get([a.pid.remote() for a in self.actors])
        except Exception as exc:
            raise UserError(f"a Ray worker could not start: {_first_line(exc)}") from None

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self.cfg.to_dict(), self.wcfg.threads_per_worker)

    def pids(self) -> list[int]:
        """The process id of each worker (tests kill one to check recovery)."""
        return [int(pid) for pid in self._ray.get([a.pid.remote() for a in self.actors])]

    def map(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Call `method` on worker k with ``args[k]`` (all at once), results in order; a
        worker that died is replaced and its shard sent again (up to `RETRIES` times)."""
        ray = self._ray
        dead = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
        started = time.perf_counter()
        refs = [getattr(self.actors[k], method).remote(*a) for k, a in enumerate(args)]
        out = []
        busiest = 0.0
        for k, a in enumerate(args):
            for attempt in range(RETRIES + 1):
                try:
                    seconds, result = ray.get(refs[k])
                    out.append(result)
                    busiest = max(busiest, seconds)
                    break
                except dead as exc:
                    if attempt == RETRIES:
                        raise UserError(
                            f"Ray worker {k} died {RETRIES + 1} times on one shard: "
                            f"{_first_line(exc)}"
                        ) from None
                    with contextlib.suppress(Exception):
                        ray.kill(self.actors[k])
                    self.actors[k] = self._new_actor()
                    self.replaced += 1
                    refs[k] = getattr(self.actors[k], method).remote(*a)
        self.wait_seconds += time.perf_counter() - started
        self.critical_seconds += busiest
        return out

    def sharded(self, n: int, call: Callable[[range], tuple[Any, ...]], method: str) -> list:
        """Cut ``range(n)`` into one shard per worker, call `method` on each with the
        arguments ``call(shard)`` gives, and return the results shard by shard."""
        parts = shards(n, self.size)
        return self.map(method, [call(r) for r in parts])

    def close(self) -> None:
        ray = self._ray
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.actors = []
        if self._started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._started_ray = False


@contextlib.contextmanager
def open_workers(cfg: RunConfig) -> Iterator[WorkerPool | None]:
    """A `WorkerPool` for the run's ``workers`` setting (None without workers: no Ray)."""
    if cfg.workers.workers == 0:
        yield None
        return
    pool = WorkerPool.open(cfg)
    try:
        yield pool
    finally:
        pool.close()


class DrivenProposer(FillOverloads):
    """The proposer the operators see: seeds every request from the driver's torch RNG, then
    fills in this process or on the workers (see the module docstring)."""

    def __init__(self, local: Proposer, pool: WorkerPool | None = None) -> None:
        self.local = local
        self.pool = pool
        self.name = local.name

    def seeded(self, requests: Sequence[FillRequest]) -> list[FillRequest]:
        """The requests, each with a seed of its own (the driver's RNG, in request order)."""
        if not requests:
            return []
        seeds = torch.randint(0, SEED_BOUND, (len(requests),), dtype=torch.int64).tolist()
        return [dataclasses.replace(r, seed=int(s)) for r, s in zip(requests, seeds, strict=True)]

    def _fill(
        self, requests: Sequence[FillRequest], return_logq: bool
    ) -> list[list[int]] | tuple[list[list[int]], list[float]]:
        todo = self.seeded(requests)
        if self.pool is None or not todo:
            if return_logq:
                return self.local.fill(todo, return_logq=True)
            return self.local.fill(todo)
        parts = self.pool.sharded(len(todo), lambda r: ([todo[i] for i in r], return_logq), "fill")
        if not return_logq:
            return [row for part in parts for row in part]
        rows = [row for part in parts for row in part[0]]
        logq = [v for part in parts for v in part[1]]
        return rows, logq

    def logprob_of(
        self, requests: Sequence[FillRequest], targets: Sequence[Sequence[int]]
    ) -> list[float]:
        if self.pool is None or not requests:
            return self.local.logprob_of(requests, targets)
        reqs, tgts = list(requests), [list(t) for t in targets]
        parts = self.pool.sharded(
            len(reqs), lambda r: ([reqs[i] for i in r], [tgts[i] for i in r]), "logprob_of"
        )
        return [v for part in parts for v in part]


class ShardedScorer:
    """A scorer whose `score_ids` runs on the workers, one contiguous shard each; `name` and
    `lm` (tokenizer) are the local scorer's."""

    def __init__(self, local: Scorer, pool: WorkerPool) -> None:
        self.local = local
        self.pool = pool
        self.name: str = local.name
        self.lm: LoadedModel = local.lm

    def score_ids(
        self, continuations: Sequence[Sequence[int]], prefix_ids: Sequence[int] = ()
    ) -> list[TokenScores]:
        conts = [list(c) for c in continuations]
        if not conts:
            return []
        prefix = list(prefix_ids)
        parts = self.pool.sharded(
            len(conts), lambda r: (self.name, [conts[i] for i in r], prefix), "score"
        )
        return [s for part in parts for s in part]

    def score(self, texts: Sequence[str], prefix: str = "") -> list[TokenScores]:
        """By text: in this process (the run itself scores ids, on the workers)."""
        return self.local.score(texts, prefix)

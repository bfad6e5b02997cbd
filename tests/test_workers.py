"""Scale-out (issue 11): Ray workers, islands, worker-count invariance, faults, bad input.

One local Ray of 2 CPUs serves the whole module (`ray_cluster`); the runs join it (a pool
uses an initialised Ray and leaves it running), so Ray starts once. Models are the tiny
random ones from conftest, populations of 8 in 2 islands of 4.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import torch

from evolve import resume_ga, run_ga
from evolve.api import RunInterrupted
from evolve.ga.config import FitnessConfig, IslandConfig, MutationConfig, RunConfig, WorkersConfig
from evolve.ga.engine import Engine, Generation
from evolve.ga.islands import migrate, split
from evolve.ga.proposers import CausalProposer, MLMProposer
from evolve.ga.proposers.base import FillRequest
from evolve.ga.seeding import rng_scope
from evolve.ga.workers import open_workers, shards
from evolve.store import LogStore
from scoring.models import load_causal, load_mlm

PROMPT = "Cheddar is"


def config(mlm: str, **over: Any) -> RunConfig:
    base = RunConfig(
        prompt=PROMPT,
        population=8,
        generations=3,
        init_len=5,
        min_len=3,
        max_len=8,
        mlm=mlm,
        seed=11,
        device="cpu",
        mutation=MutationConfig(max_span=2, top_k=20),
        fitness=FitnessConfig(objective="pll"),
        island=IslandConfig(islands=2, migration_interval=2, migrants=1),
    )
    return dataclasses.replace(base, **over)


def on(cfg: RunConfig, workers: int) -> RunConfig:
    return dataclasses.replace(cfg, workers=WorkersConfig(workers=workers))


def summary(run: Any) -> list[tuple[Any, ...]]:
    """What must not depend on the worker count: each row's place, text, op, parents."""
    return [
        (r["generation"], r["position"], r["text"], r["op"], tuple(r["parents"]), r["island"])
        for r in run.records()
    ]


def fitness(run: Any) -> list[float]:
    return [r["fitness"] for r in run.records()]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tiny_bert_dir):
    """The reference: the island run with no Ray at all."""
    return run_ga(config(str(tiny_bert_dir)))


# -- without Ray --------------------------------------------------------------------------


def test_shards_are_contiguous_balanced_and_fixed() -> None:
    assert shards(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert shards(2, 4) == [range(0, 1), range(1, 2)]
    assert shards(0, 2) == []
    assert [i for r in shards(64, 5) for i in r] == list(range(64))


def test_a_seeded_request_fills_the_same_in_any_batch(tiny_bert_dir) -> None:
    lm = load_mlm(str(tiny_bert_dir))
    prop = MLMProposer(lm, top_k=20)
    ids = lm.tokenizer.encode("cheddar is yellow and tastes sharp when old")
    reqs = [FillRequest(tuple(ids), (2, 3, 4), seed=100 + k) for k in range(4)]
    alone = [prop.fill([r])[0] for r in reqs]
    torch.manual_seed(0)  # the global RNG plays no part
    together = prop.fill(list(reversed(reqs)))
    assert list(reversed(together)) == alone
    assert prop.fill(reqs[:1]) == alone[:1]


def test_islands_keep_their_size_and_record_migrations(in_process) -> None:
    recs = in_process.records()
    for g in range(4):
        rows = [r for r in recs if r["generation"] == g]
        assert [r["island"] for r in rows] == [0] * 4 + [1] * 4
    moves = in_process.migrations()
    assert {m["generation"] for m in moves} == {2}  # interval 2, generations 1..3
    assert sorted((m["from_island"], m["to_island"]) for m in moves) == [(0, 1), (1, 0)]
    island = {r["id"]: r["island"] for r in recs}
    for m in moves:
        assert island[m["individual_id"]] == m["from_island"]
        assert m["individual_id"] in {r["id"] for r in recs if r["generation"] == 1}
    # lineage crosses islands: some generation-2 child of island t has a parent in island f
    crossing = [
        r
        for r in recs
        if r["generation"] == 2 and any(island[p] != r["island"] for p in r["parents"])
    ]
    assert crossing
    child = crossing[0]
    assert {a["id"] for a in in_process.lineage(child["id"], 1)} >= set(child["parents"])


def test_ring_migration_moves_the_best_to_the_next_islands_worst(tiny_bert_dir) -> None:
    engine = Engine.build(config(str(tiny_bert_dir)))
    with rng_scope(0):
        pop = engine.initial_population()
        engine.evaluator.evaluate(pop)
    for k, ind in enumerate(pop):
        ind.db_id = 100 + k
    demes = split(pop, 2)
    best0 = max(demes[0], key=engine.evaluator.scalar)
    worst1 = min(demes[1], key=engine.evaluator.scalar)
    moves = migrate(demes, 1, engine.evaluator.scalar, engine.make)
    assert [(m.from_island, m.to_island) for m in moves] == [(1, 0), (0, 1)]
    arrived = [ind for ind in demes[1] if ind.origin.op == "migrate"]
    assert len(arrived) == 1 and list(arrived[0]) == list(best0)
    assert arrived[0].origin.parents == (best0.db_id,)
    assert all(ind is not worst1 for ind in demes[1]) and len(demes[1]) == 4


def test_a_run_without_workers_never_imports_ray(tiny_bert_dir) -> None:
    code = (
        "import sys\nfrom evolve import run_ga\nfrom evolve.ga.config import RunConfig\n"
        f"run_ga(RunConfig(prompt='Cheddar is', population=2, generations=1, init_len=3, "
        f"min_len=1, max_len=5, mlm={str(tiny_bert_dir)!r}, device='cpu'))\n"
        "assert 'ray' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-address", "auto"], "--ray-address needs --workers N"),
        (["--islands", "3"], "population 8 does not split into 3 islands"),
        (["--islands", "2", "--migrants", "4"], "migrants must be in [0, 4)"),
        (["--workers", "-1"], "workers must be >= 0"),
        (["--workers", "1", "--threads-per-worker", "0"], "threads_per_worker must be at least 1"),
    ],
)
def test_bad_scale_options_are_one_line(invoke, tmp_path, tiny_bert_dir, args, message) -> None:
    db = tmp_path / "runs.db"
    result = invoke(
        "run", "--prompt", PROMPT, "-p", "8", "-g", "1", "--mlm", tiny_bert_dir, "--db", db, *args
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not db.exists() or not LogStore(db).runs()


def test_missing_ray_is_one_line_and_no_run(invoke, tmp_path, tiny_bert_dir, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    db = tmp_path / "runs.db"
    result = invoke(
        "run", "--prompt", PROMPT, "-p", "4", "-g", "1", "--mlm", tiny_bert_dir, "--db", db,
        "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--workers needs Ray, which is not installed here" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not db.exists() or not LogStore(db).runs()


# -- with the module's Ray ------------------------------------------------------------------


def test_a_seeded_causal_request_fills_the_same_in_any_batch(tiny_gpt2_dir) -> None:
    """The causal proposer (fp32) too: a request's fill depends on its input and seed, not
    on the requests beside it in its batch (a worker gets a shard of them)."""
    lm = load_causal(str(tiny_gpt2_dir))
    prop = CausalProposer(lm, candidates=4, top_k=20)
    texts = [" yellow and tastes sharp when it is old", " white so you can see it at night"]
    reqs = []
    for k in range(4):
        ids = lm.tokenizer.encode("Cheddar is" + texts[k % 2])
        span = (3 + k, 4 + k)
        reqs.append(FillRequest(tuple(ids), span, seed=200 + k, avoid=tuple(ids[p] for p in span)))
    alone = [prop.fill([r])[0] for r in reqs]
    assert list(reversed(prop.fill(list(reversed(reqs))))) == alone


def test_same_causal_run_with_no_ray_and_two_workers(
    ray_cluster, tiny_bert_dir, tiny_gpt2_dir
) -> None:
    """A causal-proposer run (fp32, scored contexts reused up to each edit on whichever
    process has them) is the same with no Ray and with 2 workers."""
    gpt2 = str(tiny_gpt2_dir)
    cfg = config(
        str(tiny_bert_dir),
        causal=gpt2,
        proposer="causal",
        init="sample",
        fitness=FitnessConfig(objective="causal"),
        mutation=MutationConfig(max_span=2, top_k=20, candidates=4),
        island=IslandConfig(),
    )
    alone = run_ga(cfg)
    sharded = run_ga(on(cfg, 2))
    assert summary(sharded) == summary(alone)
    assert fitness(sharded) == pytest.approx(fitness(alone), abs=1e-5)


def test_same_run_with_no_ray_one_worker_and_two(ray_cluster, tiny_bert_dir, in_process) -> None:
    cfg = config(str(tiny_bert_dir))
    for n in (1, 2):
        run = run_ga(on(cfg, n))
        assert summary(run) == summary(in_process), n
        assert fitness(run) == pytest.approx(fitness(in_process), abs=1e-5)
        assert run.migrations() == in_process.migrations()
        assert run.config.workers.workers == n  # the stored config records the workers
    assert ray_cluster.is_initialized()  # a pool leaves a Ray it did not start running


def test_a_killed_worker_is_replaced_and_the_run_unchanged(ray_cluster, tiny_bert_dir) -> None:
    cfg = on(config(str(tiny_bert_dir)), 2)
    reference = Engine.build(config(str(tiny_bert_dir)))
    with rng_scope(cfg.seed):
        want = [gen.texts for gen in reference.run()]
    with open_workers(cfg) as pool:
        assert pool is not None
        killed: list[int] = []
        armed: list[bool] = []
        real_map = pool.map

        def map_killing(method: str, args: Any) -> list[Any]:
            # Mid-generation 2: its fills are done on the workers; before its scoring is sent,
            # worker 0's process is killed (kill -9), so its scoring shard fails and is retried.
            if armed and method == "score":
                armed.clear()
                pid = pool.pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return real_map(method, args)

        pool.map = map_killing  # type: ignore[method-assign]

        def arm(gen: Generation) -> None:
            if gen.number == 1:
                armed.append(True)

        engine = Engine.build(cfg, pool=pool)
        with rng_scope(cfg.seed):
            got = [gen.texts for gen in engine.run(hooks=[arm])]
        assert killed and pool.replaced >= 1
        assert killed[0] not in pool.pids()
    assert got == want


def test_a_ray_run_resumes_without_ray(ray_cluster, tiny_bert_dir, in_process, tmp_path) -> None:
    db = tmp_path / "runs.db"

    def stop_after_1(gen: Generation) -> None:
        if gen.number == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as stopped:
        run_ga(on(config(str(tiny_bert_dir)), 2), db, hooks=[stop_after_1])
    run = resume_ga(stopped.value.run_id, db)  # in this process, no workers
    assert run.status == "finished"
    assert summary(run) == summary(in_process)
    assert fitness(run) == pytest.approx(fitness(in_process), abs=1e-5)
    assert run.migrations() == in_process.migrations()


def test_more_gpus_than_the_cluster_has(ray_cluster, invoke, tmp_path, tiny_bert_dir) -> None:
    db = tmp_path / "runs.db"
    result = invoke(
        "run", "--prompt", PROMPT, "-p", "4", "-g", "1", "--mlm", tiny_bert_dir, "--db", db,
        "--workers", "2", "--gpus-per-worker", "1",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "2 workers x 1 GPUs need 2 GPUs; the Ray cluster has 0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not db.exists() or not LogStore(db).runs()


def test_an_unreachable_address_is_one_line(ray_cluster, invoke, tmp_path, tiny_bert_dir) -> None:
    db = tmp_path / "runs.db"
    result = invoke(
        "run", "--prompt", PROMPT, "-p", "4", "-g", "1", "--mlm", tiny_bert_dir, "--db", db,
        "--workers", "1", "--ray-address", "127.0.0.1:9",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not db.exists() or not LogStore(db).runs()

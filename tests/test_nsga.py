"""NSGA-II over (PLL, causal log-prob, diversity): sorting by hand, then a stored run."""

from __future__ import annotations

import dataclasses
import random

import pytest
from click.testing import CliRunner

from cli.main import cli
from evolve.api import RunInterrupted, resume_run, start_run
from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.ga.pareto import (
    ParetoIndividual,
    crowded_tournament,
    diversity,
    jaccard_distance,
    pareto_ranks,
    rank_and_crowding,
    set_diversity,
)
from evolve.store import LogStore

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"


def scored(*values: tuple[float, float, float]) -> list[ParetoIndividual]:
    pop = []
    for k, v in enumerate(values):
        ind = ParetoIndividual([k])
        ind.fitness.values = v
        pop.append(ind)
    return pop


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def test_nondominated_sorting_by_hand():
    pop = scored(
        (1.0, 1.0, 1.0),  # 0: front 0 (nothing is better in every objective)
        (3.0, 0.0, 0.0),  # 1: front 0 (best pll)
        (0.0, 0.0, 0.5),  # 2: dominated by 0 and by 3 -> front 2
        (0.5, 0.5, 0.5),  # 3: dominated by 0 -> front 1
        (0.4, 0.4, 0.4),  # 4: dominated by 3 -> front 2
        (2.0, 0.0, 0.0),  # 5: dominated by 1 -> front 1
        (1.0, 1.0, 1.0),  # 6: equal to 0, so not dominated -> front 0
    )
    assert pareto_ranks(pop) == [0, 0, 2, 1, 2, 1, 0]
    ranks, crowding = rank_and_crowding(pop)
    assert ranks == [0, 0, 2, 1, 2, 1, 0]
    assert crowding[3] == crowding[5] == float("inf")  # a front of two: both are boundaries


def test_crowded_tournament_prefers_lower_rank():
    pop = scored((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    random.seed(0)
    picks = crowded_tournament(pop, 50)
    # The dominated one wins only when it meets itself (about a quarter of the draws).
    assert 0 < sum(p is pop[1] for p in picks) < 25


def test_diversity_is_mean_jaccard_distance():
    assert jaccard_distance([1, 2, 3], [2, 3, 4]) == pytest.approx(1 - 2 / 4)
    assert jaccard_distance([1, 1], [1]) == 0.0
    assert jaccard_distance([], []) == 0.0
    d = diversity([[1, 2], [1, 2], [3, 4]])
    assert d == pytest.approx([0.5, 0.5, 1.0])
    assert diversity([[5]]) == [0.0]
    pop = scored((1.0, 2.0, 0.0), (1.0, 2.0, 0.0))
    pop[1][:] = [7]
    set_diversity(pop)
    assert [ind.fitness.values for ind in pop] == [(1.0, 2.0, 1.0), (1.0, 2.0, 1.0)]


def nsga_config(bert_dir, gpt2_dir, **over) -> RunConfig:
    base = RunConfig(
        prompt=PROMPT,
        population=6,
        generations=2,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=str(bert_dir),
        causal=str(gpt2_dir),
        seed=3,
        mutation=MutationConfig(max_span=2, top_k=20),
        fitness=FitnessConfig(objective="nsga2"),
    )
    return dataclasses.replace(base, **over)


def test_nsga2_run_stores_its_pareto_front(tmp_path, tiny_bert_dir, tiny_gpt2_dir):
    db = tmp_path / "nsga.db"
    store = LogStore(db)
    summary = start_run(nsga_config(tiny_bert_dir, tiny_gpt2_dir), store)
    run_id = summary.run_id
    assert store.run(run_id)["fitness"].startswith("nsga2(")
    for gen in range(3):
        rows = store.population(run_id, gen)
        assert len(rows) == 6
        objectives = [r["objectives"] for r in rows]
        assert all(len(o) == 3 for o in objectives)
        for r in rows:  # the stored scalar is pll + causal (weights 1, 1), for tables only
            assert r["fitness"] == pytest.approx(r["objectives"][0] + r["objectives"][1])
            pll = r["scores"][f"pll/original/{tiny_bert_dir}"]["mean"]
            causal = r["scores"][f"causal/{tiny_gpt2_dir}"]["mean"]
            assert r["objectives"][0] == pytest.approx(pll)
            assert r["objectives"][1] == pytest.approx(causal)
        # Rank 0 is exactly the set of members no other member dominates.
        front = {
            k
            for k, o in enumerate(objectives)
            if not any(dominates(other, o) for other in objectives)
        }
        assert {k for k, r in enumerate(rows) if r["pareto_rank"] == 0} == front
        assert all(r["pareto_rank"] is not None for r in rows)
    shown = store.pareto_front(run_id)
    last = store.population(run_id, 2)
    assert {f["text"] for f in shown} == {r["text"] for r in last if r["pareto_rank"] == 0}
    assert all(f["generation"] == 2 for f in shown)
    out = CliRunner().invoke(cli, ["show", str(run_id), "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "Pareto front (generation 2, nsga2)" in out.output
    assert "diversity" in out.output


def test_single_objective_run_has_no_front(tmp_path, tiny_bert_dir, tiny_gpt2_dir):
    store = LogStore(tmp_path / "single.db")
    cfg = nsga_config(tiny_bert_dir, tiny_gpt2_dir, generations=1, fitness=FitnessConfig())
    run_id = start_run(cfg, store).run_id
    assert store.pareto_front(run_id) == []
    assert {r["pareto_rank"] for r in store.population(run_id, 1)} == {None}


def test_nsga2_resume_equals_uninterrupted(tmp_path, tiny_bert_dir, tiny_gpt2_dir):
    cfg = nsga_config(tiny_bert_dir, tiny_gpt2_dir, generations=3)
    whole = LogStore(tmp_path / "whole.db")
    ref = start_run(cfg, whole).run_id
    store = LogStore(tmp_path / "cut.db")

    def stop_after_gen_1(report):
        if report.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        start_run(cfg, store, stop_after_gen_1)
    resume_run(info.value.run_id, store)

    def last(s: LogStore, run_id: int) -> list[tuple]:
        return [
            (tuple(r["token_ids"]), r["fitness"], tuple(r["objectives"]), r["pareto_rank"])
            for r in s.population(run_id, 3)
        ]

    assert last(store, info.value.run_id) == last(whole, ref)


def test_nsga2_with_typicality_keeps_four_objectives(tmp_path, tiny_bert_dir, tiny_gpt2_dir):
    """--typical-weight > 0 makes typicality a third model objective before diversity; a
    three-weight fitness had silently dropped it (DEAP zips values with weights)."""
    ind = ParetoIndividual([1], objectives=4)
    ind.fitness.values = (1.0, 2.0, 3.0, 0.0)
    set_diversity([ind])
    assert ind.fitness.values == (1.0, 2.0, 3.0, 0.0) and len(ind.fitness.wvalues) == 4

    db = tmp_path / "typ.db"
    store = LogStore(db)
    fitness = FitnessConfig(objective="nsga2", typical_weight=0.5)
    run_id = start_run(nsga_config(tiny_bert_dir, tiny_gpt2_dir, fitness=fitness), store).run_id
    for gen in range(3):
        rows = store.population(run_id, gen)
        for r in rows:
            pll, causal, typical, div = r["objectives"]
            assert typical == pytest.approx(
                r["scores"][f"typical/pll/original/{tiny_bert_dir}"]["mean"]
            )
            assert 0.0 <= div <= 1.0
        objectives = [r["objectives"] for r in rows]
        front = {
            k
            for k, o in enumerate(objectives)
            if not any(dominates(other, o) for other in objectives)
        }
        assert {k for k, r in enumerate(rows) if r["pareto_rank"] == 0} == front
    out = CliRunner().invoke(cli, ["show", str(run_id), "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "typical" in out.output.split("Pareto front")[1].splitlines()[1]

"""The Python API (evolve.api): a run in memory, read back as a notebook would."""

from __future__ import annotations

import random

import pytest
import sqlite_utils

from evolve import RunConfig, run_ga
from evolve.api import RunInterrupted, resume_ga
from evolve.ga.config import FitnessConfig, MutationConfig
from evolve.store import LogStore
from scoring import CausalScorer, load_causal

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"


def config(bert: str, **over) -> RunConfig:
    base = dict(
        prompt=PROMPT,
        population=4,
        generations=2,
        init_len=4,
        min_len=3,
        max_len=6,
        mlm=bert,
        seed=5,
        mutation=MutationConfig(max_span=1, top_k=10),
    )
    return RunConfig(**{**base, **over})


def test_run_ga_in_memory_and_read_back(tiny_bert_dir, tiny_gpt2_dir):
    random.seed(99)
    expected_next = random.random()
    random.seed(99)
    run = run_ga(config(str(tiny_bert_dir), causal=str(tiny_gpt2_dir)))
    assert random.random() == expected_next  # the caller's RNG is given back
    assert run.store.path is None and run.status == "finished"
    best = run.best(2)
    assert len(best) == 2 and best[0].fitness >= best[1].fitness
    assert best[0].text != best[1].text
    pll = f"pll/original/{tiny_bert_dir}"
    assert best[0].scores[pll]["mean"] == pytest.approx(best[0].fitness)
    records = run.records()
    assert len(records) == 4 * 3  # generations 0..2
    assert {"id", "generation", "text", "fitness", pll, f"{pll}/mean"} <= set(records[0])
    lineage = run.lineage(best[0].id)
    assert lineage[0]["id"] == best[0].id and lineage[-1]["generation"] == 0
    # Rescoring under another scorer stores its scores beside the run's own.
    judge = CausalScorer(load_causal(str(tiny_gpt2_dir)))
    scores = run.rescore(judge)
    assert set(scores) == {r["text"] for r in records}
    assert judge.name in run.best(1)[0].scores
    assert run.rescore(judge) == scores  # stored: nothing is computed twice
    assert len(run.generations()) == 3


def test_run_ga_on_an_injected_database_and_resume_ga(tmp_path, tiny_bert_dir):
    db = sqlite_utils.Database(tmp_path / "api.db")
    cfg = config(str(tiny_bert_dir), generations=3)

    def stop(report):
        if report.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        run_ga(cfg, db, progress=stop)
    run = resume_ga(info.value.run_id, LogStore(db))
    assert run.status == "finished"
    whole = run_ga(cfg)  # the same seed and config, never interrupted
    assert [c.text for c in run.best(3)] == [c.text for c in whole.best(3)]
    assert [c.fitness for c in run.best(3)] == pytest.approx([c.fitness for c in whole.best(3)])


def test_a_bf16_causal_run_resumes_in_bf16_and_repeats(tiny_bert_dir, tiny_gpt2_dir):
    """--proposer-dtype bf16 is stored with the run: its resume proposes in bf16 too, and
    (same worker count) an interrupted bf16 run resumed equals an uninterrupted one."""
    gpt2 = str(tiny_gpt2_dir)
    fitness = FitnessConfig(objective="causal")
    mutation = MutationConfig(max_span=2, top_k=10, proposer_dtype="bf16")
    cfg = config(
        str(tiny_bert_dir),
        causal=gpt2,
        proposer="causal",
        init="sample",
        fitness=fitness,
        mutation=mutation,
        generations=3,
    )

    def stop(report):
        if report.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        run_ga(cfg, progress=stop, db=(store := LogStore(":memory:")))
    assert store.run(info.value.run_id)["config"]["mutation"]["proposer_dtype"] == "bf16"
    resumed = resume_ga(info.value.run_id, store)
    whole = run_ga(cfg)
    assert [c.text for c in resumed.best(3)] == [c.text for c in whole.best(3)]

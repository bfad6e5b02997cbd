"""The generation loop (evolve.ga.engine) on a tiny random BERT: records, elitism, seeds."""

from __future__ import annotations

import dataclasses

import pytest

from evolve.api import RunInterrupted, resume_run, start_run
from evolve.ga.config import ConfigError, MutationConfig, RunConfig
from evolve.store import LogStore
from scoring.errors import UserError

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"


def small_config(mlm: str, **over) -> RunConfig:
    base = RunConfig(
        prompt=PROMPT,
        population=6,
        generations=3,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=mlm,
        seed=7,
        mutation=MutationConfig(max_span=2, top_k=20),
    )
    return dataclasses.replace(base, **over)


def final_population(store: LogStore, run_id: int) -> list[tuple[tuple[int, ...], float]]:
    last = store.last_generation(run_id)
    return [
        (tuple(r["token_ids"]), r["fitness"]) for r in store.population(run_id, last["generation"])
    ]


def test_run_writes_every_generation_with_lineage(tmp_path, tiny_bert_dir):
    store = LogStore(tmp_path / "r.db")
    reports = []
    summary = start_run(small_config(str(tiny_bert_dir)), store, reports.append)
    assert summary.status == "finished"
    assert [r.generation for r in reports] == [0, 1, 2, 3]
    stats = store.generation_stats(summary.run_id)
    assert [s["generation"] for s in stats] == [0, 1, 2, 3]
    bests = [s["best"] for s in stats]
    assert all(b2 >= b1 - 1e-9 for b1, b2 in zip(bests, bests[1:], strict=False)), bests
    run = store.run(summary.run_id)
    assert run["status"] == "finished" and run["generations_done"] == 3
    pop = store.population(summary.run_id, 3)
    assert len(pop) == 6
    assert all(3 <= len(r["token_ids"]) <= 10 for r in pop)
    # Every individual after generation 0 points at parents in earlier generations.
    cols, rows = store.query(
        "SELECT COUNT(*) FROM individuals i WHERE generation > 0 AND NOT EXISTS "
        "(SELECT 1 FROM parents p WHERE p.child_id = i.id)"
    )
    assert rows[0][0] == 0
    ops = {r[0] for r in store.query("SELECT DISTINCT op FROM individuals")[1]}
    assert "init" in ops and "elite" in ops
    assert any(op.startswith(("mut_", "cx_")) for op in ops), ops
    best = summary.best[0]
    ancestry = store.lineage(best["id"])
    assert ancestry[0]["depth"] == 0
    assert max(a["depth"] for a in ancestry) == best["generation"]  # back to generation 0


def test_same_seed_same_run(tmp_path, tiny_bert_dir):
    cfg = small_config(str(tiny_bert_dir))
    a = LogStore(tmp_path / "a.db")
    b = LogStore(tmp_path / "b.db")
    ra = start_run(cfg, a).run_id
    rb = start_run(cfg, b).run_id
    assert final_population(a, ra) == final_population(b, rb)
    other = start_run(dataclasses.replace(cfg, seed=8), LogStore(tmp_path / "c.db"))
    assert final_population(a, ra) != final_population(LogStore(tmp_path / "c.db"), other.run_id)


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, tiny_bert_dir):
    cfg = small_config(str(tiny_bert_dir), generations=4)
    whole = LogStore(tmp_path / "whole.db")
    ref = start_run(cfg, whole).run_id

    store = LogStore(tmp_path / "cut.db")

    def stop_after_gen_1(report):
        if report.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        start_run(cfg, store, stop_after_gen_1)
    run_id = info.value.run_id
    assert info.value.generation == 1
    assert store.run(run_id)["status"] == "interrupted"
    resume_run(run_id, store)
    assert store.run(run_id)["status"] == "finished"
    assert final_population(store, run_id) == final_population(whole, ref)
    with pytest.raises(UserError, match="already finished"):
        resume_run(run_id, store)


def test_mu_plus_lambda_and_seed_texts(tmp_path, tiny_bert_dir):
    cfg = small_config(
        str(tiny_bert_dir),
        algorithm="mu_plus_lambda",
        cxpb=0.3,
        mutpb=0.6,
        offspring=8,
        seed_texts=("yellow and sharp when old.", "tastes good with bread and milk."),
    )
    store = LogStore(tmp_path / "m.db")
    summary = start_run(cfg, store)
    gen0 = store.population(summary.run_id, 0)
    assert {r["op"] for r in gen0} == {"seed"}
    bests = [s["best"] for s in store.generation_stats(summary.run_id)]
    assert bests == sorted(bests)  # survivors are the best of parents + offspring


def test_metropolis_hastings_records_decisions(tmp_path, tiny_bert_dir):
    cfg = small_config(
        str(tiny_bert_dir),
        mh=True,
        cxpb=0.0,
        elites=0,
        mutation=MutationConfig(max_span=2, top_k=0, order="parallel", indel_prob=0.0),
    )
    store = LogStore(tmp_path / "mh.db")
    summary = start_run(cfg, store)
    _, rows = store.query(
        "SELECT json_extract(detail, '$.mh_accepted') FROM individuals "
        "WHERE run_id = ? AND json_extract(detail, '$.mh_accepted') IS NOT NULL",
        (summary.run_id,),
    )
    assert rows, "MH decisions are recorded on the individuals"


@pytest.mark.parametrize(
    "over, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"population": 1}, "population must be at least 2"),
        ({"generations": 0}, "generations must be at least 1"),
        ({"mutation": MutationConfig(max_span=50)}, "larger than the longest continuation"),
        ({"cxpb": 1.5}, r"cxpb must be within \[0, 1\]"),
    ],
)
def test_bad_config(over, message, tiny_bert_dir):
    with pytest.raises(ConfigError, match=message):
        small_config(str(tiny_bert_dir), **over).validate()


def test_prompt_longer_than_window(tmp_path, tiny_bert_dir):
    cfg = small_config(str(tiny_bert_dir), prompt="cheese " * 80)
    with pytest.raises(UserError, match="exceeds the model window"):
        start_run(cfg, LogStore(tmp_path / "w.db"))

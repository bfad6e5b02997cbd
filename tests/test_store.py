"""LogStore: migrations, atomic generations, lineage views, scores, read-only SQL, concurrency.

Most tests run on a file, on ":memory:" and on an injected `sqlite_utils.Database` alike.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from evolve.store import MIGRATIONS, SCHEMA_VERSION, LogStore, StoreError, text_id
from scoring.errors import UserError

PROMPT = "Cheddar is"
PLL = "pll/original/tiny-bert"
CAUSAL = "causal/smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]


def ind(
    text: str,
    fitness: float | None,
    op: str = "init",
    parents: tuple[int, ...] = (),
    span: tuple[int, int] | None = None,
    position: int = 0,
    **detail: Any,
) -> dict[str, Any]:
    return {
        "text": text,
        "token_ids": [ord(c) for c in text[:4]],
        "fitness": fitness,
        "op": op,
        "parents": list(parents),
        "span": span,
        "detail": detail,
        "position": position,
    }


def score(text: str, total: float, scorer: str = PLL, n_tokens: int = 2) -> dict[str, Any]:
    """A score row of `text` after the prompt, as the engine passes them to write_generation."""
    return {"text": text, "prefix": PROMPT, "scorer": scorer, "total": total,
            "n_tokens": n_tokens, "per_token": None}  # fmt: skip


def stats(best: float = 0.0) -> dict[str, Any]:
    return {
        "best": best,
        "mean": best - 1,
        "std": 0.5,
        "worst": best - 2,
        "n_evaluated": 3,
        "n_cache_hits": 0,
        "n_unique": 3,
        "best_individual_id": None,
        "seconds": 0.1,
    }


def new_run(store: LogStore, seed: int = 1) -> int:
    return store.create_run(
        PROMPT, seed, {"population": 3, "mutation": {"top_k": 20}}, "tiny-bert", None, "pll"
    )


def three_generations(store: LogStore) -> dict[str, int]:
    """gen 0: a b c; gen 1: d = cx(a, b), e = mut(c), f = elite(a); gen 2: g = cx(d, e)."""
    run = new_run(store)
    a, b, c = store.write_generation(
        run,
        0,
        [ind(" yellow", -10.0), ind(" white", -12.0, position=1), ind(" old", -11.0, position=2)],
        stats(-10.0),
        "rng0",
        {"gen": 0},
    )
    d, e, f = store.write_generation(
        run,
        1,
        [
            ind(" yellow old", -9.0, "cx_one_point", (a, b), (1, 2), cut=1),
            ind(" very old", -13.0, "mut_span", (c,), (0, 1), position=1),
            ind(" yellow", -10.0, "elite", (a,), position=2),
        ],
        stats(-9.0),
        "rng1",
        {"gen": 1},
    )
    (g,) = store.write_generation(
        run,
        2,
        [ind(" yellow very old", -8.5, "cx_two_point", (d, e), (1, 3))],
        stats(-8.5),
        "rng2",
        {"gen": 2},
    )
    return {"run": run, "a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "g": g}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count(store: LogStore, table: str) -> int:
    return store.query(f"SELECT COUNT(*) FROM {table}")[1][0][0]


@pytest.fixture
def store(tmp_path: Path):
    with LogStore(tmp_path / "sub" / "runs.db") as s:
        yield s


@pytest.fixture(params=["file", "memory", "injected"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A store on a file, on ":memory:", or on an injected in-memory sqlite-utils Database."""
    if request.param == "injected":
        with Database(memory=True) as db, LogStore(db) as s:
            yield s
    else:
        where = tmp_path / "runs.db" if request.param == "file" else ":memory:"
        with LogStore(where) as s:
            yield s


# -- opening and migrations ----------------------------------------------------------------------


def test_creates_folder_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "r.db"
    with LogStore(path) as s:
        assert path.exists()
        assert s.path == path
        assert s.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        run = new_run(s)
    for _ in range(2):  # reopening applies nothing again and keeps the data
        with LogStore(path) as s:
            _, rows = s.query("SELECT version, name FROM _migrations ORDER BY version")
            assert rows == [(i + 1, fn.__name__) for i, fn in enumerate(MIGRATIONS)]
            assert s.run(run)["prompt"] == PROMPT
    tables = set(LogStore(path).db.table_names())
    assert {"runs", "texts", "individuals", "parents", "generations", "scores"} <= tables
    assert {"baselines", "experiments", "experiment_rows", "_migrations"} <= tables
    assert {"individual_texts", "lineage", "edits"} <= set(LogStore(path).db.view_names())


def test_wal_busy_timeout_and_foreign_keys(store: LogStore) -> None:
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with sqlite3.connect(store.path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unrelated_sqlite_database_gets_our_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.close()
    with LogStore(path) as s:
        new_run(s)
        assert s.query("SELECT body FROM notes")[1] == [("keep me",)]
        assert len(s.runs()) == 1


@pytest.mark.parametrize("readonly", [False, True])
def test_non_sqlite_file_is_refused_untouched(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 50)
    before = digest(path)
    with pytest.raises(StoreError, match=r"notes\.db is not an mlm-evolve database \(not SQLite\)"):
        LogStore(path, readonly=readonly)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no -wal / -shm either
    assert issubclass(StoreError, UserError)


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    LogStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _migrations (version, name, applied_at) VALUES (99, 'm099_future', 'x')"
        )
    conn.close()
    before = digest(path)
    with pytest.raises(StoreError, match="schema version 99, newer than this mlm-evolve"):
        LogStore(path)
    assert digest(path) == before


def test_readonly_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no database at"):
        LogStore(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "r.db"
    with LogStore(path) as s:
        run = new_run(s)
    before = digest(path)
    with LogStore(path, readonly=True) as ro:
        assert ro.run(run)["seed"] == 1
        with pytest.raises(StoreError, match="read-only"):
            new_run(ro)
        with pytest.raises(StoreError, match="read-only"):
            ro.set_status(run, "failed")
    assert digest(path) == before


def test_readonly_store_does_not_migrate(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    with LogStore(path, readonly=True) as ro:
        assert ro.query("SELECT name FROM sqlite_master WHERE type = 'table'")[1] == [("notes",)]


# -- runs and generations ------------------------------------------------------------------------


def test_run_records_and_status(store: LogStore) -> None:
    run = new_run(store, seed=7)
    record = store.run(run)
    assert record["status"] == "running" and record["seed"] == 7
    assert record["config"] == {"population": 3, "mutation": {"top_k": 20}}
    assert {"python", "torch", "transformers", "deap"} <= set(record["versions"])
    assert record["created_at"].endswith("+00:00")
    store.set_status(run, "failed", error="RuntimeError: boom")
    record = store.run(run)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"
    assert record["finished_at"] is not None
    store.set_status(run, "running")
    assert store.run(run)["finished_at"] is None and store.run(run)["error"] is None
    with pytest.raises(StoreError, match="unknown run status"):
        store.set_status(run, "paused")
    with pytest.raises(StoreError, match="no run 99 in"):
        store.run(99)
    with pytest.raises(StoreError, match="no run 99 in"):
        store.set_status(99, "failed")


def test_write_generation_round_trip(any_store: LogStore) -> None:
    store = any_store
    run = new_run(store)
    ids = store.write_generation(
        run,
        0,
        [
            ind(" yellow", -10.0, detail_key=1),
            ind(" white", -12.0, position=1),
            ind(" yellow", -10.0, position=2),
        ],
        stats(-10.0),
        "rng-blob",
        {"best_so_far": -10.0, "stall": 0},
        scores=[score(" yellow", -20.0), score(" white", -24.0), score(" yellow", -20.0)],
    )
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert count(store, "texts") == 3  # " yellow" is stored once, and the prompt
    pop = store.population(run, 0)
    assert [r["id"] for r in pop] == ids
    assert pop[0]["token_ids"] == [ord(c) for c in " yel"] and pop[0]["text"] == " yellow"
    assert pop[0]["scores"] == {PLL: {"total": -20.0, "n_tokens": 2, "mean": -10.0}}
    assert pop[0]["op"] == "init"
    last = store.last_generation(run)
    assert last["generation"] == 0 and last["rng_state"] == "rng-blob"
    assert last["state"] == {"best_so_far": -10.0, "stall": 0}
    assert last["best_individual_id"] == ids[0]  # the first of the equally fittest
    assert store.run(run)["generations_done"] == 0
    assert store.individual(ids[0])["detail"] == {"detail_key": 1}
    assert store.last_generation(new_run(store)) is None
    with pytest.raises(StoreError, match="generation 0 of run 1 is already written"):
        store.write_generation(run, 0, [ind(" x", 1.0)], stats(), "r", {})
    with pytest.raises(ValueError, match="pass them as scores="):  # scores are not row keys
        store.write_generation(
            run, 1, [{**ind(" x", 1.0), "scores": {"pll": 1.0}}], stats(), "r", {}
        )


def test_write_generation_is_atomic(any_store: LogStore) -> None:
    store = any_store
    run = new_run(store)
    (a,) = store.write_generation(
        run, 0, [ind(" kept", -5.0)], stats(-5.0), "rng0", {"g": 0}, scores=[score(" kept", -10)]
    )
    tables = ("individuals", "parents", "generations", "texts", "scores", "run_texts")
    before = {t: count(store, t) for t in tables}

    # The third individual cannot be serialised: two were already inserted by then.
    broken = [
        ind(" new one", -4.0, "mut_span", (a,)),
        ind(" new two", -4.5, "mut_span", (a,), position=1),
        ind(" new three", -4.2, "mut_span", (a,), position=2, bad=object()),
    ]
    new_scores = [score(" new one", -8.0), score(" new two", -9.0, CAUSAL)]
    with pytest.raises(TypeError):
        store.write_generation(run, 1, broken, stats(-4.0), "rng1", {"g": 1}, scores=new_scores)
    # A parent id that does not exist fails the foreign key on the second individual.
    dangling = [ind(" new one", -4.0, "mut_span", (a,)), ind(" new two", -4.5, "cx", (a, 999))]
    with pytest.raises(sqlite3.IntegrityError):
        store.write_generation(run, 1, dangling, stats(-4.0), "rng1", {"g": 1}, scores=new_scores)
    # A score row that cannot be stored (no scorer) fails after every individual is in.
    with pytest.raises(KeyError):
        store.write_generation(
            run, 1, broken[:2], stats(-4.0), "rng1", {"g": 1}, scores=[{"text": " new one"}]
        )

    assert {t: count(store, t) for t in tables} == before
    assert store.query("SELECT COUNT(*) FROM texts WHERE text LIKE ' new%'")[1] == [(0,)]
    assert store.last_generation(run)["generation"] == 0
    assert store.run(run)["generations_done"] == 0
    assert [r["text"] for r in store.population(run, 0)] == [" kept"]
    assert store.scores_for_run(run) == {" kept": {PLL: {"total": -10.0, "n_tokens": 2,
                                                         "per_token": None}}}  # fmt: skip
    # The store is still usable and generation 1 can be written properly.
    store.write_generation(run, 1, broken[:2], stats(-4.0), "rng1", {"g": 1}, scores=new_scores)
    assert store.run(run)["generations_done"] == 1
    assert set(store.scores_for_run(run)) == {" kept", " new one", " new two"}


def test_stats_best_and_finish(store: LogStore) -> None:
    ids = three_generations(store)
    run = ids["run"]
    assert [s["generation"] for s in store.generation_stats(run)] == [0, 1, 2]
    assert store.generation_stats(run)[1]["best_individual_id"] == ids["d"]
    best = store.best(run, 5)
    texts = [b["text"] for b in best]
    assert texts == [" yellow very old", " yellow old", " yellow", " old", " white"]
    assert best[2]["id"] == ids["a"]  # the elite copy f has the same text: a came first
    assert best[0]["full_text"] == PROMPT + " yellow very old"
    assert len(store.best(run, 2)) == 2

    store.finish_run(run)
    record = store.run(run)
    assert record["status"] == "finished" and record["best_individual_id"] == ids["g"]
    (listed,) = store.runs()
    assert listed["best_fitness"] == -8.5 and listed["n_generations"] == 3
    assert listed["n_individuals"] == 7


# -- lineage and views -------------------------------------------------------------------------


def test_lineage_over_three_generations_with_crossover(any_store: LogStore) -> None:
    store = any_store
    ids = three_generations(store)
    ancestry = store.lineage(ids["g"])
    by_id = {row["id"]: row for row in ancestry}
    depth = {name: by_id[ids[name]]["depth"] for name in "gdeabc" if ids[name] in by_id}
    assert depth == {"g": 0, "d": 1, "e": 1, "a": 2, "b": 2, "c": 2}
    assert ids["f"] not in by_id  # the elite copy is not an ancestor of g
    assert [row["depth"] for row in ancestry] == sorted(row["depth"] for row in ancestry)
    g = by_id[ids["g"]]
    assert g["parents"] == [ids["d"], ids["e"]]
    assert (g["op"], g["span_start"], g["span_end"], g["generation"]) == ("cx_two_point", 1, 3, 2)
    assert by_id[ids["d"]]["parents"] == [ids["a"], ids["b"]]
    assert by_id[ids["d"]]["detail"] == {"cut": 1}
    assert by_id[ids["a"]]["parents"] == [] and by_id[ids["a"]]["text"] == " yellow"
    near = store.lineage(ids["g"], max_depth=1)
    assert [r["id"] for r in near] == [ids["g"], ids["d"], ids["e"]]
    # The SQL view agrees with the method.
    _, rows = store.query(
        "SELECT ancestor_id, depth FROM lineage WHERE individual_id = ?", (ids["g"],)
    )
    assert sorted(rows) == sorted((row["id"], row["depth"]) for row in ancestry)
    with pytest.raises(StoreError, match="no individual 999"):
        store.lineage(999)


def test_edits_and_individual_texts_views(any_store: LogStore) -> None:
    store = any_store
    ids = three_generations(store)
    cols, rows = store.query("SELECT * FROM edits ORDER BY child_id")
    edits = {r[cols.index("child_id")]: dict(zip(cols, r, strict=True)) for r in rows}
    assert set(edits) == {ids[k] for k in "defg"}
    d = edits[ids["d"]]  # cx of a (-10) and b (-12), child -9
    assert d["best_parent_fitness"] == -10.0 and d["gain"] == pytest.approx(1.0)
    assert d["n_parents"] == 2 and (d["span_start"], d["span_end"]) == (1, 2)
    assert edits[ids["e"]]["gain"] == pytest.approx(-2.0)  # mut of c (-11) to -13
    assert edits[ids["g"]]["gain"] == pytest.approx(0.5)  # cx of d (-9) and e (-13) to -8.5
    _, rows = store.query(
        "SELECT text, full_text, generation FROM individual_texts WHERE id = ?", (ids["g"],)
    )
    assert rows == [(" yellow very old", PROMPT + " yellow very old", 2)]


# -- scores, baselines, experiments ----------------------------------------------------------


def test_scores_are_kept_per_text_prefix_and_scorer(any_store: LogStore) -> None:
    store = any_store
    store.put_scores(
        [
            {"text": " a", "prefix": "", "scorer": "pll/original/tiny-bert", "total": -3.0,
             "n_tokens": 2, "per_token": [-1.0, -2.0]},
            {"text": " a", "prefix": PROMPT, "scorer": "pll/original/tiny-bert", "total": -1.0,
             "n_tokens": 2, "per_token": [-0.5, -0.5]},
        ]
    )  # fmt: skip
    store.put_scores(  # already there: the old score stays
        [{"text": " a", "prefix": "", "scorer": "pll/original/tiny-bert", "total": 0.0,
          "n_tokens": 2, "per_token": [0.0, 0.0]}]
    )  # fmt: skip
    got = store.get_scores([" a", " b"], "", "pll/original/tiny-bert")
    assert set(got) == {" a"}
    assert got[" a"]["total"] == -3.0 and got[" a"]["per_token"] == [-1.0, -2.0]
    assert store.get_scores([" a"], PROMPT, "pll/original/tiny-bert")[" a"]["total"] == -1.0
    assert store.get_scores([" a"], PROMPT, "causal/smollm2-135m") == {}
    _, rows = store.query("SELECT prefix_id FROM scores ORDER BY prefix_id")
    assert rows == [("",), (text_id(PROMPT),)]
    assert len(text_id("x")) == 32


def test_baselines_and_experiments(store: LogStore) -> None:
    run = new_run(store)
    b1 = store.add_baseline(PROMPT, "sample", "smollm2-135m", {"top_p": 0.9}, 3, " blue", run)
    store.add_baseline("Other", "beam", "smollm2-135m", {"beams": 4}, None, " red")
    assert [b["id"] for b in store.baselines(run_id=run)] == [b1]
    (only,) = store.baselines(prompt="Other")
    assert only["text"] == " red" and only["params"] == {"beams": 4} and only["run_id"] is None
    assert len(store.baselines()) == 2
    with pytest.raises(StoreError, match="no run 42"):
        store.add_baseline(PROMPT, "sample", "m", {}, 1, " x", run_id=42)

    exp = store.add_experiment("compare", {"runs": [run]}, {"winner": "ga"}, [{"a": 1}, {"a": 2}])
    store.add_experiment("amplify", {}, {}, [], status="failed")
    record = store.experiment(exp)
    assert record["rows"] == [{"a": 1}, {"a": 2}] and record["summary"] == {"winner": "ga"}
    assert [e["id"] for e in store.experiments(kind="compare")] == [exp]
    assert [e["n_rows"] for e in store.experiments()] == [0, 2]
    with pytest.raises(StoreError, match="no experiment 9"):
        store.experiment(9)


# -- read-only SQL ----------------------------------------------------------------------------


WRITES = [
    "INSERT INTO runs (created_at, status, prompt, config) VALUES ('t', 'x', 'p', '{}')",
    "UPDATE runs SET status = 'finished'",
    "DELETE FROM individuals",
    "DROP TABLE runs",
    "DROP VIEW lineage",
    "CREATE TABLE evil (x)",
    "ALTER TABLE runs ADD COLUMN evil TEXT",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA writable_schema = ON",
    "ATTACH DATABASE 'elsewhere.db' AS other",
    "VACUUM",
    "BEGIN",
    "WITH x AS (SELECT 1) DELETE FROM runs",
]


@pytest.mark.parametrize("readonly", [False, True])
def test_query_refuses_writes_and_leaves_the_file(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "q.db"
    with LogStore(path) as s:
        three_generations(s)
    before = digest(path)
    with LogStore(path, readonly=readonly) as s:
        for statement in WRITES:
            with pytest.raises(StoreError, match="^read-only: "):
                s.query(statement)
        cols, rows = s.query("SELECT COUNT(*) AS n FROM individuals WHERE fitness > ?", (-11,))
        assert (cols, rows) == (["n"], [(4,)])
        assert s.query("SELECT :g AS g", {"g": 2})[1] == [(2,)]
        assert s.query("PRAGMA table_info(runs)")[1][0][1] == "id"
        assert s.query("SELECT name FROM pragma_table_info('texts')")[1] == [("id",), ("text",)]
        with pytest.raises(StoreError, match="SQL error: no such table"):
            s.query("SELECT * FROM nowhere")
    assert digest(path) == before
    assert not (tmp_path / "elsewhere.db").exists()


# -- concurrency ------------------------------------------------------------------------------


def _write_runs(path: Path, seed: int, generations: int) -> int:
    with LogStore(path) as s:
        run = new_run(s, seed)
        previous: list[int] = []
        for gen in range(generations):
            rows = [
                ind(f" run {seed} gen {gen} #{k}", float(gen + k), "mut_span", tuple(previous[:1]),
                    position=k)
                for k in range(5)
            ]  # fmt: skip
            previous = s.write_generation(run, gen, rows, stats(gen), f"rng{gen}", {"g": gen})
        s.finish_run(run)
        return run


def test_two_threads_write_runs_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    start = threading.Barrier(2)
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            start.wait()  # both open the fresh file (and race to migrate it) at once
            results[seed] = _write_runs(path, seed, generations=15)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with LogStore(path) as s:
        assert sorted(r["id"] for r in s.runs()) == sorted(results.values()) == [1, 2]
        for run in results.values():
            assert len(s.generation_stats(run)) == 15 and s.run(run)["status"] == "finished"
        assert s.schema_version() == SCHEMA_VERSION


def test_two_processes_write_runs_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "procs.db"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import _write_runs
        print(_write_runs(__import__("pathlib").Path(sys.argv[1]), int(sys.argv[2]), 15))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with LogStore(path) as s:
        assert sorted(int(out) for out, _ in outputs) == [1, 2]
        assert [len(s.generation_stats(r)) for r in (1, 2)] == [15, 15]
        assert {r["seed"] for r in s.runs()} == {1, 2}


# -- one record of model scores ---------------------------------------------------------------


def test_individuals_carry_their_scores_from_the_scores_table(any_store: LogStore) -> None:
    store = any_store
    run = new_run(store)
    (a, b) = store.write_generation(
        run,
        0,
        [ind(" yellow", -5.0), ind("", -1e9, position=1)],
        stats(-5.0),
        "rng0",
        {},
        scores=[
            score(" yellow", -10.0),
            score(" yellow", -7.5, CAUSAL, 3),
            score("", 0.0, n_tokens=0),
        ],
    )
    (c,) = store.write_generation(
        run, 1, [ind(" yellow", -5.0, "elite", (a,))], stats(-5.0), "rng1", {}
    )
    # The same text after another prompt or under another scorer name is another score.
    store.put_scores([{**score(" yellow", -99.0), "prefix": "Brie is"},
                      score(" yellow", -98.0, "pll/word_l2r/tiny-bert")])  # fmt: skip
    yellow = {PLL: {"total": -10.0, "n_tokens": 2, "mean": -5.0},
              CAUSAL: {"total": -7.5, "n_tokens": 3, "mean": -2.5},
              "pll/word_l2r/tiny-bert": {"total": -98.0, "n_tokens": 2, "mean": -49.0}}  # fmt: skip
    assert [r["scores"] for r in store.population(run, 0)] == [
        yellow,
        {PLL: {"total": 0.0, "n_tokens": 0, "mean": None}},  # an empty text has no mean
    ]
    assert store.population(run, 1)[0]["scores"] == yellow  # the elite copy: same text
    assert store.individual(c)["scores"] == yellow
    assert store.best(run, 1)[0]["scores"] == yellow
    assert [r["scores"] for r in store.lineage(c)] == [yellow, yellow]
    assert [r["id"] for r in store.individuals(run)] == [a, b, c]
    assert store.individuals(run)[2]["parents"] == [a]
    _, rows = store.query(
        "SELECT individual_id, generation, scorer, total, n_tokens, mean FROM individual_scores "
        "WHERE run_id = ? ORDER BY individual_id, scorer",
        (run,),
    )
    assert rows[:3] == [(a, 0, CAUSAL, -7.5, 3, -2.5), (a, 0, PLL, -10.0, 2, -5.0),
                        (a, 0, "pll/word_l2r/tiny-bert", -98.0, 2, -49.0)]  # fmt: skip
    assert rows[3] == (b, 0, PLL, 0.0, 0, None) and len(rows) == 7


def test_scores_are_written_once_and_found_for_their_run(any_store: LogStore) -> None:
    store = any_store
    run, other = new_run(store), new_run(store, seed=2)
    store.write_generation(
        run,
        0,
        [ind(" kept", -1.0)],
        stats(),
        "rng",
        {},
        # " undone" was scored but is no individual (a rejected Metropolis-Hastings move).
        scores=[score(" kept", -2.0), score(" undone", -6.0), score(" undone", -3.0, CAUSAL, 1)],
    )
    # Another run scoring the same text later (another batch) keeps the first score.
    store.write_generation(other, 0, [ind(" kept", -1.0)], stats(), "rng", {},
                           scores=[score(" kept", -2.0000001), score(" other", -4.0)])  # fmt: skip
    assert store.scores_for_run(run) == {
        " kept": {PLL: {"total": -2.0, "n_tokens": 2, "per_token": None}},
        " undone": {
            PLL: {"total": -6.0, "n_tokens": 2, "per_token": None},
            CAUSAL: {"total": -3.0, "n_tokens": 1, "per_token": None},
        },
    }
    assert set(store.scores_for_run(other)) == {" kept", " other"}
    assert store.scores_for_run(other)[" kept"][PLL]["total"] == -2.0
    assert store.get_scores([" undone"], PROMPT, CAUSAL)[" undone"]["per_token"] is None
    with pytest.raises(StoreError, match="no run 9"):
        store.scores_for_run(9)


@pytest.mark.parametrize("kind", ["memory", "injected"])
def test_in_memory_query_is_read_only_too(kind: str) -> None:
    db = Database(memory=True) if kind == "injected" else None
    with LogStore(db if db is not None else ":memory:") as s:
        assert s.path is None
        three_generations(s)
        before = {t: count(s, t) for t in ("runs", "individuals", "parents", "texts")}
        for statement in WRITES:
            with pytest.raises(StoreError, match="^read-only: "):
                s.query(statement)
        assert {t: count(s, t) for t in before} == before
        assert {"lineage", "individual_scores"} <= set(s.db.view_names())
        assert s.query("SELECT name FROM pragma_table_info('texts')")[1] == [("id",), ("text",)]
        with pytest.raises(StoreError, match="SQL error: no such table"):
            s.query("SELECT * FROM nowhere")
        new_run(s)  # writing works again after a query
        assert count(s, "runs") == before["runs"] + 1
    if db is not None:  # the injected Database is the caller's: still open
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)
        db.close()


def test_injected_file_database(tmp_path: Path) -> None:
    path = tmp_path / "injected.db"
    with Database(path) as db:
        with LogStore(db) as s:
            assert s.path == path
            assert s.db is db and s.schema_version() == SCHEMA_VERSION
            assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            run = new_run(s)
            with pytest.raises(StoreError, match="^read-only: "):
                s.query("DELETE FROM runs")  # on a mode=ro connection of its own
        assert db["runs"].count == 1
    with LogStore(path) as s:
        assert s.run(run)["prompt"] == PROMPT
    with pytest.raises(StoreError, match="in-memory database cannot be opened read-only"):
        LogStore(":memory:", readonly=True)
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n" * 50)
    with Database(notes) as db, pytest.raises(StoreError, match="not SQLite"):
        LogStore(db)
    assert notes.read_text() == "not a database\n" * 50


# -- migration 4: scores out of the individuals JSON into the scores table ----------------------


def _old_database(path: Path) -> None:
    """A database as mlm-evolve wrote it with migrations 1-3: scores as JSON per individual,
    in MH-rejected details and in dropped-offspring states."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
        "applied_at TEXT NOT NULL)"
    )

    class _Db:  # what a migration uses of sqlite_utils.Database
        def __init__(self, c: sqlite3.Connection) -> None:
            self.conn = c

    for number, fn in enumerate(MIGRATIONS[:3], start=1):
        fn(_Db(conn))  # type: ignore[arg-type]
        conn.execute("INSERT INTO _migrations VALUES (?, ?, 'then')", (number, fn.__name__))
    sum_config = json.dumps({"fitness": {"objective": "sum", "variant": "word_l2r", "bf16": True}})
    conn.executemany(
        "INSERT INTO runs (id, created_at, status, prompt, seed, mlm, causal, config) "
        "VALUES (?, 'then', 'finished', ?, 1, 'tiny-bert', ?, ?)",
        [(1, PROMPT, "smollm2-135m", sum_config), (2, "Brie is", None, "{}")],
    )
    texts = {t: text_id(t) for t in (" a", " b", " c")}
    conn.executemany("INSERT INTO texts VALUES (?, ?)", [(v, k) for k, v in texts.items()])
    both = {"pll": -4.0, "pll_mean": -2.0, "n_tokens": 2, "causal": -6.0, "causal_mean": -2.0,
            "causal_n_tokens": 3}  # fmt: skip
    rejected_b = {"rejected_ids": [2], "rejected_scores": {**both, "pll": -8.0, "causal": -9.0}}
    rejected_unknown = {"rejected_ids": [77], "rejected_scores": both}  # no individual has [77]
    rows = [  # run, generation, position, text, token ids, scores, op, detail
        (1, 0, 0, " a", [1], both, "init", {}),
        (1, 0, 1, " a", [1], both, "mh_reject", rejected_unknown),
        (1, 1, 0, " a", [1], both, "mh_reject", rejected_b),
        (1, 2, 0, " b", [2], {**both, "pll": -1.0}, "mut_span", {}),  # kept: first wins
        (2, 0, 0, " a", [1], {"pll": -3.0, "n_tokens": 1}, "init", {}),
        (2, 0, 1, " b", [2], {}, "mh_reject", {"rejected_ids": [3], "rejected_pll": -5.0,
                                               "rejected_n_tokens": 1}),
        (2, 1, 0, " c", [3], {"pll": -5.5, "n_tokens": 1}, "mut_span", {}),
    ]  # fmt: skip
    for run, gen, pos, text, ids, scores, op, detail in rows:
        conn.execute(
            "INSERT INTO individuals (run_id, generation, position, text_id, token_ids, n_tokens, "
            "fitness, scores, op, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, -1, ?, ?, ?, 'x')",
            (run, gen, pos, texts[text], json.dumps(ids), len(ids), json.dumps(scores), op,
             json.dumps(detail)),
        )  # fmt: skip
    dropped = {"dropped_scores": [[[3], {"pll": -7.0, "n_tokens": 1}]]}  # ids of " c" in run 2
    for run, gen, state in [(1, 0, {}), (1, 1, {}), (1, 2, {}), (2, 0, dropped), (2, 1, {})]:
        conn.execute(
            "INSERT INTO generations (run_id, generation, rng_state, state, created_at) "
            "VALUES (?, ?, 'rng', ?, 'then')",
            (run, gen, json.dumps(state)),
        )
    conn.close()


def test_migration_4_moves_old_scores_into_the_scores_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_database(path)
    with LogStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 6
        columns = {c[1] for c in s.query("PRAGMA table_info(individuals)")[1]}
        assert "scores" not in columns and "objectives" in columns
        assert s.query("PRAGMA foreign_key_check")[1] == []
        pll, causal = "pll/word_l2r/tiny-bert/bf16", "causal/smollm2-135m"
        a = {pll: {"total": -4.0, "n_tokens": 2, "mean": -2.0},
             causal: {"total": -6.0, "n_tokens": 3, "mean": -2.0}}  # fmt: skip
        assert [r["scores"] for r in s.population(1, 0)] == [a, a]
        # " b" was first scored as the text an MH step rejected in generation 1.
        b = {pll: {"total": -8.0, "n_tokens": 2, "mean": -4.0},
             causal: {"total": -9.0, "n_tokens": 3, "mean": -3.0}}  # fmt: skip
        assert s.population(1, 2)[0]["scores"] == b
        assert set(s.scores_for_run(1)) == {" a", " b"}
        # Run 2: config without fitness (variant original), PLL only, the oldest keys.
        assert s.population(2, 0)[0]["scores"] == {
            "pll/original/tiny-bert": {"total": -3.0, "n_tokens": 1, "mean": -3.0}
        }
        assert s.population(2, 0)[1]["scores"] == {}  # its own JSON was empty ...
        # ... " c" came first as the text rejected in generation 0 (rejected_pll).
        assert s.scores_for_run(2)[" c"] == {
            "pll/original/tiny-bert": {"total": -5.0, "n_tokens": 1, "per_token": None}
        }
        _, rows = s.query(
            "SELECT run_id, text_id, generation FROM run_texts ORDER BY run_id, generation"
        )
        assert rows == [(1, text_id(" a"), 0), (1, text_id(" b"), 1), (2, text_id(" a"), 0),
                        (2, text_id(" c"), 0)]  # fmt: skip
        # The rejected text no individual has stays where it was: its text is unknown.
        (unknown,) = [r for r in s.individuals(1) if r["detail"].get("rejected_ids") == [77]]
        assert unknown["detail"]["rejected_scores"]["pll"] == -4.0
        assert s.query("SELECT COUNT(*) FROM scores")[1] == [(6,)]  # 2 texts x 2 + 2 x 1
        assert s.run(1)["prompt_id"] == text_id(PROMPT)
        _, rows = s.query("SELECT COUNT(*) FROM individual_scores WHERE run_id = 1")
        assert rows == [(8,)]
        # The prompt is in `texts`, as compare's SQL needs it.
        assert s.query("SELECT COUNT(*) FROM texts WHERE text = ?", ("Brie is",))[1] == [(1,)]

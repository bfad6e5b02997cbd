"""The store's SQL for `evolve serve` (evolve.store.web_queries, evolve.store.sql's served
bounds), on a connection made as Datasette makes its own: `mode=ro`, then the plugin's
`prepare_connection` bounds. The pages built from these reads are tested in test_web.py.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_fixtures import BEST, CROSS, PROMPT, make_db

from evolve.store import LogStore, text_id, web_queries
from evolve.store import sql as store_sql
from evolve.store.access import open_read_only
from evolve.store.sql import MAX_VALUE_BYTES, prepare_served, served_error
from evolve.store.web_queries import CANNED_QUERIES


@pytest.fixture
def db(tmp_path: Path) -> dict[str, Any]:
    return make_db(tmp_path / "evolve.db")


@pytest.fixture
def conn(db: dict[str, Any]) -> Iterator[sqlite3.Connection]:
    conn = open_read_only(db["path"])
    prepare_served(conn)
    yield conn
    conn.close()


def test_runs_newest_first_with_the_best_so_far(conn, db) -> None:
    rows = web_queries.runs(conn)
    assert [r["id"] for r in rows] == [db["other"], db["run"]]
    other, run = rows
    assert (run["best_id"], run["best_text"], run["best_fitness"]) == (db["best"], BEST, -2.0)
    assert run["generations_planned"] == 2 and run["generations_done"] == 2
    assert other["best_id"] is None and other["best_text"] is None
    assert {"pid", "host", "process"} <= set(run)  # the web tells a dead process from these


def test_run_reads_generations_best_texts_and_stored_scores(conn, db) -> None:
    read = web_queries.run(conn, db["run"], n_best=10)
    assert read is not None
    assert read.run["prompt"] == PROMPT and read.run["status"] == "finished"
    assert [g["best"] for g in read.generations] == [-3.0, -2.5, -2.0]
    texts = [b["text"] for b in read.best]
    assert texts[:2] == [BEST, CROSS] and len(set(texts)) == len(texts)
    assert [b["text"] for b in web_queries.run(conn, db["run"], n_best=1).best] == [BEST]
    assert read.fittest is not None and read.fittest["id"] == db["best"]
    assert read.prompt_id == text_id(PROMPT)
    assert [b["method"] for b in read.baselines] == ["greedy", "sample"]
    best_scores = read.scores[(read.fittest["text_id"], read.prompt_id)]
    assert best_scores == [{"scorer": "causal/smollm2-135m", "total": -9.0, "n_tokens": 6}]
    greedy, sample = read.baselines
    assert read.scores[(greedy["text_id"], greedy["prompt_id"])][0]["total"] == -12.0
    assert read.scores[(sample["text_id"], sample["prompt_id"])] == []  # not scored yet


def test_a_run_without_individuals_has_no_fittest(conn, db) -> None:
    read = web_queries.run(conn, db["other"], n_best=10)
    assert read is not None
    assert read.fittest is None and read.best == [] and read.baselines == []
    assert read.scores == {}


def test_unknown_ids_read_as_none(conn) -> None:
    assert web_queries.run(conn, 999, n_best=10) is None
    assert web_queries.ancestry(conn, 999, limit=100) is None


def test_ancestry_reads_the_ancestors_their_parents_and_the_prompt(conn, db) -> None:
    read = web_queries.ancestry(conn, db["best"], limit=100)
    assert read is not None
    assert read.individual_id == db["best"]
    assert set(read.individuals) == {db[k] for k in ("best", "cross", "a", "b")}
    assert read.parents[db["best"]] == [db["cross"]]
    assert read.parents[db["cross"]] == [db["a"], db["b"]]  # crossover: parent 0, parent 1
    assert db["a"] not in read.parents  # an initial individual has none
    assert read.prompt == PROMPT and not read.truncated
    cut = web_queries.ancestry(conn, db["best"], limit=2)
    assert cut is not None and cut.truncated and len(cut.individuals) == 2


def _params(sql: str, values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in dict.fromkeys(re.findall(r":(\w+)", sql))}


def test_canned_queries_run_read_only_and_agree_with_the_pages(db, conn) -> None:
    values = {"run": db["run"], "individual": db["best"]}
    with LogStore.for_reading(db["path"]) as store:
        found = {}
        for name, query in CANNED_QUERIES.items():
            assert query["title"] and query["description"]
            # LogStore.query refuses anything but reading (the authorizer of `evolve sql`).
            columns, rows = store.query(query["sql"], _params(query["sql"], values))
            assert rows, f"{name} found nothing"
            found[name] = [dict(zip(columns, row, strict=True)) for row in rows]
    page = web_queries.run(conn, db["run"], n_best=20)
    assert page is not None
    assert found["best_texts"] == page.best
    ancestry = web_queries.ancestry(conn, db["best"], limit=100)
    assert ancestry is not None
    assert {r["id"] for r in found["ancestry"]} == set(ancestry.individuals)
    assert [r["best"] for r in found["fitness_per_generation"]] == [
        g["best"] for g in page.generations
    ]


def test_a_served_connection_refuses_values_past_the_limit(conn) -> None:
    with pytest.raises(sqlite3.DataError) as caught:
        conn.execute("SELECT randomblob(?)", (MAX_VALUE_BYTES + 1,)).fetchone()
    error = served_error(caught.value)
    assert isinstance(error, sqlite3.OperationalError)
    assert str(error).startswith("the query makes or reads a value larger than 16 MiB")
    assert isinstance(served_error(MemoryError()), sqlite3.OperationalError)
    assert served_error(sqlite3.OperationalError("no such table: x")) is None
    assert served_error(ValueError("other")) is None


def test_a_served_connection_stops_a_result_past_the_limit(
    conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_sql, "MAX_RESULT_BYTES", 1000)
    sql = "SELECT text FROM texts"  # every text of the fixture: more than 100 bytes together
    rows = conn.execute(sql + " LIMIT 1").fetchall()
    assert isinstance(rows[0], sqlite3.Row)  # rows stay as Datasette makes them
    monkeypatch.setattr(store_sql, "MAX_RESULT_BYTES", 100)
    with pytest.raises(
        sqlite3.OperationalError, match="of text and blobs, the limit for one query here"
    ):
        conn.execute(sql).fetchall()

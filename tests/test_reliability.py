"""Runs survive kill -9, Ctrl-C and concurrent use, and the database is never corrupted.

The end-to-end tests drive the real `evolve` CLI in child processes (tests/helpers_proc.py)
on the tiny BERT folder from conftest: kill a run with SIGKILL after it has written a
generation and resume it (the result equals an uninterrupted run), interrupt one with
SIGINT, and let two runs write one database while `evolve sql` reads it. The rest checks
the store's side directly: a kill in the middle of a generation's transaction, migration of
older schemas, refusal of foreign or newer files, and telling a dead run from a live one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers_proc import (
    PROMPT,
    ROOT,
    child_env,
    generations_written,
    run_args,
    run_evolve,
    start_evolve,
    wait_for_generations,
)

from cli.main import cli
from evolve.api import RunInterrupted, resume_run, start_run
from evolve.ga.config import MutationConfig, RunConfig
from evolve.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    LogStore,
    StoreError,
    process_state,
    process_token,
    run_process_state,
)

LINUX_PROC = Path("/proc/self/stat").exists() and Path("/proc/self/ns/pid").exists()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rng_states(blob: str) -> Any:
    """The python, numpy and torch generator states in a stored RNG state (JSON, data only),
    comparable with ==."""
    return json.loads(blob)


def run_record(db: Path, run_id: int) -> list[tuple[Any, ...]]:
    """Everything a run computed, in order: each individual with its parents, and each
    generation's statistics, RNG states and loop state (not timings or timestamps)."""
    with LogStore(db, readonly=True) as s:
        _, individuals = s.query(
            "SELECT i.generation, i.position, i.token_ids, i.fitness, (SELECT group_concat("
            "scorer || '=' || total || '/' || n_tokens, ' ') FROM individual_scores "
            "WHERE individual_id = i.id), i.op, "
            "i.span_start, i.span_end, (SELECT group_concat(parent_id) FROM parents "
            "WHERE child_id = i.id) FROM individuals i WHERE run_id = ? "
            "ORDER BY generation, position",
            (run_id,),
        )
        _, generations = s.query(
            "SELECT generation, best, mean, std, worst, n_evaluated, n_cache_hits, n_unique, "
            "rng_state, state FROM generations WHERE run_id = ? ORDER BY generation",
            (run_id,),
        )
    return individuals + [(*g[:8], rng_states(g[8]), g[9]) for g in generations]


def integrity(db: Path) -> str:
    with LogStore(db, readonly=True) as s:
        return s.query("PRAGMA integrity_check")[1][0][0]


# -- kill -9, Ctrl-C, two writers and a reader (real CLI in child processes) ----------------------


def test_kill_9_mid_run_then_resume_equals_uninterrupted_run(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    generations = 60  # ~1 s of generations after the one we wait for: time enough to kill
    whole_db, cut_db = tmp_path / "whole.db", tmp_path / "cut.db"
    reference = start_evolve(run_args(whole_db, tiny_bert_dir, generations))
    victim = start_evolve(run_args(cut_db, tiny_bert_dir, generations))
    try:
        wait_for_generations(cut_db, 2, [victim])  # generations 0 and 1 are committed
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL
    ref_out, ref_err = reference.communicate(timeout=120)
    assert reference.returncode == 0, ref_err

    assert integrity(cut_db) == "ok"
    with LogStore(cut_db, readonly=True) as s:
        killed = s.run(1)
        done = len(s.generation_stats(1))
    assert killed["status"] == "running"  # nobody could record the kill ...
    assert 2 <= done < generations + 1, "the run finished before it was killed"
    assert killed["pid"] == victim.pid and run_process_state(killed) == "dead"  # ... but we see it
    listing = invoke("runs", "--db", str(cut_db))
    assert listing.exit_code == 0 and "dead" in listing.output.splitlines()[2]
    assert "evolve resume ID" in listing.output

    resumed = run_evolve(["resume", "1", "--db", str(cut_db), "-q"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"Run 1 finished: {generations} generations." in resumed.stdout
    with LogStore(cut_db, readonly=True) as s:
        assert s.run(1)["status"] == "finished"
    assert run_record(cut_db, 1) == run_record(whole_db, 1)  # same as never interrupted


def test_sigint_saves_says_how_to_resume_and_exits_130(tmp_path: Path, tiny_bert_dir: Path) -> None:
    db = tmp_path / "int.db"
    proc = start_evolve(run_args(db, tiny_bert_dir, 60))
    try:
        wait_for_generations(db, 2, [proc])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Interrupted: run 1 is saved through generation ")
    assert last.endswith(f"Resume with: evolve resume 1 --db {db}")
    saved = int(last.split("generation ")[1].split(".")[0])
    with LogStore(db, readonly=True) as s:
        run = s.run(1)
        assert run["status"] == "interrupted" and run_process_state(run) is None
        assert s.last_generation(1)["generation"] == saved
    listing = invoke("runs", "--db", str(db))  # resuming is the kill -9 test's business
    assert listing.exit_code == 0 and "interrupted" in listing.output.splitlines()[2]


def test_two_runs_write_one_database_while_evolve_sql_reads_it(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    db = tmp_path / "shared.db"  # fresh: both writers race to create and migrate it
    generations = 40
    writers = [start_evolve(run_args(db, tiny_bert_dir, generations, seed=s)) for s in (1, 2)]
    count = "SELECT COUNT(*) AS n FROM generations"
    seen: list[int] = []
    try:
        wait_for_generations(db, 1, writers)
        # Freeze one writer mid-run (perhaps inside a transaction, holding the write lock)
        # while another process runs `evolve sql`: readers never wait for writers in WAL
        # mode, and the other writer waits on the busy timeout instead of failing.
        frozen = next(w for w in writers if w.poll() is None)
        frozen.send_signal(signal.SIGSTOP)
        try:
            reader = run_evolve(["sql", count, "--db", str(db), "--json"], timeout=60)
            seen.append(json.loads(reader.stdout)[0]["n"])
            before = generations_written(db)
            refused = invoke("sql", "DELETE FROM individuals", "--db", str(db))
            assert generations_written(db) == before
        finally:
            frozen.send_signal(signal.SIGCONT)
        while any(w.poll() is None for w in writers):  # and this process reads meanwhile
            result = invoke("sql", count, "--db", str(db), "--json")
            assert result.exit_code == 0, result.output
            seen.append(json.loads(result.output)[0]["n"])
    finally:
        for proc in writers:
            proc.kill()
    outputs = [w.communicate() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    total = 2 * (generations + 1)
    assert reader.returncode == 0 and reader.stderr == "", reader.stderr
    assert 0 < seen[0] < total  # read while a writer was stopped mid-run
    assert refused.exit_code == 2
    assert refused.output.strip() == (
        "Error: read-only: DELETE refused; only SELECT queries may run here"
    )
    assert integrity(db) == "ok"
    with LogStore(db, readonly=True) as s:
        runs = s.runs()
        assert sorted(r["seed"] for r in runs) == [1, 2]
        assert all(r["status"] == "finished" and r["n_generations"] == 41 for r in runs)
        assert s.query(count)[1] == [(total,)]
        assert s.schema_version() == SCHEMA_VERSION


def test_ctrl_c_before_the_run_exists_exits_130_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scoring.models

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring.models, "_load_uncached", interrupted)
    db = tmp_path / "early.db"
    result = invoke("run", "--prompt", PROMPT, "--mlm", "not-loaded-yet", "--db", str(db), "-q")
    assert result.exit_code == 130
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Interrupted: everything written before Ctrl-C is kept "
        "(`evolve runs` lists runs; `evolve resume ID` continues one)."
    ]
    assert not db.exists() or LogStore(db).runs() == []


# -- a generation is all or nothing, even under SIGKILL ---------------------------------------------

_KILL_MID_GENERATION = textwrap.dedent(
    """
    import os, signal, sys
    from evolve.store import LogStore

    def row(text, fitness, parents=()):
        return {"text": text, "token_ids": [1, 2, 3], "fitness": fitness,
                "op": "mut_span", "parents": list(parents), "span": (0, 1), "detail": {}}

    stats = {"best": 0.0, "mean": 0.0, "std": 0.0, "worst": 0.0, "n_evaluated": 2,
             "n_cache_hits": 0, "n_unique": 2, "best_individual_id": None, "seconds": 0.1}
    store = LogStore(sys.argv[1])
    run = store.create_run("Cheddar is", 0, {}, "tiny-bert", None, "pll")
    a, b = store.write_generation(run, 0, [row(" old", -2.0), row(" new", -3.0)], stats,
                                  "rng0", {"stall": 0})

    def kill_before_the_generation_row(statement):
        # Individuals and parents of generation 1 are inserted by now, in the open
        # transaction; die as power loss would, with no chance to roll back.
        if statement.lstrip().upper().startswith("INSERT INTO GENERATIONS"):
            os.kill(os.getpid(), signal.SIGKILL)

    store.db.conn.set_trace_callback(kill_before_the_generation_row)
    store.write_generation(run, 1, [row(" older", -1.0, (a,)), row(" newer", -1.5, (a, b))],
                           stats, "rng1", {"stall": 0})
    print("not killed")
    """
)


def test_sigkill_inside_a_generation_write_keeps_the_previous_generation(tmp_path: Path) -> None:
    db = tmp_path / "atomic.db"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_GENERATION, str(db)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert integrity(db) == "ok"
    with LogStore(db) as s:  # the next writer's open recovers the journal
        assert s.last_generation(1)["generation"] == 0
        assert s.run(1)["generations_done"] == 0
        assert [r["text"] for r in s.population(1, 0)] == [" old", " new"]
        assert s.query("SELECT COUNT(*) FROM individuals")[1] == [(2,)]
        assert s.query("SELECT COUNT(*) FROM parents")[1] == [(0,)]
        assert s.query("SELECT COUNT(*) FROM texts WHERE text LIKE ' newer' OR text = ' older'")[
            1
        ] == [(0,)]
        assert run_process_state(s.run(1)) == "dead"
        s.set_status(1, "running")  # a resume takes over the dead run ...
        s.write_generation(1, 1, [], {"best": None}, "rng1", {})  # ... and writes generation 1
        assert s.run(1)["generations_done"] == 1


def test_commits_are_durable_across_power_loss(tmp_path: Path) -> None:
    # A kill is survived by any commit the OS has seen; power loss only by one synced to
    # disk. WAL with synchronous=FULL syncs the log on every commit, so a generation whose
    # write returned is on disk. (NORMAL would be faster and could lose the last commits.)
    with LogStore(tmp_path / "sync.db") as s:
        assert s.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# -- schema: older databases are migrated, foreign and newer ones refused untouched --------------


def _database_at_version(path: Path, version: int) -> None:
    """A database as mlm-evolve wrote it when it had only the first `version` migrations,
    holding one finished run with one generation."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
        "applied_at TEXT NOT NULL)"
    )

    class _Db:  # what a migration uses of sqlite_utils.Database
        def __init__(self, c: sqlite3.Connection) -> None:
            self.conn = c

    for number, fn in enumerate(MIGRATIONS[:version], start=1):
        fn(_Db(conn))  # type: ignore[arg-type]
        conn.execute("INSERT INTO _migrations VALUES (?, ?, 'then')", (number, fn.__name__))
    conn.execute(
        "INSERT INTO runs (id, created_at, status, prompt, seed, config) "
        "VALUES (1, 'then', 'finished', 'Cheddar is', 3, '{}')"
    )
    conn.execute("INSERT INTO texts VALUES ('t1', ' old')")
    scores = ("scores, ", "'{}', ") if version < 4 else ("", "")  # migration 4 dropped it
    conn.execute(
        "INSERT INTO individuals (run_id, generation, position, text_id, token_ids, n_tokens, "
        f"fitness, {scores[0]}op, created_at) "
        f"VALUES (1, 0, 0, 't1', '[1]', 1, -2.0, {scores[1]}'init', 'x')"
    )
    conn.execute(
        "INSERT INTO generations (run_id, generation, best, rng_state, state, created_at) "
        "VALUES (1, 0, -2.0, 'rng', '{}', 'then')"
    )
    conn.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_older_schema_is_migrated_on_open_keeping_its_runs(tmp_path: Path, version: int) -> None:
    db = tmp_path / f"v{version}.db"
    _database_at_version(db, version)
    result = invoke("runs", "--db", str(db))  # any command that opens it for writing
    assert result.exit_code == 0, result.output
    assert "finished" in result.output and "Cheddar is" in result.output
    with LogStore(db) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        run = s.run(1)
        assert run["seed"] == 3 and run["pid"] is None
        assert [r["text"] for r in s.population(1, 0)] == [" old"]
        new = s.create_run("Brie is", 1, {}, "tiny-bert", None, "pll")
        assert s.run(new)["pid"] == os.getpid()


def test_running_run_from_before_process_tracking_can_be_resumed(tmp_path: Path) -> None:
    db = tmp_path / "legacy.db"
    _database_at_version(db, 1)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'running' WHERE id = 1")
    conn.close()
    with LogStore(db) as s:
        assert run_process_state(s.run(1)) == "unknown"  # no pid was recorded then
        s.set_status(1, "running")  # cannot tell, so resuming is allowed
        assert s.run(1)["pid"] == os.getpid()


def test_foreign_and_newer_files_are_refused_untouched_by_every_command(tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("my notes, not a database\n" * 40)
    future = tmp_path / "future.db"
    LogStore(future).close()
    with sqlite3.connect(future) as conn:
        conn.execute("INSERT INTO _migrations VALUES (99, 'm099_from_the_future', 'later')")
    conn.close()
    before = {p: digest(p) for p in (notes, future)}
    commands = [
        ["run", "--prompt", PROMPT, "--mlm", "unused"],
        ["resume", "1"],
        ["runs"],
        ["show", "1"],
        ["lineage", "1"],
        ["sql", "SELECT 1"],
    ]
    for args in commands:
        result = invoke(*args, "--db", str(notes))
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip() == f"Error: {notes} is not an mlm-evolve database (not SQLite)"
    for args in commands[:-1]:  # `evolve sql` may read a newer database: it cannot change it
        result = invoke(*args, "--db", str(future))
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "has schema version 99, newer than this mlm-evolve" in lines[0]
    assert {p: digest(p) for p in (notes, future)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.db", "notes.db"]


def test_unusable_database_paths_get_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("runs", "--db", str(blocker / "sub" / "r.db"))
    assert result.exit_code == 2 and "no database at" in result.output
    with pytest.raises(StoreError, match="cannot create"):
        LogStore(blocker / "sub" / "r.db")
    if Path("/proc/self").is_dir():  # a place where no file can be created, even by root
        result = invoke("run", "--prompt", PROMPT, "--mlm", "unused", "--db", "/proc/x/r.db")
        assert result.exit_code == 2 and result.output.startswith("Error: cannot create /proc/x")
        result = invoke("run", "--prompt", PROMPT, "--mlm", "unused", "--db", "/proc/r.db")
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            "Error: cannot open /proc/r.db: unable to open database file"
        )
    corrupt = tmp_path / "corrupt.db"
    with LogStore(corrupt) as s:
        s.create_run("Cheddar is", 1, {}, "tiny-bert", None, "pll")
    data = bytearray(corrupt.read_bytes())
    data[100:4096] = b"\x00garbage" * ((4096 - 100) // 8)
    corrupt.write_bytes(bytes(data))
    for args in (["runs"], ["sql", "SELECT * FROM runs"]):
        result = invoke(*args, "--db", str(corrupt))
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and "malformed" in result.output


# -- dead or alive: the process recorded with a running run ---------------------------------------


@pytest.fixture
def sleeper() -> Any:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _set_owner(db: Path, run_id: int, pid: int, host: str, token: str | None) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE runs SET pid = ?, host = ?, process = ? WHERE id = ?",
            (pid, host, token, run_id),
        )
    conn.close()


@pytest.mark.skipif(not LINUX_PROC, reason="process tokens need Linux /proc")
def test_a_live_run_is_not_taken_over_and_a_dead_one_is(tmp_path: Path, sleeper: Any) -> None:
    db = tmp_path / "owner.db"
    with LogStore(db) as s:
        run = s.create_run("Cheddar is", 1, {}, "tiny-bert", None, "pll")
        assert run_process_state(s.run(run)) == "alive"  # this very process
        s.set_status(run, "running")  # its own run: fine
    token = process_token(sleeper.pid)
    assert token is not None and token != process_token()
    _set_owner(db, run, sleeper.pid, socket.gethostname(), token)
    with LogStore(db) as s:
        assert run_process_state(s.run(run)) == "alive"
        with pytest.raises(StoreError, match=f"run {run} is still running in process"):
            s.set_status(run, "running")
        assert s.run(run)["pid"] == sleeper.pid  # unchanged
        result = invoke("runs", "--db", str(db))
        assert "running" in result.output and "dead" not in result.output
        s.set_status(run, "interrupted")  # any other status is not a takeover
        _set_owner(db, run, sleeper.pid, socket.gethostname(), token)
        s.set_status(run, "running")  # not 'running' before: nothing to take over
        assert s.run(run)["pid"] == os.getpid()
        _set_owner(db, run, sleeper.pid, socket.gethostname(), token)
        sleeper.kill()
        sleeper.wait()
        assert run_process_state(s.run(run)) == "dead"
        shown = invoke("show", str(run), "--db", str(db))
        assert shown.output.startswith(f"Run {run}: dead")
        assert f"`evolve resume {run}` continues it" in shown.output
        s.set_status(run, "running")
        assert s.run(run)["pid"] == os.getpid() and s.run(run)["status"] == "running"


@pytest.mark.skipif(not LINUX_PROC, reason="process tokens need Linux /proc")
def test_process_state_sees_reused_pids_reboots_and_other_hosts(sleeper: Any) -> None:
    host = socket.gethostname()
    token = process_token(sleeper.pid)
    assert token is not None
    boot, namespace, started = token.split("/")
    assert process_state(sleeper.pid, host, token) == "alive"
    # The same pid, but a process that started at another time: the pid was reused.
    assert process_state(sleeper.pid, host, f"{boot}/{namespace}/{int(started) + 1}") == "dead"
    assert process_state(sleeper.pid, host, f"another-boot/{namespace}/{started}") == "dead"
    assert process_state(sleeper.pid, host, f"{boot}/12345/{started}") == "unknown"
    assert process_state(sleeper.pid, "another-host", token) == "unknown"
    assert process_state(None, host, None) == "unknown"
    assert process_state(sleeper.pid, host, None) == "alive"  # no token: the pid alone
    sleeper.kill()
    sleeper.wait()
    assert process_state(sleeper.pid, host, token) == "dead"
    assert process_state(sleeper.pid, host, None) == "dead"


# -- resuming restores the score cache, also for offspring that were not kept -------------------


def test_scores_of_dropped_offspring_warm_the_cache(tmp_path: Path) -> None:
    with LogStore(tmp_path / "d.db") as s:
        run = s.create_run("Cheddar is", 1, {}, "tiny-bert", None, "pll")
        row = {"text": " old", "token_ids": [5, 6], "fitness": -1.0, "op": "init"}
        pll = "pll/original/tiny-bert"
        scores = [
            {"text": " old", "prefix": "Cheddar is", "scorer": pll, "total": -2.0, "n_tokens": 2},
            {"text": " gone", "prefix": "Cheddar is", "scorer": pll, "total": -9.0, "n_tokens": 3},
        ]
        s.write_generation(
            run, 0, [row], {"best": -1.0}, "rng", {}, scores=scores
        )
        stored = s.scores_for_run(run)
        assert stored[" gone"][pll] == {"total": -9.0, "n_tokens": 3, "per_token": None}
        assert stored[" old"][pll]["total"] == -2.0


def test_every_text_a_mu_plus_lambda_run_scored_can_warm_a_resume(
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evolve.ga.evaluate import Evaluator
    from evolve.ga.representation import Representation
    from scoring.models import load_mlm

    evaluated: set[tuple[int, ...]] = set()
    original = Evaluator.evaluate

    def recording(self: Evaluator, population: Any) -> Any:
        stats = original(self, population)
        evaluated.update(tuple(ind) for ind in population)
        return stats

    monkeypatch.setattr(Evaluator, "evaluate", recording)
    cfg = RunConfig(
        prompt=PROMPT,
        population=4,
        generations=3,
        algorithm="mu_plus_lambda",
        cxpb=0.2,
        mutpb=0.7,
        offspring=12,  # 12 scored offspring compete for 4 places each generation
        init_len=4,
        min_len=3,
        max_len=5,
        mlm=str(tiny_bert_dir),
        seed=2,
        mutation=MutationConfig(max_span=1, top_k=3, temperature=0.5),
    )
    with LogStore(tmp_path / "mpl.db") as store:
        run = start_run(cfg, store).run_id
        stored = store.scores_for_run(run)
    rep = Representation.build(load_mlm(str(tiny_bert_dir)), PROMPT)
    # What resume_run's cache warming can restore: every evaluated text has its score.
    assert {rep.text_of(ids) for ids in evaluated} - set(stored) == set()


@pytest.mark.parametrize("algorithm", ["simple", "mu_plus_lambda"])
def test_resume_with_undone_and_dropped_texts_equals_uninterrupted(
    tmp_path: Path, tiny_bert_dir: Path, algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts scored but not kept (undone by Metropolis-Hastings, dropped by survivor
    selection) warm a resume from the scores table: the warmed cache is the one the
    uninterrupted run ended with, and the resumed run equals it (individuals, scores,
    statistics, cache hits)."""
    from evolve.ga.engine import Engine
    from evolve.ga.evaluate import Evaluator
    from evolve.store.recorder import Recorder

    evaluators: list[Evaluator] = []
    original_init = Evaluator.__init__

    def keep(self: Evaluator, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        evaluators.append(self)

    monkeypatch.setattr(Evaluator, "__init__", keep)
    cfg = RunConfig(
        prompt=PROMPT,
        population=6,
        generations=4,
        algorithm=algorithm,
        cxpb=0.0,
        mutpb=0.9,
        offspring=8 if algorithm == "mu_plus_lambda" else 0,  # 8 compete for 6 places
        elites=0,
        mh=True,
        init_len=4,
        min_len=3,
        max_len=5,
        mlm=str(tiny_bert_dir),
        seed=1,  # with the tiny MLM, the simple loop undoes a move in generation 2
        mutation=MutationConfig(
            max_span=2, top_k=0, order="parallel", indel_prob=0.0, temperature=3.0
        ),
    )
    with LogStore(tmp_path / "whole.db") as whole:
        ref = start_run(cfg, whole).run_id
        (ran,) = evaluators
        warmed = Engine.build(cfg)
        point = Recorder(whole, ref).resume_point(warmed)
        assert point is not None
        warmed.evaluator.warm(point.scores)
    (name,) = warmed.objective.scorers
    assert warmed.evaluator.channels[name].known == ran.channels[name].known

    def stop_after_gen_2(report: Any) -> None:
        if report.generation == 2:
            raise KeyboardInterrupt

    with LogStore(tmp_path / "cut.db") as cut:
        with pytest.raises(RunInterrupted) as info:
            start_run(cfg, cut, stop_after_gen_2)
        run = info.value.run_id
        # What the resume has to warm its cache with, besides the individuals.
        # (8 offspring for 6 places always leave some out; whether the simple loop undoes a
        # move before the cut depends on the tiny model, whose trained vocabulary can differ
        # between processes, so only the warmed-cache check above covers it for sure.)
        if algorithm == "mu_plus_lambda":
            kept = {r["text"] for r in cut.individuals(run)}
            assert set(cut.scores_for_run(run)) - kept
        resume_run(run, cut)
    assert run_record(tmp_path / "cut.db", run) == run_record(tmp_path / "whole.db", ref)


def test_generations_written_helper_reads_without_writing(tmp_path: Path) -> None:
    db = tmp_path / "poll.db"
    assert generations_written(db) == 0 and not db.exists()
    with LogStore(db) as s:
        run = s.create_run("Cheddar is", 1, {}, "tiny-bert", None, "pll")
        s.write_generation(run, 0, [], {"best": None}, "rng", {})
    before = digest(db)
    assert generations_written(db) == 1 and generations_written(db, run) == 1
    assert digest(db) == before

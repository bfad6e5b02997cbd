"""The database file under copying, links, endless queries and read-only storage (issue 15,
items 2-5).

- Each generation is checkpointed into the database file, so a copy of the file alone is a
  whole database; `evolve db backup` copies a database that a run is writing.
- A file with several names (hard links) is refused for writing; run ids stay distinct
  across processes.
- `evolve sql` streams rows, stops at --timeout, at --max-rows and on Ctrl-C, and reads its
  query from --file or standard input.
- Read commands work on read-only storage; writing commands say in one line what they miss.

Signals and concurrent writers are tried on real child processes (tests/helpers_proc.py).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers_proc import (
    ROOT,
    child_env,
    generations_written,
    run_args,
    start_evolve,
    wait_for_generations,
)

import cli.sql_cmds
import cli.store_cmds
import evolve.store.access as access
from evolve.store import LogStore, StoreError
from evolve.store.access import backup_database

Invoke = Callable[..., Result]
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"


def one_error_line(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def ind(text: str, fitness: float) -> dict[str, Any]:
    return {
        "text": text,
        "token_ids": [ord(c) for c in text[:4]],
        "fitness": fitness,
        "op": "init",
        "parents": [],
        "span": None,
        "detail": {},
        "position": 0,
    }


STATS = {"best": 1.0, "mean": 0.5, "std": 0.1, "worst": 0.0, "n_evaluated": 2, "seconds": 0.1}


def filled(path: Path, generations: int = 2) -> Path:
    """A database at `path` with one finished run of `generations` generations, closed."""
    with LogStore(path) as store:
        run = store.create_run("Cheddar is", 1, {}, "tiny-bert", None, "pll")
        for g in range(generations):
            store.write_generation(
                run, g, [ind(f" gen {g} a", 1.0), ind(f" b{g}", 0.0)], STATS, "{}", {}
            )
        store.finish_run(run)
    return path


def file_alone(path: Path, into: Path) -> sqlite3.Connection:
    """A copy of the database file without its -wal and -shm, opened."""
    copy = into / "copy.db"
    shutil.copyfile(path, copy)
    return sqlite3.connect(copy)


def integrity(conn: sqlite3.Connection) -> str:
    return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# -- item 2: the file alone is whole; backup ---------------------------------------------------


def test_each_generation_reaches_the_database_file(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    with LogStore(db) as store:
        run = store.create_run("Cheddar is", 1, {}, "tiny-bert", None, "pll")
        # a reader with an open snapshot must not block the writer or its checkpoint
        reader = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM runs").fetchone()
        store.write_generation(run, 0, [ind(" a", 1.0)], STATS, "{}", {})
        reader.rollback()
        for g in range(1, 4):
            store.write_generation(run, g, [ind(f" g{g}", 1.0)], STATS, "{}", {})
            assert Path(f"{db}-wal").exists()  # the store is open: WAL mode is in use
            copy = file_alone(db, tmp_path)
            assert integrity(copy) == "ok"
            assert copy.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == g + 1
            copy.close()
        reader.close()


def _checkpointed(db: Path) -> bool:
    """Whether the WAL index says every committed frame is in the database file: then no
    checkpoint is half-way through writing it (nBackfill is set after a checkpoint ends)."""
    try:
        header = Path(f"{db}-shm").read_bytes()[:100]
    except OSError:
        return False
    (max_frame,) = struct.unpack("=I", header[16:20])
    (backfilled,) = struct.unpack("=I", header[96:100])
    return max_frame == backfilled


def test_a_copy_of_the_file_alone_during_a_run_holds_its_generations(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """The issue's trial: `cp` of the .db mid-run gave no runs; a removed -wal plus kill -9
    lost the committed generations and the schema."""
    db = tmp_path / "run.db"
    proc = start_evolve(run_args(db, tiny_bert_dir, 300))
    try:
        wait_for_generations(db, 3, [proc])
        for _ in range(200):  # stop it between generations (not inside a checkpoint)
            proc.send_signal(signal.SIGSTOP)
            if _checkpointed(db):
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        else:
            pytest.fail("the run never stood between generations with its WAL checkpointed")
        committed = generations_written(db)
        copy = file_alone(db, tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.send_signal(signal.SIGCONT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert committed >= 3
    assert integrity(copy) == "ok"
    assert copy.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == committed
    assert copy.execute("SELECT id, status FROM runs").fetchall() == [(1, "running")]
    copy.close()
    for extra in ("-wal", "-shm"):  # the second trial
        Path(f"{db}{extra}").unlink(missing_ok=True)
    with LogStore(db) as store:
        assert len(store.generation_stats(1)) == committed
        assert store.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_backup_while_a_run_writes(tmp_path: Path, tiny_bert_dir: Path, invoke: Invoke) -> None:
    db = tmp_path / "run.db"
    proc = start_evolve(run_args(db, tiny_bert_dir, 300))
    try:
        wait_for_generations(db, 2, [proc])
        seen = []
        for i in range(3):
            before = generations_written(db)
            done = backup_database(db, tmp_path / f"copy{i}.db")
            seen.append((before, done.generations))
            conn = sqlite3.connect(done.dest)
            assert integrity(conn) == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            (n,) = conn.execute("SELECT COUNT(*) FROM generations").fetchone()
            conn.close()
            assert n == done.generations >= before  # everything committed before it began
            assert not Path(f"{done.dest}-wal").exists()
        result = invoke("db", "backup", tmp_path / "cli.db", "--db", db)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"Backed up {db} to {tmp_path / 'cli.db'}: 1 runs, ")
        assert proc.poll() is None, "the run was disturbed by the backups"
        assert generations_written(db) > seen[0][0]  # it kept writing meanwhile
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_backup_refuses_what_it_must_not_overwrite(tmp_path: Path, invoke: Invoke) -> None:
    db = filled(tmp_path / "a.db")
    dest = tmp_path / "b.db"
    dest.write_text("keep me")
    one_error_line(invoke("db", "backup", dest, "--db", db), f"{dest} exists; use --force")
    assert dest.read_text() == "keep me"
    for same in (db, tmp_path / "." / "a.db"):
        one_error_line(invoke("db", "backup", same, "--db", db, "--force"), "is the database")
    os.link(db, tmp_path / "link.db")
    one_error_line(
        invoke("db", "backup", tmp_path / "link.db", "--db", db, "--force"), "is the database"
    )
    one_error_line(invoke("db", "backup", tmp_path, "--db", db), "is a folder")
    one_error_line(invoke("db", "backup", tmp_path / "c.db", "--db", tmp_path / "no.db"), "no")
    one_error_line(invoke("db", "backup", tmp_path / "x" / "c.db", "--db", db), "no folder")
    result = invoke("db", "backup", dest, "--db", db, "--force")
    assert result.exit_code == 0, result.output
    with LogStore(dest) as store:
        assert [r["id"] for r in store.runs()] == [1] and len(store.generation_stats(1)) == 2


# -- item 3: one file, one name; distinct run ids ----------------------------------------------


def test_a_hard_linked_database_is_refused_for_writing(tmp_path: Path, invoke: Invoke) -> None:
    db = filled(tmp_path / "a.db")
    link = tmp_path / "b.db"
    os.link(db, link)
    for path in (db, link):
        with pytest.raises(StoreError, match="has 2 names"):
            LogStore(path)
        one_error_line(invoke("resume", "1", "--db", path), "has 2 names (hard links)")
        result = invoke("runs", "--db", path)  # reading is harmless
        assert result.exit_code == 0 and "finished" in result.stdout, result.output
    one_error_line(
        invoke("run", "--prompt", "Brie is", "--mlm", "unused", "--db", link), "has 2 names"
    )
    link.unlink()
    LogStore(db).close()  # one name again: writable


def test_two_runs_started_at_once_on_one_file_get_distinct_ids(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    db = tmp_path / "shared.db"
    procs = [start_evolve(run_args(db, tiny_bert_dir, 3, seed=s)) for s in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    finished = sorted(
        line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("Run ")
    )
    assert finished == ["1", "2"]
    with LogStore(db) as store:
        runs = store.runs()
        assert sorted(r["id"] for r in runs) == [1, 2]
        assert {r["pid"] for r in runs} == {p.pid for p in procs}
        assert all(r["n_generations"] == 4 for r in runs)


def test_run_ids_from_many_processes_at_once_are_distinct(tmp_path: Path) -> None:
    db = tmp_path / "ids.db"
    LogStore(db).close()
    script = textwrap.dedent(
        f"""
        import sys
        from evolve.store import LogStore
        with LogStore({str(db)!r}) as s:
            print(" ".join(str(s.create_run("p", 1, {{}}, "m", None, "pll")) for _ in range(15)))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    claimed = [int(i) for p in procs for i in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(claimed) == list(range(1, 61))
    with LogStore(db) as store:
        owners = {r["id"]: r["pid"] for r in store.runs()}
    assert len(owners) == 60 and set(owners.values()) == {p.pid for p in procs}


# -- item 4: evolve sql that cannot hang -------------------------------------------------------


def test_an_endless_query_stops_at_the_timeout(tmp_path: Path, invoke: Invoke) -> None:
    db = filled(tmp_path / "a.db")
    started = time.monotonic()
    result = invoke("sql", f"{ENDLESS} SELECT COUNT(*) FROM c", "--timeout", "0.5", "--db", db)
    elapsed = time.monotonic() - started
    one_error_line(result, "the query was stopped at its time limit of 0.5 s (--timeout")
    assert elapsed < 3, elapsed
    finite = f"{ENDLESS.replace('FROM c)', 'FROM c WHERE x < 300000)')} SELECT COUNT(*) FROM c"
    assert invoke("sql", finite, "--timeout", "0", "--db", db).stdout.split()[-1] == "300000"
    one_error_line(invoke("sql", "SELECT 1", "--timeout", "nan", "--db", db), "not nan")
    one_error_line(invoke("sql", "SELECT 1", "--timeout", "-1", "--db", db), "--timeout")


def test_max_rows_cuts_the_output_with_a_line_on_stderr(tmp_path: Path, invoke: Invoke) -> None:
    db = filled(tmp_path / "a.db")
    result = invoke("sql", f"{ENDLESS} SELECT x FROM c", "--max-rows", "5", "--db", db)
    assert result.exit_code == 0, result.output
    assert [line.strip() for line in result.stdout.splitlines()] == [
        "x", "-", "1", "2", "3", "4", "5"
    ]  # fmt: skip
    assert result.stderr.strip() == (
        "(output cut at 5 rows: the query has more; --max-rows 0 prints all)"
    )
    default = invoke("sql", f"{ENDLESS} SELECT x FROM c", "--json", "--db", db)
    records = json.loads(default.stdout)  # a cut JSON array is still a whole array
    assert len(records) == cli.store_cmds.SQL_MAX_ROWS == 10_000
    assert records[-1] == {"x": 10_000} and "cut at 10,000 rows" in default.stderr
    exact = invoke("sql", "SELECT id FROM runs", "--max-rows", "1", "--db", db)
    assert exact.exit_code == 0 and exact.stderr == ""  # exactly max rows: nothing was cut
    empty = invoke("sql", "SELECT id FROM runs WHERE id < 0", "--json", "--db", db)
    assert json.loads(empty.stdout) == []
    everything = f"{ENDLESS.replace('FROM c)', 'FROM c WHERE x < 25000)')} SELECT x FROM c"
    result = invoke("sql", everything, "--max-rows", "0", "--json", "--db", db)
    assert len(json.loads(result.stdout)) == 25_000 and result.stderr == ""


def test_long_tables_print_in_blocks_with_the_first_blocks_widths(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = filled(tmp_path / "a.db")
    monkeypatch.setattr(cli.sql_cmds, "SQL_BLOCK", 3)  # where `evolve sql` now lives
    query = f"{ENDLESS.replace('FROM c)', 'FROM c WHERE x < 8)')} SELECT x, 'r' || x AS name FROM c"
    lines = invoke("sql", query, "--db", db).stdout.splitlines()
    assert lines[0] == "x  name" and len(lines) == 2 + 8
    assert [line.split() for line in lines[2:]] == [[str(i), f"r{i}"] for i in range(1, 9)]
    assert len({len(line) for line in lines[2:]}) == 1  # later blocks keep the columns


def test_rows_are_streamed_not_fetched_all_at_once(tmp_path: Path) -> None:
    db = filled(tmp_path / "a.db")
    with LogStore(db, readonly=True) as store:
        started = time.monotonic()
        with store.stream(f"{ENDLESS} SELECT x FROM c", timeout=5) as (columns, rows):
            first = [next(rows) for _ in range(10)]
        assert time.monotonic() - started < 1  # an endless result: only streaming returns
        assert columns == ["x"] and first == [(i,) for i in range(1, 11)]
        assert store.query("SELECT COUNT(*) FROM runs") == (["COUNT(*)"], [(1,)])


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated (SIGTERM)")],
)
def test_ctrl_c_stops_a_running_query_within_a_second(
    tmp_path: Path, sig: signal.Signals, code: int, word: str
) -> None:
    db = filled(tmp_path / "a.db")
    # Two rows at once, then a count that never ends: the signal lands inside SQLite.
    # (Python's sqlite3 reads one row ahead, so row 1 is printed once row 2 is found.)
    query = f"{ENDLESS} SELECT 1 AS a UNION ALL SELECT 2 UNION ALL SELECT COUNT(*) FROM c"
    proc = start_evolve(["sql", query, "--json", "--timeout", "0", "--db", str(db)])
    said: queue.Queue[tuple[float, str]] = queue.Queue()

    def watch_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            said.put((time.monotonic(), line.strip()))

    try:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        assert lines.get(timeout=120) == "[\n"  # row 1 is out: the count is running
        threading.Thread(target=watch_stderr, daemon=True).start()
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(sig)
        when, message = said.get(timeout=30)
        out = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code
    # The query stops at once; the process then exits after the interpreter's shutdown
    # (torch is loaded), which takes seconds on a busy machine, as after any command.
    assert when - sent < 1, when - sent
    assert message == f"{word}: the query was stopped after 1 row; it changed nothing."
    assert said.empty()
    assert out.strip() == '{"a": 1}\n]'


def test_query_from_a_file_or_standard_input(tmp_path: Path, invoke: Invoke) -> None:
    db = filled(tmp_path / "a.db")
    query = tmp_path / "q.sql"
    query.write_text("-- generations per run\nSELECT run_id, COUNT(*) AS n\nFROM generations\n")
    for args, stdin in ((["--file", str(query)], None), (["-f", "-"], query.read_text())):
        result = invoke("sql", *args, "--json", "--db", db, input=stdin)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [{"run_id": 1, "n": 2}]
    one_error_line(invoke("sql", "SELECT 1", "-f", query, "--db", db), "not both")
    one_error_line(invoke("sql", "--db", db), "no query")
    latin = tmp_path / "latin.sql"
    latin.write_bytes("SELECT 'café'".encode("latin-1"))
    one_error_line(invoke("sql", "-f", latin, "--db", db), "latin.sql is not UTF-8 text")
    blank = tmp_path / "blank.sql"
    blank.write_text("\n  \n")
    one_error_line(invoke("sql", "-f", blank, "--db", db), "holds no query")
    one_error_line(invoke("sql", "-f", tmp_path / "none.sql", "--db", db), "none.sql")


# -- item 5: read-only storage -----------------------------------------------------------------


def read_only_folder(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make the store see `folder` (and what is in it) as read-only storage. Root may write
    anywhere, so permission bits cannot show it here; `test_real_read_only_mount` does."""
    real = access._can_write
    folder = folder.absolute()

    def can_write(path: Path) -> bool:
        path = Path(path).absolute()
        return False if path == folder or folder in path.parents else real(path)

    monkeypatch.setattr(access, "_can_write", can_write)


def test_read_commands_work_on_read_only_storage(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    db = filled(folder / "a.db")
    before = sorted(folder.iterdir())
    read_only_folder(monkeypatch, folder)
    assert "immutable=1" in access.read_only_uri(db)
    for args in (["runs"], ["show", "1"], ["lineage", "1"], ["sql", "SELECT COUNT(*) FROM texts"]):
        result = invoke(*args, "--db", db)
        assert result.exit_code == 0, (args, result.output)
    assert "finished" in invoke("runs", "--db", db).stdout
    backup = invoke("db", "backup", tmp_path / "copy.db", "--db", db)
    assert backup.exit_code == 0, backup.output
    assert sorted(folder.iterdir()) == before  # not even a -shm file
    for args in (["resume", "1"], ["run", "--prompt", "Brie is", "--mlm", "unused"]):
        one_error_line(
            invoke(*args, "--db", db),
            f"cannot write {db}: its folder is read-only (SQLite keeps its -wal and -shm files "
            "next to the database); commands that only read it (runs, show, lineage, sql, db "
            "backup) still work",
        )
    with pytest.raises(StoreError, match="its folder is read-only"):
        LogStore(db)
    with LogStore.for_reading(db) as store, pytest.raises(StoreError, match="read-only"):
        store.create_run("Brie is", 1, {}, "tiny-bert", None, "pll")


def test_a_read_only_file_in_a_writable_folder(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = filled(tmp_path / "a.db")
    real = access._can_write
    monkeypatch.setattr(access, "_can_write", lambda p: False if Path(p) == db else real(p))
    assert invoke("runs", "--db", db).exit_code == 0
    one_error_line(invoke("resume", "1", "--db", db), f"cannot write {db}: the file is read-only")


def test_an_older_schema_on_read_only_storage_is_one_line(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    db = filled(folder / "a.db")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "DELETE FROM _migrations WHERE version = (SELECT MAX(version) FROM _migrations)"
        )
    conn.close()
    read_only_folder(monkeypatch, folder)
    one_error_line(invoke("runs", "--db", db), "older than this mlm-evolve's")
    assert invoke("sql", "SELECT COUNT(*) FROM runs", "--db", db).exit_code == 0


def _can_mount_read_only(folder: Path) -> bool:
    probe = (
        subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder}",
            ],  # fmt: skip
            capture_output=True,
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


def test_real_read_only_mount(tmp_path: Path) -> None:
    """Read-only storage for real: a read-only bind mount in a private mount namespace
    (needs `unshare -m`, which root in a container usually has)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    db = filled(folder / "a.db")
    if not _can_mount_read_only(folder):
        pytest.skip("no private read-only mount here (unshare -m / mount not permitted)")
    script = textwrap.dedent(
        f"""
        from click.testing import CliRunner
        from cli.main import cli
        db = {str(db)!r}
        for args in (["runs"], ["show", "1"], ["sql", "SELECT COUNT(*) AS n FROM generations"],
                     ["resume", "1"]):
            r = CliRunner().invoke(cli, [*args, "--db", db])
            print(args[0], r.exit_code, r.output.strip().splitlines()[-1])
        """
    )
    shell = (
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && "
        f'touch {folder}/x 2>/dev/null; test ! -e {folder}/x && exec {sys.executable} -c "$0"'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell, script],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("runs 0 ") and lines[1].startswith("show 0 ")
    assert lines[2] == "sql 0 2"
    assert lines[3].startswith(f"resume 2 Error: cannot write {db}: its folder is read-only")
    assert sorted(p.name for p in folder.iterdir()) == ["a.db"]

"""Hostile databases, files and outputs at the CLI (issue 25).

A run database is a file people share, so what it holds is data, never terminal commands; a
file named on the command line is read only if it is a regular file of bounded size; a query
cannot take more than a bounded amount of memory; `export --out` writes a whole file or none;
and output that cannot be written is one line, not a traceback.

Cases that would block (a FIFO) or eat memory on a regression run in a child process with a
timeout and an address-space limit, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers_proc import ROOT, child_env

from cli import store_cmds
from cli.config_files import to_toml
from cli.files import MAX_TEXT_FILE_BYTES
from cli.tables import format_cell, format_table, visible
from evolve.store import LogStore

Invoke = Callable[..., Result]
TITLE = "\x1b]0;PWNED\x07"  # OSC 0: sets the terminal's window title
CLEAR = "\x1b[2J"  # CSI 2 J: clears the screen
CSI8 = "\x9b2J"  # the 8-bit CSI, which some terminals obey
RLO = "\u202e"  # right-to-left override: shows what follows reversed
RAW = ("\x1b", "\x07", "\x9b", RLO, "\r")


def one_error_line(result: Result, fragment: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def _child(code: str, timeout: float = 120, **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run Python `code` in a child with this checkout, at most 3 GiB of address space and
    a timeout: a blocking or memory-eating regression fails instead of hanging the suite."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limits,
        **popen,
    )


# -- item 3: terminal control characters ---------------------------------------------------------


def test_visible_writes_every_control_character_as_text() -> None:
    assert visible("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert visible(TITLE + CLEAR) == "\\x1b]0;PWNED\\x07\\x1b[2J"
    assert visible(CSI8 + RLO + "\x7f\u2028") == "\\x9b2J\\u202e\\x7f\\u2028"
    assert visible("naïve café 😀 ok") == "naïve café 😀 ok"  # printable text is kept
    assert format_cell("x\ty\x1b") == "x y\\x1b"  # a tab is a space in a table
    assert format_cell("\x1b" * 100, width=10) == "\\x1b\\x1b\\…"
    assert format_cell(b"\x1b" * 10**6) == format_cell(b"\x1b" * 61)  # cut before escaping


@pytest.fixture
def hostile_db(tmp_path: Path) -> dict[str, Any]:
    """A database whose stored text holds terminal control sequences everywhere."""
    bad = f"evil{TITLE}{CLEAR}{CSI8}{RLO}x\ry"
    path = tmp_path / "hostile.db"
    with LogStore(path) as s:
        run = s.create_run(
            f"prompt {bad}", 1, {}, "tiny-bert", None, "pll", name=bad, tags=[bad], note=bad
        )
        ind = {
            "text": f" text {bad}",
            "token_ids": [1, 2],
            "fitness": -1.0,
            "op": f"init{bad}",
            "parents": [],
            "detail": {},
        }
        stats = {"best": -1.0, "mean": -1.0, "std": 0.0, "worst": -1.0, "n_evaluated": 1,
                 "n_cache_hits": 0, "n_unique": 1, "best_individual_id": None,
                 "seconds": 0.1}  # fmt: skip
        (first,) = s.write_generation(run, 0, [ind], stats, "rng", {})
        # A crafted file can hold anything in any column: a host, an error, a dead process.
        s.db.conn.execute(
            "UPDATE runs SET host = ?, error = ?, status = 'running', pid = 1, process = 'x'",
            (bad, bad),
        )
    return {"path": path, "run": run, "ind": first, "bad": bad}


@pytest.mark.parametrize(
    "args",
    [
        ["runs"],
        ["show", "1"],
        ["lineage", "1"],
        ["sql", "SELECT * FROM runs"],
        ["sql", "SELECT * FROM individual_texts"],
        ["note", "1"],
        ["tag", "1"],
    ],
)
def test_stored_control_characters_never_reach_the_terminal(
    hostile_db: dict[str, Any], invoke: Invoke, args: list[str]
) -> None:
    result = invoke(*args, "--db", hostile_db["path"])
    assert result.exit_code == 0, result.output
    for raw in RAW:
        assert raw not in result.stdout, (raw, result.stdout)
    assert "\\x1b]0;PWNED\\x07" in result.stdout  # shown, as text


def test_a_printed_config_escapes_control_characters_and_reads_back_exact() -> None:
    """`evolve config RUN` prints TOML: C0, DEL, C1 and bidirectional controls are written
    as \\uXXXX escapes, which TOML reads back to the same text."""
    bad = f"p{TITLE}{CSI8}{RLO}\u2028\x7f"
    text = to_toml({"prompt": bad, "mutation": {"ban_tokens": [bad]}})
    for raw in (*RAW, "\u2028", "\x7f"):
        assert raw not in text
    assert tomllib.loads(text) == {"prompt": bad, "mutation": {"ban_tokens": [bad]}}


def test_json_output_keeps_stored_text_exact(hostile_db: dict[str, Any], invoke: Invoke) -> None:
    db = ["--db", hostile_db["path"]]
    (run,) = json.loads(invoke("runs", "--json", *db).stdout)
    assert run["name"] == hostile_db["bad"] and run["tags"] == [hostile_db["bad"]]
    rows = json.loads(invoke("sql", "SELECT prompt FROM runs", "--json", *db).stdout)
    assert rows == [{"prompt": f"prompt {hostile_db['bad']}"}]
    assert json.loads(invoke("show", "1", "--json", *db).stdout)["run"]["note"] == hostile_db["bad"]


# -- item 13: NULL in `evolve sql` ---------------------------------------------------------------


def test_sql_shows_null_apart_from_the_empty_string(
    hostile_db: dict[str, Any], invoke: Invoke
) -> None:
    result = invoke("sql", "SELECT NULL AS a, '' AS b, 'x' AS c", "--db", hostile_db["path"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == "NULL     x"
    as_json = invoke("sql", "SELECT NULL AS a, '' AS b", "--json", "--db", hostile_db["path"])
    assert json.loads(as_json.stdout) == [{"a": None, "b": ""}]
    # Other tables keep an empty cell for a missing value.
    assert format_table(["a", "b"], [[None, "x"]]).splitlines()[2] == "   x"


# -- items 5 and 13: files named on the command line ----------------------------------------------


def test_a_config_file_with_a_utf8_bom_is_read(tmp_path: Path, invoke: Invoke) -> None:
    config = tmp_path / "run.toml"
    config.write_bytes(b"\xef\xbb\xbfpopulation = 1\n")  # as Notepad saves it
    result = invoke("run", "--config", config, "--prompt", "Hi", "--db", tmp_path / "a.db")
    one_error_line(result, "population must be at least 2 (got 1)")  # read, then validated
    assert not (tmp_path / "a.db").exists()


def test_a_query_file_with_a_utf8_bom_runs(
    hostile_db: dict[str, Any], tmp_path: Path, invoke: Invoke
) -> None:
    query = tmp_path / "q.sql"
    query.write_bytes(b"\xef\xbb\xbfSELECT 41 + 1 AS n")
    result = invoke("sql", "-f", query, "--json", "--db", hostile_db["path"])
    assert json.loads(result.stdout) == [{"n": 42}]


def test_oversized_files_are_refused_with_one_line(
    hostile_db: dict[str, Any], tmp_path: Path, invoke: Invoke
) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (MAX_TEXT_FILE_BYTES + 1))
    db = ["--db", hostile_db["path"]]
    for args in (["run", "--config", big], ["run", "--prompt-file", big], ["sql", "-f", big]):
        one_error_line(invoke(*args, *db), "big.txt is larger than 4 MiB; give a smaller file")
    one_error_line(
        invoke("sql", "-f", "-", *db, input="SELECT 1;" * MAX_TEXT_FILE_BYTES),
        "standard input is larger than 4 MiB",
    )


def test_devices_and_fifos_are_refused_at_once(hostile_db: dict[str, Any], tmp_path: Path) -> None:
    """`/dev/zero` used to be read until the OOM killer came, a FIFO without a writer
    blocked forever; both are one line now, in a child with a timeout and 3 GiB."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    db = str(hostile_db["path"])
    cases = [
        ["run", "--config", "/dev/zero", "--db", db],
        ["run", "--config", str(fifo), "--db", db],
        ["run", "--prompt", "x", "--config", str(fifo), "--db", db],
        ["run", "--prompt-file", "/dev/zero", "--db", db],
        ["run", "--prompt-file", str(fifo), "--db", db],
        ["sql", "--file", "/dev/zero", "--db", db],
        ["sql", "--file", str(fifo), "--db", db],
        ["amplify", "--file", "/dev/zero", "--db", db],  # corpora: any size, but files
        ["stunt", "--train", str(fifo), "--dev", str(fifo), "--db", db],
    ]
    code = f"""
        import json
        from click.testing import CliRunner
        from cli.main import cli
        for args in {cases!r}:
            r = CliRunner().invoke(cli, args)
            print(json.dumps([r.exit_code, r.stderr]), flush=True)
    """
    done = _child(code, timeout=180)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(cases), done.stderr[-2000:]
    for (exit_code, stderr), args in zip(results, cases, strict=True):
        assert exit_code == 2 and len(stderr.strip().splitlines()) == 1, (args, stderr)
        kind = "a FIFO (named pipe)" if str(fifo) in args else "a character device"
        assert f"is {kind}, not a regular file" in stderr, stderr


# -- item 2: bounded memory for SQL -------------------------------------------------------------

WIDE = ", ".join(["randomblob(15000000)"] * 30)  # 450 MB in one row
MANY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100)"


def test_sql_cannot_take_unbounded_memory(hostile_db: dict[str, Any]) -> None:
    """Before the limits `SELECT randomblob(1000000000)` took 40 s and 4 GB here."""
    db = str(hostile_db["path"])
    queries = {
        "SELECT randomblob(1000000000)": "larger than 16 MiB",
        "SELECT length(zeroblob(1000000000))": "larger than 16 MiB",
        "SELECT replace(hex(zeroblob(5000000)), '0', '00')": "larger than 16 MiB",
        f"{MANY} SELECT group_concat(randomblob(1000000)) FROM c": "larger than 16 MiB",
        f"SELECT {WIDE}": "needs more than 256 MiB of memory",
    }
    # The console script's own entry (the heap cap is set only where `evolve` is the
    # process), once per query in one child.
    code = f"""
        import json, resource, sys, time
        from cli.process import main
        for query in {list(queries)!r}:
            sys.argv = ["evolve", "sql", query, "--db", {db!r}]
            started = time.monotonic()
            try:
                main()
            except SystemExit as exc:
                print(json.dumps([exc.code, time.monotonic() - started]), flush=True)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
    done = _child(code)
    *lines, peak_mb = done.stdout.splitlines()
    errors = done.stderr.strip().splitlines()
    assert len(lines) == len(errors) == len(queries), done.stderr[-2000:]
    for line, error, (query, fragment) in zip(lines, errors, queries.items(), strict=True):
        exit_code, seconds = json.loads(line)
        assert exit_code == 2 and error.startswith("Error: "), (query, error)
        assert fragment in error and seconds < 10, (query, error, seconds)
    # The libraries take ~300 MB; SQLite's cap and one row's copies stay within another GB.
    assert int(peak_mb) < 1300, peak_mb


def test_a_long_result_of_large_values_is_printed_in_bounded_blocks(
    hostile_db: dict[str, Any], invoke: Invoke, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's first block (held to measure column widths) is cut by bytes as well as
    by rows: 1,000 rows of 2 MB values were 2 GB held before the first line was printed."""
    out = store_cmds._Output(["x", "b"], as_json=False)
    held = []
    for i in range(40):
        out.add((i, b"\x00" * 2_000_000))
        held.append(sum(len(row[1]) for row in out.block))
    out.close()
    assert max(held) <= store_cmds.SQL_BLOCK_BYTES == 16 * 2**20
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 40 and all(len(line) < 80 for line in lines)
    query = f"{MANY} SELECT x, randomblob(2000000) AS b FROM c"
    result = invoke("sql", query, "--db", hostile_db["path"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2 + 100, result.stderr


# -- item 6: export --out is whole or absent ---------------------------------------------------------


@pytest.fixture
def big_run(tmp_path: Path) -> Path:
    """A run whose export is ~150 kB (more than the file size limit used below)."""
    path = tmp_path / "big.db"
    with LogStore(path) as s:
        run = s.create_run("Prompt", 1, {}, "tiny-bert", None, "pll")
        inds = [
            {"text": f" text {i} " + "word " * 60, "token_ids": [i], "fitness": -1.0,
             "op": "init", "parents": [], "detail": {}}
            for i in range(400)
        ]  # fmt: skip
        stats = {"best": -1.0, "mean": -1.0, "std": 0.0, "worst": -1.0, "n_evaluated": 400,
                 "n_cache_hits": 0, "n_unique": 400, "best_individual_id": None,
                 "seconds": 0.1}  # fmt: skip
        s.write_generation(run, 0, inds, stats, "rng", {})
        s.finish_run(run)
    return path


def test_export_refuses_to_overwrite_without_force(big_run: Path, invoke: Invoke) -> None:
    out = big_run.with_name("out.jsonl")
    out.write_text("kept\n")
    one_error_line(invoke("export", "1", "--out", out, "--db", big_run), "exists; use --force")
    assert out.read_text() == "kept\n"
    one_error_line(
        invoke("export", "1", "--out", big_run, "--force", "--db", big_run), "the database itself"
    )
    result = invoke("export", "1", "--out", out, "--force", "--db", big_run)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 400
    assert sorted(p.name for p in big_run.parent.iterdir() if "partial" in p.name) == []


def test_export_onto_a_full_disk_leaves_the_old_file_and_no_partial(big_run: Path) -> None:
    """The disk is 'full' at 64 kB (RLIMIT_FSIZE): before the fix an existing file was
    replaced by a partial one and the process ended in a traceback."""
    old = big_run.with_name("old.jsonl")
    old.write_text("the previous export\n")
    new = big_run.with_name("new.jsonl")
    code = """
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        from cli.process import main
        import sys
        sys.argv = ["evolve", *sys.argv[1:]]
        main()
    """
    for out, extra in ((old, ["--force"]), (new, [])):
        args = ["export", "1", "--out", str(out), *extra, "--db", str(big_run)]
        done = _child(code.replace("sys.argv[1:]", repr(args)))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"Error: cannot write {out}: File too large; {out} "
            + ("is unchanged" if out == old else "was not written")
        ]
    assert old.read_text() == "the previous export\n" and not new.exists()
    assert [p.name for p in big_run.parent.iterdir() if "partial" in p.name] == []


# -- item 7: output that cannot be written ----------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_stdout_is_one_line_and_exit_1(hostile_db: dict[str, Any]) -> None:
    db = str(hostile_db["path"])
    commands = [["runs"], ["sql", "SELECT * FROM texts"], ["export", "1"], ["show", "1"]]
    code = f"""
        import json, os, sys
        from cli.main import cli
        full = os.open("/dev/full", os.O_WRONLY)
        for args in {commands!r}:
            os.dup2(full, 1)
            try:
                cli([*args, "--db", {db!r}], prog_name="evolve")
            except SystemExit as exc:
                print(json.dumps([args, exc.code]), file=sys.stderr, flush=True)
    """
    done = _child(code)
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 2 * len(commands), done.stderr
    for i, args in enumerate(commands):
        assert lines[2 * i] == "Error: cannot write the output: No space left on device"
        assert json.loads(lines[2 * i + 1]) == [args, 1]

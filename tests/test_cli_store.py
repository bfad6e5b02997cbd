"""The store commands (runs, show, lineage, sql, db path, tag/note/rename, export) on a
database filled via LogStore."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from cli import export_cmds, label_cmds, store_cmds
from cli.common import ErrorTranslatingGroup
from cli.tables import format_table
from evolve.store import LogStore

PROMPT = "Mozzarella is white so you can see it at night.\nCheddar is"


def _group() -> click.Group:
    """The store commands under the project's error-translating group.

    Built here rather than imported from cli.main so these tests depend only on the store
    commands, not on every other command module importing cleanly.
    """

    @click.group(cls=ErrorTranslatingGroup)
    def evolve() -> None:
        pass

    for command in [*store_cmds.COMMANDS, *label_cmds.COMMANDS, *export_cmds.COMMANDS]:
        evolve.add_command(command)
    return evolve


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(_group(), list(args), env=env)


def individual(text: str, fitness: float, op: str = "init", parents=(), span=None, pos=0) -> dict:
    return {
        "text": text,
        "token_ids": list(range(len(text.split()))),
        "fitness": fitness,
        "op": op,
        "parents": list(parents),
        "span": span,
        "detail": {},
        "position": pos,
    }


def stats(best: float) -> dict[str, Any]:
    return {
        "best": best,
        "mean": best - 1.0,
        "std": 0.25,
        "worst": best - 2.0,
        "n_evaluated": 2,
        "n_cache_hits": 1,
        "n_unique": 2,
        "best_individual_id": None,
        "seconds": 0.5,
    }


@pytest.fixture
def populated(tmp_path: Path) -> dict[str, Any]:
    """One finished run of three generations with a crossover, and one empty running run."""
    path = tmp_path / "runs" / "evolve.db"
    with LogStore(path) as s:
        run = s.create_run(
            PROMPT, 7, {"population": 2, "mutation": {"top_k": 20}}, "tiny-bert", None, "pll"
        )
        a, b = s.write_generation(
            run,
            0,
            [individual(" yellow", -10.0), individual(" white", -12.0, pos=1)],
            stats(-10.0),
            "rng0",
            {},
        )
        c, d = s.write_generation(
            run,
            1,
            [
                individual(" yellow and white", -9.0, "cx_one_point", (a, b), (1, 3)),
                individual(" yellow", -10.0, "elite", (a,), pos=1),
            ],
            stats(-9.0),
            "rng1",
            {},
        )
        (e,) = s.write_generation(
            run,
            2,
            [individual(" sharp and white", -8.25, "mut_span", (c,), (0, 1))],
            stats(-8.25),
            "rng2",
            {},
        )
        s.finish_run(run)
        other = s.create_run("Brie is", 1, {}, "tiny-bert", None, "pll")
    return {"path": path, "run": run, "other": other, "a": a, "b": b, "c": c, "e": e}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_runs_lists_newest_first(populated: dict[str, Any]) -> None:
    result = invoke("runs", "--db", str(populated["path"]))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "id", "name", "tags", "status", "proposer", "fitness", "best", "gens", "time", "prompt"
    ]  # fmt: skip
    assert lines[2].lstrip().startswith(f"{populated['other']} ") and "running" in lines[2]
    finished = lines[3]
    assert "finished" in finished and "Mozzarella is white" in finished
    assert "-8.250     2  2s" in finished  # best, generations done, time of the generations
    assert "…" in finished  # the long prompt is cut


def test_runs_show_labels_filters_and_json(populated: dict[str, Any]) -> None:
    db = ["--db", str(populated["path"])]
    run, other = str(populated["run"]), str(populated["other"])
    assert invoke("rename", run, "cheddar study", *db).output == f"run {run} name: cheddar study\n"
    assert invoke("tag", run, "cheese", "pilot", *db).output == f"run {run} tags: cheese, pilot\n"
    assert invoke("tag", other, "cheese", *db).exit_code == 0
    removed = invoke("tag", run, "--remove", "pilot", "final", *db)
    assert removed.output == f"run {run} tags: cheese, final\n"
    assert invoke("note", run, "first try\nat 2 gens", *db).exit_code == 0
    assert invoke("note", run, *db).output == f"run {run} note: first try\nat 2 gens\n"
    listed = invoke("runs", *db).output.splitlines()
    assert "cheddar study" in listed[3] and "cheese,final" in listed[3]

    def ids(*args: str) -> list[int]:
        result = invoke("runs", "--json", *args, *db)
        assert result.exit_code == 0, result.output
        return [r["id"] for r in json.loads(result.output)]

    assert ids("--tag", "cheese") == [populated["other"], populated["run"]]
    assert ids("--tag", "cheese", "--tag", "final") == [populated["run"]]
    assert ids("--name", "CHEDDAR") == [populated["run"]]
    assert ids("--status", "finished") == [populated["run"]]
    assert ids("--limit", "1") == [populated["other"]]
    assert ids("--tag", "nope") == []
    assert invoke("runs", "--tag", "nope", *db).output.startswith("No runs match in ")
    (record,) = json.loads(invoke("runs", "--json", "--name", "cheddar", *db).output)
    assert record == {
        "id": populated["run"],
        "name": "cheddar study",
        "tags": ["cheese", "final"],
        "note": "first try\nat 2 gens",
        "status": "finished",
        "created_at": record["created_at"],
        "finished_at": record["finished_at"],
        "prompt": PROMPT,
        "proposer": None,  # this hand-made run's config has no proposer
        "fitness": "pll",
        "fitness_label": "pll",
        "fitness_unit": None,
        "best": -8.25,
        "generations": 2,
        "seconds": 1.5,
        "mlm": "tiny-bert",
        "causal": None,
        "seed": 7,
    }
    shown = json.loads(invoke("show", run, "--json", *db).output)
    assert set(shown) == {"run", "best", "pareto_front", "generations"}
    assert shown["run"]["name"] == "cheddar study" and shown["run"]["config"]["population"] == 2
    assert [b["text"] for b in shown["best"]][:2] == [" sharp and white", " yellow and white"]
    assert shown["generations"][0] == {
        "generation": 0, "best": -10.0, "mean": -11.0, "std": 0.25, "worst": -12.0,
        "evaluated": 2, "cache_hits": 1, "unique": 2, "best_individual_id": populated["a"],
        "seconds": 0.5,
    }  # fmt: skip
    text = invoke("show", run, *db).output
    assert "name:     cheddar study" in text and "tags:     cheese, final" in text
    assert_one_line_error(invoke("tag", "99", "x", *db), "no run 99 in")
    assert_one_line_error(invoke("note", "99", "x", *db), "no run 99 in")


def test_runs_reads_env_database_and_reports_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    LogStore(path).close()
    result = invoke("runs", env={"MLM_EVOLVE_DB": str(path)})
    assert result.exit_code == 0 and result.output.strip() == f"No runs in {path}."


def test_read_commands_do_not_create_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    for args in (["runs"], ["show", "1"], ["lineage", "1"], ["sql", "SELECT 1"]):
        assert_one_line_error(invoke(*args, "--db", str(missing)), "no database at")
    assert not missing.exists()


def test_show_run(populated: dict[str, Any]) -> None:
    result = invoke("show", str(populated["run"]), "--db", str(populated["path"]))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"Run {populated['run']}: finished, created ")
    assert "prompt:   Mozzarella is white so you can see it at night.\\nCheddar is" in out
    assert "mlm tiny-bert, causal -; fitness pll" in out
    assert "mutation.top_k = 20" in out and "population = 2" in out
    best = out.split("Best texts")[1].split("Generations")[0]
    assert best.index(" sharp and white") < best.index(" yellow and white") < best.index("yellow\n")
    assert "white\n" in best and best.count("yellow\n") == 1  # distinct texts only
    gens = out.split("Generations")[1].strip().splitlines()
    assert gens[0].split() == [
        "gen", "best", "mean", "std", "worst", "evaluated", "cached", "unique", "s"
    ]  # fmt: skip
    assert gens[2].split() == [
        "0",
        "-10.000",
        "-11.000",
        "0.250",
        "-12.000",
        "2",
        "1",
        "2",
        "0.500",
    ]
    assert len(gens) == 5


def test_show_limits_best_and_handles_empty_run(populated: dict[str, Any]) -> None:
    db = ["--db", str(populated["path"])]
    out = invoke("show", str(populated["run"]), "-n", "1", *db).output
    best = out.split("Best texts")[1].split("Generations")[0].strip().splitlines()
    assert len(best) == 3 and "sharp and white" in best[2]
    result = invoke("show", str(populated["other"]), *db)
    assert result.exit_code == 0 and "No generation written yet." in result.output


def test_unknown_ids_exit_2_with_one_line(populated: dict[str, Any]) -> None:
    db = ["--db", str(populated["path"])]
    assert_one_line_error(invoke("show", "99", *db), "no run 99 in")
    assert_one_line_error(invoke("lineage", "999", *db), "no individual 999 in")


def test_lineage(populated: dict[str, Any]) -> None:
    p = populated
    result = invoke("lineage", str(p["e"]), "--db", str(p["path"]))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        lines[0]
        == f"Individual {p['e']}: run {p['run']}, generation 2, op mut_span, fitness -8.250"
    )
    assert (
        lines[1] == "Mozzarella is white so you can see it at night.\\nCheddar is sharp and white"
    )
    blocks = result.output.split("\n\n")[1:]
    heads = [block.splitlines()[0].split() for block in blocks]
    assert [(h[1], h[5]) for h in heads] == [
        ("0", str(p["e"])),
        ("1", str(p["c"])),
        ("2", str(p["a"])),
        ("2", str(p["b"])),
    ]
    assert blocks[0].splitlines()[1:] == [
        "  text:  sharp and white",
        "  diff:  [-yellow-] {+sharp+} and white",
    ]
    assert blocks[1].splitlines()[0].split()[6:] == [
        "cx_one_point", "span", "1:3", "fitness", "-9.000", "parents", f"{p['a']},{p['b']}"
    ]  # fmt: skip
    assert blocks[1].splitlines()[2] == (
        f"  diff:  [#{p['a']}: yellow] {{+and+}} [#{p['b']}: white]"
    )
    assert len(blocks[2].splitlines()) == 2  # generation 0: text, no edit
    near = invoke("lineage", str(p["e"]), "--max-depth", "1", "--db", str(p["path"]))
    assert near.output.count("\ndepth ") == 2
    data = json.loads(invoke("lineage", str(p["e"]), "--json", "--db", str(p["path"])).output)
    assert data["individual"]["full_text"].endswith("Cheddar is sharp and white")
    child = data["lineage"][0]
    assert set(child) == {
        "depth", "id", "run_id", "generation", "position", "op", "span", "fitness", "parents",
        "text", "diff", "scores",
    }  # fmt: skip
    assert child["span"] == [0, 1] and child["parents"] == [p["c"]]
    assert child["diff"] == [
        {"kind": "delete", "text": " yellow"},
        {"kind": "insert", "text": " sharp"},
        {"kind": "same", "text": " and white"},
    ]


def test_export(populated: dict[str, Any], tmp_path: Path) -> None:
    group = _group()
    db = ["--db", str(populated["path"])]

    def run(*args: str) -> Result:
        return CliRunner().invoke(group, ["export", str(populated["run"]), *args, *db])

    lines = run().output.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["text"] for r in rows] == [" yellow", " white", " yellow and white", " yellow",
                                         " sharp and white"]  # fmt: skip
    assert (
        rows[2]["parents"] == [populated["a"], populated["b"]] and rows[2]["op"] == "cx_one_point"
    )
    csv_lines = run("--format", "csv").output.splitlines()
    assert csv_lines[0].startswith("id,generation,position,text,fitness,op,span_start,span_end")
    assert f",{populated['a']} {populated['b']}," in csv_lines[3]
    gens = run("--what", "generations", "--format", "csv").output.splitlines()
    assert len(gens) == 4 and gens[0].startswith("generation,best,mean")
    edits = [json.loads(x) for x in run("--what", "edits").output.splitlines()]
    assert [e["child_id"] for e in edits] == [populated["c"], populated["a"] + 3, populated["e"]]
    assert edits[0]["parents"] == [populated["a"], populated["b"]]
    assert run("--what", "baselines").output == ""
    out = tmp_path / "ind.csv"
    result = run("--format", "csv", "--out", str(out))
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 6
    assert_one_line_error(CliRunner().invoke(group, ["export", "99", *db]), "no run 99 in")


def test_sql_table_json_and_params(populated: dict[str, Any]) -> None:
    db = ["--db", str(populated["path"])]
    query = "SELECT generation, op, fitness FROM individuals WHERE run_id = :run ORDER BY id"
    result = invoke("sql", query, "-p", "run", str(populated["run"]), *db)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[2].split() == ["0", "init", "-10.000"]
    as_json = invoke("sql", query, "--param", "run", str(populated["run"]), "--json", *db)
    records = json.loads(as_json.output)
    assert len(records) == 5 and records[-1] == {
        "generation": 2,
        "op": "mut_span",
        "fitness": -8.25,
    }
    gains = json.loads(
        invoke("sql", "SELECT gain FROM edits ORDER BY child_id", "--json", *db).output
    )
    assert [g["gain"] for g in gains] == [1.0, 0.0, 0.75]
    assert_one_line_error(invoke("sql", "SELECT * FROM nowhere", *db), "SQL error: no such table")


@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM individuals", "DROP TABLE runs", "INSERT INTO texts VALUES ('x', 'y')"],
)
def test_sql_refuses_writes_and_leaves_the_file(populated: dict[str, Any], statement: str) -> None:
    path = populated["path"]
    before = digest(path)
    assert_one_line_error(invoke("sql", statement, "--db", str(path)), "read-only")
    assert digest(path) == before
    with LogStore(path) as s:
        assert s.query("SELECT COUNT(*) FROM individuals")[1] == [(5,)]


def test_sql_on_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("plain words\n" * 20)
    before = digest(path)
    assert_one_line_error(invoke("sql", "SELECT 1", "--db", str(path)), "(not SQLite)")
    assert_one_line_error(invoke("runs", "--db", str(path)), "is not an mlm-evolve database")
    assert digest(path) == before


def test_db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLM_EVOLVE_DB", raising=False)
    assert invoke("db", "path").output.strip() == str(tmp_path / "runs" / "evolve.db")
    assert invoke("db", "path", "--db", "x/y.db").output.strip() == str(tmp_path / "x" / "y.db")
    env = {"MLM_EVOLVE_DB": str(tmp_path / "env.db")}
    assert invoke("db", "path", env=env).output.strip() == str(tmp_path / "env.db")
    as_json = json.loads(invoke("db", "path", "--json").output)
    assert as_json == {"path": str(tmp_path / "runs" / "evolve.db"), "exists": False}
    assert not (tmp_path / "runs").exists()


def test_format_table_alignment_and_truncation() -> None:
    text = format_table(
        ["id", "name", "score", "mixed"],
        [[1, "a" * 30, -1.23456, "x"], [120, "two\nlines", None, 2], [3]],
        widths={"name": 10},
    )
    lines = text.splitlines()
    assert lines[0] == " id  name         score  mixed"
    assert lines[1] == "---  ----------  ------  -----"
    assert lines[2] == "  1  aaaaaaaaa…  -1.235  x"
    assert lines[3] == "120  two\\nlines              2"
    assert lines[4] == "  3"


def test_export_has_each_individuals_island(tmp_path: Path) -> None:
    """An island run's export says which island each individual lived on, in JSON lines and
    in CSV; a run without islands leaves the column empty."""
    path = tmp_path / "evolve.db"
    with LogStore(path) as s:
        islands = s.create_run(PROMPT, 1, {"population": 4}, "tiny-bert", None, "pll")
        s.write_generation(
            islands,
            0,
            [
                {**individual(f" text {pos}", -1.0 - pos, pos=pos), "island": pos // 2}
                for pos in range(4)
            ],
            stats(-1.0),
            "rng0",
            {},
        )
        plain = s.create_run(PROMPT, 2, {"population": 1}, "tiny-bert", None, "pll")
        s.write_generation(plain, 0, [individual(" alone", -1.0)], stats(-1.0), "rng0", {})
    db = ["--db", str(path)]
    rows = [json.loads(x) for x in invoke("export", str(islands), *db).output.splitlines()]
    assert [(r["position"], r["island"]) for r in rows] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    lines = list(
        csv.DictReader(io.StringIO(invoke("export", str(islands), "--format", "csv", *db).output))
    )
    assert [(r["position"], r["island"]) for r in lines] == [
        ("0", "0"),
        ("1", "0"),
        ("2", "1"),
        ("3", "1"),
    ]
    (alone,) = [json.loads(x) for x in invoke("export", str(plain), *db).output.splitlines()]
    assert alone["island"] is None
    (alone_csv,) = csv.DictReader(
        io.StringIO(invoke("export", str(plain), "--format", "csv", *db).output)
    )
    assert alone_csv["island"] == ""

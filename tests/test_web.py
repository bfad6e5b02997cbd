"""`evolve serve` (evolve.web): pages, metadata and canned queries through Datasette's own test
client, read-only behaviour while a run writes, bad input, and the real server over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result
from helpers_proc import start_evolve
from web_fixtures import BEST, CROSS, INIT, MUTANT, PROMPT, make_db, write_generation

from cli import serve_cmds
from cli.common import ErrorTranslatingGroup
from evolve.store import LogStore
from evolve.web import app as web_app
from evolve.web.chart import fitness_svg
from evolve.web.highlight import crossover_pieces, mutation_pieces, to_html, words
from evolve.web.metadata import QUERIES, TABLES


@pytest.fixture
def db(tmp_path: Path) -> dict[str, Any]:
    return make_db(tmp_path / "evolve.db")


@pytest.fixture
def ds(db: dict[str, Any]):
    return web_app.build_datasette(db["path"])


def get(ds, path: str) -> httpx.Response:
    return asyncio.run(ds.client.get(path))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- marking edits -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " a b", "Hi,  there!\nNew line\t", "naïve café.  ", "   "])
def test_words_keep_every_character(text: str) -> None:
    assert "".join(words(text)) == text


def test_mutation_marks_inserted_and_replaced_words() -> None:
    html = str(to_html(mutation_pieces(BEST, CROSS)))
    assert (
        html == ' yellow like the <del class="del">sun</del> <mark class="ins">moon</mark> on bread'
    )
    assert '<mark class="ins">very</mark>' in str(to_html(mutation_pieces(MUTANT, INIT[2])))
    assert "<mark" not in str(to_html(mutation_pieces(CROSS, CROSS)))


def test_crossover_colours_each_part_by_its_parent() -> None:
    kinds = [(p.text.strip(), p.kind) for p in crossover_pieces(CROSS, [INIT[0], INIT[1]])]
    assert kinds == [
        ("yellow", "parent0"),
        ("like", "parent0"),
        ("the", "parent0"),
        ("sun", "parent0"),
        ("on", "parent1"),
        ("bread", "parent1"),
    ]
    # A word from neither parent (a seam repair) is marked as written by the edit.
    kinds = dict(
        (p.text.strip(), p.kind)
        for p in crossover_pieces(" yellow like cheese on bread", [INIT[0], INIT[1]])
    )
    assert (
        kinds["cheese"] == "insert" and kinds["like"] == "parent0" and kinds["bread"] == "parent1"
    )


def test_text_is_escaped() -> None:
    html = str(to_html(mutation_pieces(" <b>x</b> & y", " y")))
    assert "<b>" not in html and "&lt;" in html and "&amp;" in html


def test_chart_draws_three_series() -> None:
    stats = [{"generation": g, "best": -3 + g, "mean": -4 + g, "worst": -5 + g} for g in range(4)]
    svg = str(fitness_svg(stats))
    for series in ("best", "mean", "worst"):
        assert f'id="series-{series}"' in svg
    assert svg.count("<circle") == 12 and "generation 3: best 0.0000" in svg
    assert "No generation" in str(fitness_svg([]))


# -- pages ---------------------------------------------------------------------------------------


def test_home_lists_runs_and_polls(ds, db) -> None:
    r = get(ds, "/")
    assert r.status_code == 200
    assert f'href="/-/evolve/runs/{db["run"]}"' in r.text
    assert f'href="/-/evolve/individuals/{db["best"]}"' in r.text  # the best text so far
    assert 'data-poll-url="/-/evolve/runs.json"' in r.text
    assert "/-/static-plugins/evolve.web/evolve.js" in r.text
    runs = get(ds, "/-/evolve/runs.json").json()["runs"]
    assert [x["id"] for x in runs] == [db["other"], db["run"]]
    assert runs[1]["best_text"] == BEST and runs[1]["status"] == "finished"
    assert runs[1]["name"] == "run 1 · tiny-bert" and runs[1]["generations_planned"] == 2
    assert runs[0]["status"] == "running" and runs[0]["best_id"] is None


def test_assets_are_served_locally(ds) -> None:
    for asset in ("evolve.css", "evolve.js"):
        assert get(ds, f"/-/static-plugins/evolve.web/{asset}").status_code == 200
    page = get(ds, "/-/evolve/runs/1").text
    assert "https://" not in page.replace('href="https://datasette.io/"', "")  # no CDN


def test_run_page(ds, db) -> None:
    r = get(ds, f"/-/evolve/runs/{db['run']}")
    assert r.status_code == 200
    html = r.text
    assert 'id="fitness-chart"' in html and 'id="series-best"' in html
    assert html.count('<tr><td class="num">') >= 3  # one row per generation
    assert BEST in html and f'href="/-/evolve/individuals/{db["best"]}"' in html
    # Baselines with their stored scores (mean per token): best -9/6, greedy -12/6.
    assert "causal/smollm2-135m" in html and "-1.5000" in html and "-2.0000" in html
    assert "a cheese from England" in html and "greedy (smollm2-135m)" in html
    assert "population" in html and "<th>generations</th>" not in html.split('id="config"')[0][-50:]
    assert "/evolve/best_texts?run=1" in html
    assert 'http-equiv="refresh"' not in html  # finished: no reload
    running = get(ds, f"/-/evolve/runs/{db['other']}").text
    assert 'http-equiv="refresh"' in running and "No generation written yet." in running


def test_individual_page_tree_marks_edits(ds, db) -> None:
    r = get(ds, f"/-/evolve/individuals/{db['best']}")
    assert r.status_code == 200
    html = r.text
    for key in ("best", "cross", "a", "b"):
        assert f'id="node-{db[key]}"' in html
    assert f'id="node-{db["c"]}"' not in html  # not an ancestor
    assert '<del class="del">sun</del> <mark class="ins">moon</mark>' in html
    assert (
        '<span class="from-p0">yellow</span>' in html
        and '<span class="from-p1">bread</span>' in html
    )
    assert (
        'class="node kind-initial role-p0"' in html and 'class="node kind-initial role-p1"' in html
    )
    assert 'gain <span class="gain pos">+0.5000</span>' in html
    assert PROMPT.split("\n")[0] in html


def test_copies_fold_into_the_text_origin(ds, db) -> None:
    html = get(ds, f"/-/evolve/individuals/{db['kept']}").text  # an elite copy of the cross
    assert f'id="node-{db["cross"]}"' in html and f'id="node-{db["kept"]}"' not in html
    assert f'kept unchanged as <a href="/-/evolve/individuals/{db["kept"]}">' in html
    html = get(ds, f"/-/evolve/individuals/{db['elite']}").text
    assert f'id="node-{db["a"]}"' in html and "kept unchanged as" in html


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("/-/evolve/runs/99", "No run 99 in this database."),
        ("/-/evolve/runs/abc", "No run abc in this database."),
        ("/-/evolve/individuals/999", "No individual 999 in this database."),
        ("/-/evolve/individuals/-1", "No individual -1 in this database."),
    ],
)
def test_unknown_ids_are_404_with_one_line(ds, path: str, line: str) -> None:
    r = get(ds, path)
    assert r.status_code == 404
    assert line in r.text and "Traceback" not in r.text


# -- metadata and canned queries -----------------------------------------------------------------


def test_metadata_describes_every_table_view_and_column(db) -> None:
    conn = sqlite3.connect(db["path"])
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%'"
        )
    ]
    for name in names:
        assert name in TABLES, f"no description of {name}"
        described = TABLES[name][1]
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
        assert set(columns) <= set(described), f"{name}: {set(columns) - set(described)}"
    conn.close()


def test_metadata_is_served(ds) -> None:
    meta = get(ds, "/-/metadata.json").json()
    tables = meta["databases"]["evolve"]["tables"]
    assert tables["individuals"]["columns"]["span_start"].startswith("First token")
    assert set(meta["databases"]["evolve"]["queries"]) == set(QUERIES)


def canned(ds, name: str, **params: Any) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    r = get(ds, f"/evolve/{name}.json?_shape=array&{query}")
    assert r.status_code == 200, r.text
    return r.json()


def test_canned_queries(ds, db) -> None:
    run = db["run"]
    best = canned(ds, "best_texts", run=run)
    assert [b["text"] for b in best[:2]] == [BEST, CROSS]
    assert len({b["text"] for b in best}) == len(best)  # distinct texts
    gens = canned(ds, "fitness_per_generation", run=run)
    assert [g["best"] for g in gens] == [-3.0, -2.5, -2.0]
    ops = {o["op"]: o for o in canned(ds, "operator_gains", run=run)}
    assert ops["cx_one_point"]["improved"] == 1 and ops["mut_span"]["children"] == 2
    assert ops["mut_span"]["improve_rate"] == 1.0 and ops["elite"]["improve_rate"] == 0.0
    assert canned(ds, "operator_gains", run="") == canned(ds, "operator_gains", run=run)
    anc = canned(ds, "ancestry", individual=db["best"])
    assert [(a["id"], a["depth"]) for a in anc][:2] == [(db["best"], 0), (db["cross"], 1)]
    assert {a["id"] for a in anc} == {db[k] for k in ("best", "cross", "a", "b")}
    same = canned(ds, "runs_same_prompt", run=run)
    assert [s["run"] for s in same] == [run, db["other"]]
    versus = canned(ds, "baselines_vs_evolved", run=run)
    sources = {(v["source"], v["mean"]) for v in versus}
    assert ("evolved best", -1.5) in sources and ("greedy", -2.0) in sources
    assert ("sample", None) in sources  # a baseline not scored yet still shows


def test_browser_cannot_write(ds, db) -> None:
    before = digest(db["path"])
    r = get(ds, "/evolve.json?sql=DELETE+FROM+runs")
    assert r.status_code == 400 or not r.json().get("ok", True)
    for path in ("/evolve/best_texts", "/-/evolve/runs/1", "/-/messages"):
        r = asyncio.run(ds.client.post(path, data={"run": "1"}))
        assert r.status_code == 405 and "read-only" in r.text
    assert get(ds, "/evolve/runs.json?_shape=array").json()  # still all there
    assert digest(db["path"]) == before


# -- a run that writes while the pages are read --------------------------------------------------


def test_pages_follow_a_run_that_writes(ds, db) -> None:
    """A writer commits generations while the server reads through its open connections."""
    other = db["other"]
    assert get(ds, "/-/evolve/runs.json").json()["runs"][0]["generations_done"] == 0
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with LogStore(db["path"]) as store:
                for gen in range(4):
                    inds = [
                        {
                            "text": f" text {gen} {i}",
                            "token_ids": [gen, i],
                            "fitness": -5.0 + gen,
                            "op": "init" if gen == 0 else "mut_span",
                            "parents": [],
                            "detail": {},
                        }
                        for i in range(3)
                    ]
                    write_generation(store, other, gen, inds)
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    while thread.is_alive():
        r = get(ds, "/-/evolve/runs.json")
        assert r.status_code == 200
        seen.append(r.json()["runs"][0]["generations_done"])
        assert get(ds, f"/-/evolve/runs/{other}").status_code == 200
    thread.join()
    assert not errors, errors
    assert seen == sorted(seen)
    final = get(ds, f"/-/evolve/runs/{other}").text
    assert "text 3 0" in final and final.count('id="series-best"') == 1
    assert get(ds, "/-/evolve/runs.json").json()["runs"][0]["generations_done"] == 3


# -- the command: bad input, --open, the real server ---------------------------------------------


def invoke(*args: str) -> Result:
    @click.group(cls=ErrorTranslatingGroup)
    def evolve() -> None:
        pass

    for command in serve_cmds.COMMANDS:
        evolve.add_command(command)
    return CliRunner().invoke(evolve, list(args))


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_serve_refuses_what_is_not_ours(tmp_path: Path) -> None:
    assert_one_line_error(invoke("serve", "--db", str(tmp_path / "none.db")), "no database at")
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, just words\n" * 10)
    assert_one_line_error(
        invoke("serve", "--db", str(text)), "is not an mlm-evolve database (not SQLite)"
    )
    foreign = tmp_path / "shop.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    before = digest(foreign)
    assert_one_line_error(
        invoke("serve", "--db", str(foreign)), "is not an mlm-evolve database (no runs table)"
    )
    assert digest(foreign) == before  # looked at, not migrated


def test_serve_refuses_a_newer_schema(db) -> None:
    conn = sqlite3.connect(db["path"])
    with conn:
        conn.execute(
            "INSERT INTO _migrations (version, name, applied_at) VALUES (999, '_m999_future', '')"
        )
    conn.close()  # the last connection to close folds the WAL into the file digested below
    before = digest(db["path"])
    assert_one_line_error(invoke("serve", "--db", str(db["path"])), "newer than this mlm-evolve")
    assert digest(db["path"]) == before


def test_serve_refuses_a_port_in_use(db) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = str(taken.getsockname()[1])
        result = invoke("serve", "--db", str(db["path"]), "--port", port)
        assert_one_line_error(result, f"port {port} on 127.0.0.1 is in use")
    finally:
        taken.close()


def test_open_starts_a_browser_on_the_home_page(db, monkeypatch) -> None:
    opened: list[str] = []
    served: list[Any] = []
    monkeypatch.setattr(web_app.webbrowser, "open", opened.append)
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets))
    result = invoke("serve", "--db", str(db["path"]), "--port", "0", "--open")
    assert result.exit_code == 0, result.output
    assert (
        len(opened) == 1 and opened[0].startswith("http://127.0.0.1:") and opened[0].endswith("/")
    )
    assert f"at {opened[0]}" in result.output and served and served[0][0].fileno() >= 0
    for sock in served[0]:
        sock.close()


def _wait_for_url(proc) -> str:
    """The URL the server prints once it listens (its one line on stderr)."""
    line = proc.stderr.readline()
    assert " at http://" in line, line + proc.stderr.read()
    return line.split(" at ", 1)[1].split()[0]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_real_server_over_http(db) -> None:
    proc = start_evolve(["serve", "--db", str(db["path"]), "--port", "0"])
    try:
        url = _wait_for_url(proc)
        status, body = fetch(url)
        assert status == 200 and BEST in body
        status, body = fetch(f"{url}-/evolve/individuals/{db['best']}")
        assert status == 200 and '<mark class="ins">moon</mark>' in body
        status, body = fetch(f"{url}-/evolve/runs/12345")
        assert status == 404 and "No run 12345" in body
        # Another connection writes a generation; the running server shows it next request.
        with LogStore(db["path"]) as store:
            write_generation(
                store,
                db["other"],
                0,
                [
                    {
                        "text": " fresh text",
                        "token_ids": [1],
                        "fitness": -1.0,
                        "op": "init",
                        "parents": [],
                        "detail": {},
                    }
                ],
            )
        runs = json.loads(fetch(f"{url}-/evolve/runs.json")[1])["runs"]
        assert runs[0]["best_text"] == " fresh text"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15, 143), proc.stderr.read()  # 143: SIGTERM, handled

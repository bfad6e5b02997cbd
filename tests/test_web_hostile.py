"""`evolve serve` against a hostile database and hostile requests (issue 25, items 1, 2, 4,
8, 11): markup stored in any column, Host headers of other sites, paths that are no page,
ids past SQLite's range, and SQL that asks for gigabytes."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from helpers_proc import start_evolve
from web_fixtures import make_db

from evolve.store import LogStore
from evolve.web import app as web_app
from evolve.web.guard import host_allowed, inline_script_hashes

MARK = "<img src=x onerror=alert(1)>"
PAYLOAD = f"{MARK}\"'><script>alert(2)</script><svg onload=alert(3)>"
LIVE = ("<img src=x", "<script>alert", "<svg onload")  # markup that must never come back
KEYS = {"id", "run_id", "child_id", "parent_id", "text_id", "prefix_id", "prompt_id",
        "individual_id", "best_individual_id", "experiment_id", "version"}  # fmt: skip


def craft(path: Path, keys_too: bool) -> None:
    """Put PAYLOAD (with the row's rowid, so UNIQUE columns stay unique) in every column
    of every table that SQLite lets hold text; the key columns too when `keys_too`."""
    conn = sqlite3.connect(path)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    for table in tables:
        for _, column, *_ in conn.execute(f"PRAGMA table_info({table})").fetchall():
            if column in KEYS and not keys_too:
                continue
            try:
                with conn:
                    conn.execute(f"UPDATE {table} SET {column} = ? || rowid", (PAYLOAD,))
            except sqlite3.DatabaseError:  # an INTEGER PRIMARY KEY holds integers only
                pass
    conn.close()


class Asgi:
    """Requests straight to the server's ASGI app, with raw paths and Host headers as
    given (an HTTP client would normalise `/../` away)."""

    def __init__(self, path: Path, allowed: tuple[str, ...] = ()) -> None:
        self.ds = web_app.build_datasette(path, allowed_hosts=allowed)
        self.app = self.ds.app()

    def get(self, raw: str, host: str | None = "localhost") -> tuple[int, dict[str, str], str]:
        path, _, query = raw.partition("?")
        headers = [] if host is None else [(b"host", host.encode("latin-1"))]
        scope = {
            "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode("latin-1"), "root_path": "",
            "query_string": query.encode("latin-1"), "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8001),
        }  # fmt: skip
        out: dict[str, Any] = {"body": b""}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
                out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            else:
                out["body"] += message.get("body", b"")

        asyncio.run(self.app(scope, receive, send))
        return out["status"], out["headers"], out["body"].decode("utf-8", "replace")


def assert_no_live_markup(body: str, where: str) -> None:
    for live in LIVE:
        assert live not in body, f"{where}: {live!r} came back unescaped"


# -- item 1: stored markup ---------------------------------------------------------------------


@pytest.mark.parametrize("keys_too", [False, True], ids=["values", "keys-too"])
def test_markup_in_every_column_is_escaped_on_every_page(tmp_path: Path, keys_too: bool) -> None:
    path = tmp_path / "evolve.db"
    ids = make_db(path)
    craft(path, keys_too)
    server = Asgi(path)
    tables = [
        r[0]
        for r in sqlite3.connect(path).execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%'"
        )
    ]
    pages = ["/", "/-/evolve/runs/1", "/-/evolve/runs/2", "/evolve"]
    pages += [f"/-/evolve/individuals/{ids[k]}" for k in ("a", "cross", "best", "kept", "mutant")]
    pages += [f"/evolve/{t}" for t in tables]
    pages += [f"/evolve/{q}?run=1&individual={ids['best']}" for q in ("best_texts", "ancestry")]
    for page in pages:
        status, headers, body = server.get(page)
        assert status == 200 if not keys_too and "/-/evolve/" in page else status in (200, 404)
        assert_no_live_markup(body, page)
        assert "Traceback" not in body
    status, headers, body = server.get("/-/evolve/runs.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    runs = json.loads(body)["runs"]
    if not keys_too:  # the data comes back exact in JSON, which is not HTML
        assert runs[0]["prompt"].startswith(PAYLOAD) and runs[0]["name"].startswith(PAYLOAD)
    # Shown as text: the escaped form of the markup is on the run page.
    status, _, body = server.get("/-/evolve/runs/1")
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_a_crafted_span_no_longer_comes_back_live(tmp_path: Path) -> None:
    """The reproduction of the issue: span_start of one individual set to markup."""
    path = tmp_path / "evolve.db"
    ids = make_db(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE individuals SET span_start = ?, generation = ?, fitness = ? "
                     "WHERE id = ?", (MARK, MARK, MARK, ids["best"]))  # fmt: skip
    status, _, body = Asgi(path).get(f"/-/evolve/individuals/{ids['best']}")
    assert status == 200 and MARK not in body and "tokens [&lt;img src=x" in body


# -- item 11: a run's own name, tags and note --------------------------------------------------


def test_pages_show_a_runs_name_tags_and_note(tmp_path: Path) -> None:
    path = tmp_path / "evolve.db"
    make_db(path)
    with LogStore(path) as store:
        store.set_labels(1, name="baseline <b>A</b>", tags=["sweep", "<i>t</i>"], note="why\nso")
    server = Asgi(path)
    runs = json.loads(server.get("/-/evolve/runs.json")[2])["runs"]
    named = next(r for r in runs if r["id"] == 1)
    unnamed = next(r for r in runs if r["id"] == 2)
    assert named["name"] == "baseline <b>A</b>" and named["tags"] == ["sweep", "<i>t</i>"]
    assert named["note"] == "why\nso"
    assert unnamed["name"] == "run 2 · tiny-bert" and unnamed["tags"] == []
    home = server.get("/")[2]
    assert "baseline &lt;b&gt;A&lt;/b&gt;" in home and "sweep, &lt;i&gt;t&lt;/i&gt;" in home
    page = server.get("/-/evolve/runs/1")[2]
    assert "baseline &lt;b&gt;A&lt;/b&gt;" in page and "sweep, &lt;i&gt;t&lt;/i&gt;" in page
    assert '<dd class="note-text">why\nso</dd>' in page and "<b>A</b>" not in page


# -- items 4 and 8: Host, headers, paths, ids -------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed", "answered"),
    [
        ("localhost:8001", (), True),
        ("LOCALHOST.", (), True),
        ("app.localhost", (), True),
        ("127.0.0.1:8001", (), True),
        ("[::1]:8001", (), True),
        ("192.168.1.20:8001", (), True),  # an address: no rebinding page sends one
        ("evil.example", (), False),
        ("evil.example:8001", (), False),
        ("localhost.evil.example", (), False),
        ("box.lan:8001", ("box.lan",), True),
        ("other.lan", ("box.lan",), False),
        ("anything", ("*",), True),
    ],
)
def test_host_allow_list(host: str, allowed: tuple[str, ...], answered: bool) -> None:
    assert host_allowed(host, allowed) is answered


def test_other_hosts_are_refused_and_every_response_has_security_headers(tmp_path: Path) -> None:
    path = tmp_path / "evolve.db"
    make_db(path)
    server = Asgi(path, allowed=("box.lan",))
    status, headers, body = server.get("/evolve.json?sql=select+1", host="rebind.example")
    assert status == 400 and "bad Host header 'rebind.example'" in body
    assert server.get("/", host="box.lan:8001")[0] == 200
    for page in ("/", "/-/evolve/runs/1", "/-/evolve/runs.json", "/evolve/runs", "/nope/x/y/z",
                 "/-/static-plugins/evolve.web/evolve.js"):  # fmt: skip
        status, headers, _ = server.get(page)
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, page
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert headers["x-content-type-options"] == "nosniff", page
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"


def test_the_policy_allows_datasettes_own_inline_scripts() -> None:
    hashes = inline_script_hashes()
    assert len(hashes) >= 4  # close-menus, codemirror setup, allow-facet true and false
    assert all(re.fullmatch(r"'sha256-[A-Za-z0-9+/]+=*'", h) for h in hashes)


@pytest.mark.parametrize(
    "raw",
    [
        "/-/evolve/runs/9223372036854775808",
        "/-/evolve/individuals/9223372036854775808",
        "/-/evolve/individuals/-9223372036854775809",
        "/-/evolve/runs/" + "9" * 400,
        "/../../etc/passwd",
        "/-/evolve/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/-/static/../../../../etc/passwd",
        "/a/b/c/d/e/f/g",
        "//x",
        "/.",
    ],
)
def test_no_such_page_is_404_never_500(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "evolve.db"
    make_db(path)
    status, _, body = Asgi(path).get(raw)
    assert status == 404, (raw, body[-500:])
    assert "root:" not in body and "Traceback" not in body


# -- item 2: bounded memory in the server ----------------------------------------------------------

WIDE = ",".join(["randomblob(15000000)"] * 30)
MANY = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 100)"


def _vm_hwm_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_sql_through_the_server_is_bounded(tmp_path: Path) -> None:
    """Before the limits `select randomblob(1000000000)` took 23.8 s and 7.8 GB here."""
    path = tmp_path / "evolve.db"
    make_db(path)
    proc = start_evolve(["serve", "--db", str(path), "--port", "0"])
    try:
        line = proc.stderr.readline()
        assert " at http://" in line, line
        port = int(line.split(" at http://")[1].split("/")[0].rsplit(":", 1)[1])
        cases = {
            "select randomblob(1000000000)": "larger than 16 MiB",
            f"select {WIDE}": "needs more than 256 MiB of memory",
            f"{MANY} select x, randomblob(10000000) from c": "more than 64 MiB",
            "select 1 as ok": None,
        }
        for sql, fragment in cases.items():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            started = time.monotonic()
            conn.request("GET", "/evolve.json?" + urllib.parse.urlencode({"sql": sql}))
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert time.monotonic() - started < 15, sql
            if fragment is None:
                assert resp.status == 200 and body["rows"] == [[1]], body
            else:
                assert resp.status == 400 and fragment in body["error"], (sql, body)
        # Libraries ~300 MB; the limits keep one query's copies within another GB.
        assert _vm_hwm_mb(proc.pid) < 1300
    finally:
        proc.terminate()
        proc.wait(timeout=30)

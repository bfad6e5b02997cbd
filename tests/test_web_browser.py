"""The pages of `evolve serve` in a real headless Chromium, on a small real run.

A tiny random BERT evolves for two generations; the server runs in this process on a free
port; Chromium (Debian package `chromium`, driven by its command line) loads a run page and
an individual page, its DOM after scripts ran is checked for the chart and the marked
edits, and screenshots are saved under the test's tmp dir. Skipped where no Chromium is
installed; `.ci/run` installs it so CI always runs this.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from evolve.api import start_run
from evolve.ga.config import MutationConfig, RunConfig
from evolve.store import LogStore
from evolve.web import app as web_app

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"
WINDOW = "1200,1400"


def make_real_run(path: Path, mlm: str) -> int:
    """A two-generation run of the tiny BERT, crossover on every pair; returns its id."""
    config = RunConfig(
        prompt=PROMPT,
        population=4,
        generations=2,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=mlm,
        seed=7,
        cxpb=1.0,  # every pair crosses: the tree must show crossover colours
        mutation=MutationConfig(max_span=2, top_k=20),
    )
    with LogStore(path) as store:
        return start_run(config, store, lambda report: None).run_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Iterator[dict]:
    import uvicorn

    path = tmp_path_factory.mktemp("web") / "evolve.db"
    run_id = make_real_run(path, str(tiny_bert_dir))
    web_app.check_database(path)
    sock = web_app.listen("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(web_app.build_datasette(path).app(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "run": run_id, "path": path}
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def chromium(*args: str) -> str:
    """Run headless Chromium once; its stdout (the DOM for --dump-dom)."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={WINDOW}", "--virtual-time-budget=3000", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pick(path: Path, sql: str) -> int:
    with LogStore(path, readonly=True) as store:
        _, rows = store.query(sql)
    assert rows, sql
    return int(rows[0][0])


def test_run_page_in_chromium(served: dict, tmp_path: Path) -> None:
    url = f"{served['url']}/-/evolve/runs/{served['run']}"
    dom = chromium("--dump-dom", url)
    assert 'id="fitness-chart"' in dom and 'id="series-best"' in dom and 'id="series-mean"' in dom
    assert dom.count("<circle") == 3 * 3  # three series, three generations (0-2)
    shot = tmp_path / "run.png"
    chromium(f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000  # a real picture, not an empty page


def test_individual_page_in_chromium(served: dict, tmp_path: Path) -> None:
    # The fittest individual of the last generation made by a crossover: its own text is
    # coloured by parent, and some mutation in its ancestry has marked words.
    ind = pick(
        served["path"],
        "SELECT id FROM individuals WHERE op LIKE 'cx_%' ORDER BY generation DESC, fitness DESC",
    )
    url = f"{served['url']}/-/evolve/individuals/{ind}"
    dom = chromium("--dump-dom", url)
    assert f'id="node-{ind}"' in dom and 'id="ancestry"' in dom
    assert 'class="from-p0"' in dom and 'class="from-p1"' in dom
    assert '<mark class="ins">' in dom
    shot = tmp_path / "individual.png"
    chromium(f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000


def test_pages_run_under_the_content_security_policy(served: dict) -> None:
    """Every response carries a CSP without 'unsafe-inline' scripts (evolve.web.guard); the
    pages, Datasette's SQL page and a table page work under it: no violation in Chromium's
    console, and the SQL editor's inline setup script (allowed by its hash) ran."""
    db = served["path"].stem
    pages = {
        f"/-/evolve/runs/{served['run']}": 'id="fitness-chart"',
        "/": 'id="runs"',
        f"/{db}?sql=select+1": 'class="CodeMirror',  # made by Datasette's inline script
        f"/{db}/individuals": "DATASETTE_ALLOW_FACET",
    }
    for page, marker in pages.items():
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             "--virtual-time-budget=3000", "--dump-dom", served["url"] + page],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert marker in done.stdout, page
        assert "Content Security Policy" not in done.stderr, (page, done.stderr[-2000:])

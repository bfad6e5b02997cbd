"""Run the real `evolve` CLI in child processes, and watch their database from outside.

The reliability tests kill, interrupt and race real processes, which `CliRunner` cannot
do. Children run `cli.main.cli` exactly as the console script does, offline, with one
torch thread each: two children on a 2-core machine then do not fight over cores, and a
reference run and a killed-then-resumed run do their float arithmetic the same way.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"
# What the console script does (pyproject.toml: evolve = "cli.process:main").
_ENTRY = "from cli.process import main; main()"


def child_env() -> dict[str, str]:
    """The environment of an `evolve` child: offline, one thread, this checkout first."""
    env = dict(os.environ)
    env.pop("MLM_EVOLVE_DB", None)  # every test names its --db
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    return env


def _default_sigint() -> None:
    # A child of a shell script started in the background inherits SIGINT ignored, and
    # Python keeps it ignored; Ctrl-C tests need the normal KeyboardInterrupt behaviour.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_evolve(args: Sequence[str]) -> subprocess.Popen[str]:
    """Start `evolve ARGS` in a child process with captured text output."""
    return subprocess.Popen(
        [sys.executable, "-c", _ENTRY, *args],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def run_evolve(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `evolve ARGS` to the end in a child process."""
    proc = start_evolve(args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_args(db: Path, mlm: Path, generations: int, seed: int = 7) -> list[str]:
    """`evolve run` options for a small, quick run on a tiny model folder."""
    return [
        "run",
        "--prompt",
        PROMPT,
        "--mlm",
        str(mlm),
        "--db",
        str(db),
        "-p",
        "6",
        "-g",
        str(generations),
        "--init-len",
        "6",
        "--min-len",
        "3",
        "--max-len",
        "10",
        "--max-span",
        "2",
        "--top-k",
        "20",
        "--seed",
        str(seed),
        "-q",
    ]


def generations_written(db: Path, run_id: int | None = None) -> int:
    """Generation rows in the database (of one run, or all), read over a read-only connection;
    0 while the file or its tables do not exist yet."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return 0
    try:
        if run_id is None:
            row = conn.execute("SELECT COUNT(*) FROM generations").fetchone()
        else:
            row = conn.execute(
                "SELECT COUNT(*) FROM generations WHERE run_id = ?", (run_id,)
            ).fetchone()
        return int(row[0])
    except sqlite3.Error:  # not created or not migrated yet
        return 0
    finally:
        conn.close()


def wait_for_generations(
    db: Path,
    at_least: int,
    procs: Sequence[subprocess.Popen[str]],
    run_id: int | None = None,
    timeout: float = 90,
) -> int:
    """Poll the database read-only until it holds `at_least` generation rows; return the count.

    Fails early with the children's output if one of them exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = generations_written(db, run_id)
        if n >= at_least:
            return n
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"evolve exited {proc.returncode} early:\n{out}\n{err}")
        time.sleep(0.02)
    raise AssertionError(f"no {at_least} generations in {db} after {timeout} s")

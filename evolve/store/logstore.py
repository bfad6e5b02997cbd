"""LogStore: the one place that reads and writes the SQLite record of runs.

Every individual of every generation is kept with its parents, the operator and token span
that made it, and its scores, so the history of a run can be queried with plain SQL (the
`individual_texts`, `lineage` and `edits` views do the common joins). Texts are stored once
in `texts`, keyed by a hash, and scored texts in `scores`, so any text can be rescored with
another model later without recomputing the old scores.

The database is opened with sqlite-utils in WAL mode with a 30 s busy timeout, so several
processes can log runs into one file. The schema is an ordered list of migrations, each
applied once in its own transaction and recorded in `_migrations`; a schema change is a new
migration appended to `MIGRATIONS`, never an edit of a released one. A database written by a
newer version (migrations this code does not know) is refused untouched.

One generation is written in one transaction: a crash or Ctrl-C leaves either the whole
generation or nothing of it, which is what makes resuming exact.

A run records the process that runs it (pid, host and a token that tells a reused pid apart),
so a run left 'running' by a process that died (kill -9, power loss) can be told from a live
one: `run_process_state` says which, and `set_status(run, "running")` (what resuming calls)
refuses to take over a run whose process is still alive.

A LogStore holds one connection; use one instance per thread or process.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from scoring.errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000  # a long generation commit by another process is worth waiting for
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
_CHUNK = 500  # bound parameters per IN (...) list, well under SQLite's limit


class StoreError(UserError):
    """The database cannot be used as asked: not SQLite, newer schema, unknown id, read-only."""


# -- schema ------------------------------------------------------------------------------------

_SCHEMA_V1 = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        prompt TEXT NOT NULL,
        seed INTEGER,
        mlm TEXT,
        causal TEXT,
        fitness TEXT,
        config TEXT NOT NULL,
        generations_done INTEGER NOT NULL DEFAULT 0,
        best_individual_id INTEGER,
        versions TEXT,
        error TEXT
    )
    """,
    "CREATE TABLE texts (id TEXT PRIMARY KEY, text TEXT NOT NULL)",
    """
    CREATE TABLE individuals (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        generation INTEGER NOT NULL,
        position INTEGER NOT NULL,
        text_id TEXT NOT NULL REFERENCES texts(id),
        token_ids TEXT NOT NULL,
        n_tokens INTEGER NOT NULL,
        fitness REAL,
        scores TEXT,
        op TEXT NOT NULL,
        span_start INTEGER,
        span_end INTEGER,
        detail TEXT,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX idx_individuals_run_generation ON individuals(run_id, generation)",
    "CREATE INDEX idx_individuals_run_fitness ON individuals(run_id, fitness)",
    "CREATE INDEX idx_individuals_text ON individuals(text_id)",
    """
    CREATE TABLE parents (
        child_id INTEGER NOT NULL REFERENCES individuals(id),
        parent_id INTEGER NOT NULL REFERENCES individuals(id),
        position INTEGER NOT NULL,
        PRIMARY KEY (child_id, position)
    )
    """,
    # Descendant queries and foreign-key checks on delete look parents up by parent_id.
    "CREATE INDEX idx_parents_parent ON parents(parent_id)",
    """
    CREATE TABLE generations (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        generation INTEGER NOT NULL,
        best REAL,
        mean REAL,
        std REAL,
        worst REAL,
        n_evaluated INTEGER,
        n_cache_hits INTEGER,
        n_unique INTEGER,
        best_individual_id INTEGER,
        seconds REAL,
        rng_state TEXT,
        state TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (run_id, generation)
    )
    """,
    """
    CREATE TABLE scores (
        text_id TEXT NOT NULL REFERENCES texts(id),
        prefix_id TEXT NOT NULL,
        scorer TEXT NOT NULL,
        total REAL,
        n_tokens INTEGER,
        per_token TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (text_id, prefix_id, scorer)
    )
    """,
    """
    CREATE TABLE baselines (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        prompt_id TEXT NOT NULL REFERENCES texts(id),
        method TEXT NOT NULL,
        model TEXT,
        params TEXT,
        seed INTEGER,
        text_id TEXT NOT NULL REFERENCES texts(id),
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX idx_baselines_run ON baselines(run_id)",
    """
    CREATE TABLE experiments (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL,
        config TEXT,
        summary TEXT
    )
    """,
    """
    CREATE TABLE experiment_rows (
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        idx INTEGER NOT NULL,
        data TEXT,
        PRIMARY KEY (experiment_id, idx)
    )
    """,
    """
    CREATE VIEW individual_texts AS
    SELECT i.run_id, i.generation, i.position, i.id, i.fitness, i.op,
           i.span_start, i.span_end, t.text, r.prompt || t.text AS full_text
    FROM individuals i
    JOIN texts t ON t.id = i.text_id
    JOIN runs r ON r.id = i.run_id
    """,
    # UNION (not UNION ALL) drops repeated (individual, ancestor, depth) rows, so ancestors
    # reached along many crossover paths do not multiply the recursion.
    """
    CREATE VIEW lineage AS
    WITH RECURSIVE anc(individual_id, ancestor_id, depth) AS (
        SELECT id, id, 0 FROM individuals
        UNION
        SELECT anc.individual_id, p.parent_id, anc.depth + 1
        FROM anc JOIN parents p ON p.child_id = anc.ancestor_id
    )
    SELECT individual_id, ancestor_id, depth FROM anc
    """,
    """
    CREATE VIEW edits AS
    SELECT c.id AS child_id, c.run_id, c.generation, c.op, c.span_start, c.span_end,
           c.fitness AS child_fitness, MAX(p.fitness) AS best_parent_fitness,
           c.fitness - MAX(p.fitness) AS gain, COUNT(*) AS n_parents
    FROM individuals c
    JOIN parents pr ON pr.child_id = c.id
    JOIN individuals p ON p.id = pr.parent_id
    GROUP BY c.id
    """,
)


def _m001_initial(db: Database) -> None:
    for statement in _SCHEMA_V1:
        db.conn.execute(statement)


def _m002_pareto(db: Database) -> None:
    """Multi-objective runs (``--fitness nsga2``): each individual's objective values and its
    non-dominated rank within its generation (0 = on the Pareto front); NULL otherwise."""
    db.conn.execute("ALTER TABLE individuals ADD COLUMN objectives TEXT")
    db.conn.execute("ALTER TABLE individuals ADD COLUMN pareto_rank INTEGER")


def _m003_run_process(db: Database) -> None:
    """The process running a run: pid, host name and `process_token` (None on runs from
    before this migration), so a 'running' run whose process died can be recognised."""
    for column in ("pid INTEGER", "host TEXT", "process TEXT"):
        db.conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")


# Append only: a released migration is never edited (docs/CONTRIBUTING.md, rule 3).
MIGRATIONS: list[Callable[[Database], None]] = [_m001_initial, _m002_pareto, _m003_run_process]
SCHEMA_VERSION = len(MIGRATIONS)


# -- helpers -----------------------------------------------------------------------------------


def text_id(text: str) -> str:
    """The key of a text in `texts`: the first 32 hex digits of sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _loads(value: str | None, default: Any = None) -> Any:
    return json.loads(value) if value is not None else default


def _versions() -> dict[str, str | None]:
    """Library versions stored with a run; read from metadata so torch is not imported."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("mlm-evolve", "torch", "transformers", "deap", "sqlite-utils"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["sqlite"] = sqlite3.sqlite_version
    return found


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite gets a chance to write to it."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not an mlm-evolve database")
    if not path.exists() or path.stat().st_size == 0:
        return  # SQLite turns an empty file into a new database
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StoreError(f"{path} is not an mlm-evolve database (not SQLite)")


# -- which process runs a run -------------------------------------------------------------------

ProcessState = Literal["alive", "dead", "unknown"]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of a local process, from /proc."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = data[data.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _machine_and_namespace() -> str | None:
    """'boot id/pid namespace' of this process: pids are only comparable within both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{namespace}"


def process_token(pid: int | None = None) -> str | None:
    """'boot id/pid namespace/start time' of a local process (default: this one).

    Unlike the pid alone it names one process instance: a pid reused after a crash or a
    reboot gets a different token. None where /proc cannot tell (not Linux).
    """
    where, stat = _machine_and_namespace(), _proc_stat(os.getpid() if pid is None else pid)
    return f"{where}/{stat[1]}" if where and stat else None


def process_state(pid: int | None, host: str | None, token: str | None) -> ProcessState:
    """Whether the process recorded as (pid, host, token) is still running.

    'unknown' where this machine cannot tell: no pid recorded (a run from before migration 3),
    another host name (another machine, or another container sharing the file), or another
    pid namespace.
    """
    if pid is None or host != socket.gethostname() or os.name != "posix":
        return "unknown"
    here = _machine_and_namespace()
    if token and here and token.count("/") == 2:
        boot, namespace, started = token.split("/")
        here_boot, here_namespace = here.split("/")
        if boot != here_boot:
            return "dead"  # this machine has rebooted since: every process of then is gone
        if namespace != here_namespace:
            return "unknown"
        stat = _proc_stat(pid)
        alive = stat is not None and stat[1] == started and stat[0] not in ("Z", "X")
        return "alive" if alive else "dead"
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"  # exists, owned by another user
    except OSError:
        return "unknown"
    return "alive"


def run_process_state(run: Mapping[str, Any]) -> ProcessState | None:
    """For a run row whose status is 'running': whether its process is alive; else None."""
    if run.get("status") != "running":
        return None
    return process_state(run.get("pid"), run.get("host"), run.get("process"))


def _this_process() -> tuple[int, str, str | None]:
    """(pid, host, token) of the calling process, as a run records it."""
    return os.getpid(), socket.gethostname(), process_token()


_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
# Introspection pragmas that take an argument but only read (`PRAGMA table_info(runs)`).
_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "function_list",
    "pragma_list",
}


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A `mode=ro` connection: SQLite itself refuses writes to the file."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}") from exc
    conn.isolation_level = None
    return conn


# -- the store ---------------------------------------------------------------------------------


class LogStore:
    """The SQLite record of runs, individuals, scores, baselines and experiments."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        """Open (creating it and its folder if needed) and migrate the database at `path`.

        `readonly=True` opens the existing file with SQLite's `mode=ro`: no migration, every
        write refused. That is how `evolve sql` reads a database it must not change.
        """
        self._path = Path(path)
        self.readonly = readonly
        self._query_conn: sqlite3.Connection | None = None
        _check_sqlite_file(self._path)
        if readonly:
            if not self._path.exists():
                raise StoreError(f"no database at {self._path}")
            conn = _open_read_only(self._path)
        else:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {self._path.parent}: {exc.strerror}") from exc
            # isolation_level=None: no implicit transactions; every write below opens its own.
            try:
                conn = sqlite3.connect(
                    str(self._path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
                )
            except sqlite3.OperationalError as exc:  # e.g. a folder where files cannot be made
                raise StoreError(f"cannot open {self._path}: {exc}") from exc
        self.db = Database(conn, recursive_triggers=False, execute_plugins=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                self._check_schema_version()
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA foreign_keys = ON")
                self._migrate()
        except sqlite3.OperationalError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_CANTOPEN":
                raise StoreError(f"cannot open {self._path}: {exc}") from exc
            raise
        except BaseException:
            conn.close()
            raise

    @property
    def path(self) -> Path:
        """The database file, as it was given."""
        return self._path

    def close(self) -> None:
        """Close the connections; the store is unusable afterwards."""
        if self._query_conn is not None:
            self._query_conn.close()
            self._query_conn = None
        self.db.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- migrations ----------------------------------------------------------------------------

    def _applied_migrations(self) -> dict[str, int]:
        """{name: version} of the recorded migrations; read-only, works before any exist."""
        conn = self.db.conn
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
        ).fetchone()
        if not exists:
            return {}
        try:
            rows = conn.execute("SELECT name, version FROM _migrations").fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"{self._path} has a _migrations table that is not mlm-evolve's ({exc})"
            ) from exc
        return {name: version for name, version in rows}

    def _check_schema_version(self) -> None:
        try:
            applied = self._applied_migrations()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self._path} is not a usable mlm-evolve database: {exc}") from exc
        known = {fn.__name__ for fn in MIGRATIONS}
        unknown = set(applied) - known
        if unknown:
            newest = max(applied.values())
            raise StoreError(
                f"{self._path} has schema version {newest}, newer than this mlm-evolve "
                f"knows ({SCHEMA_VERSION}); upgrade mlm-evolve to use it"
            )

    def _migrate(self) -> None:
        applied = self._applied_migrations()
        if all(fn.__name__ in applied for fn in MIGRATIONS):
            return
        conn = self.db.conn
        with self._transaction():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
            )
        for version, fn in enumerate(MIGRATIONS, start=1):
            # Re-checked inside the write lock: another process may have migrated meanwhile.
            with self._transaction():
                done = conn.execute(
                    "SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)
                ).fetchone()
                if done:
                    continue
                fn(self.db)
                conn.execute(
                    "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, fn.__name__, _now()),
                )

    def schema_version(self) -> int:
        """The highest migration recorded in the database (0 for none)."""
        return max(self._applied_migrations().values(), default=0)

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so a busy
        database is waited for (busy_timeout) instead of failing on a lock upgrade."""
        if self.readonly:
            raise StoreError(f"read-only: {self._path} was opened read-only")
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict]:
        cursor = self.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _require_run(self, run_id: int) -> None:
        if not self.db.conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
            raise StoreError(f"no run {run_id} in {self._path}")

    @staticmethod
    def _put_texts(conn: sqlite3.Connection, texts: Sequence[str]) -> list[str]:
        ids = [text_id(t) for t in texts]
        conn.executemany(
            "INSERT OR IGNORE INTO texts (id, text) VALUES (?, ?)",
            list(zip(ids, texts, strict=True)),
        )
        return ids

    def _parents_of(self, ids: Sequence[int]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {i: [] for i in ids}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for child, parent in self.db.conn.execute(
                f"SELECT child_id, parent_id FROM parents WHERE child_id IN ({marks}) "
                "ORDER BY child_id, position",
                chunk,
            ):
                found[child].append(parent)
        return found

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self,
        prompt: str,
        seed: int,
        config: dict[str, Any],
        mlm: str,
        causal: str | None,
        fitness: str,
    ) -> int:
        """Record a new run (status 'running', owned by this process) with its full config;
        returns its id."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (created_at, status, prompt, seed, mlm, causal, fitness, "
                "config, versions, pid, host, process) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _now(),
                    prompt,
                    seed,
                    mlm,
                    causal,
                    fitness,
                    _dumps(config),
                    _dumps(_versions()),
                    *_this_process(),
                ),
            )
        return int(cursor.lastrowid)

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Set a run's status and error; 'running' clears finished_at, the others set it.

        'running' also makes this process the run's owner (resuming calls it), and is refused
        while the run is 'running' in another process that is still alive: two processes
        must not extend one run. A run left 'running' by a dead process is taken over.
        """
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        with self._transaction() as conn:
            self._require_run(run_id)
            if status != "running":
                conn.execute(
                    "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                    (status, error, _now(), run_id),
                )
                return
            pid, host, token = _this_process()
            old_status, old_pid, old_host, old_token = conn.execute(
                "SELECT status, pid, host, process FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            ours = (old_pid, old_host) == (pid, host) and old_token in (None, token)
            if (
                old_status == "running"
                and not ours
                and process_state(old_pid, old_host, old_token) == "alive"
            ):
                raise StoreError(
                    f"run {run_id} is still running in process {old_pid} on {old_host}; "
                    "wait for it to end or stop it (Ctrl-C) before resuming"
                )
            conn.execute(
                "UPDATE runs SET status = 'running', error = ?, finished_at = NULL, pid = ?, "
                "host = ?, process = ? WHERE id = ?",
                (error, pid, host, token, run_id),
            )

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Mark a run done and point best_individual_id at its fittest individual."""
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        with self._transaction() as conn:
            self._require_run(run_id)
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, best_individual_id = ("
                "  SELECT id FROM individuals WHERE run_id = ? AND fitness IS NOT NULL"
                "  ORDER BY fitness DESC, id LIMIT 1"
                ") WHERE id = ?",
                (status, _now(), run_id, run_id),
            )

    def run(self, run_id: int) -> dict[str, Any]:
        """One run with its config and versions decoded; StoreError if there is none."""
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise StoreError(f"no run {run_id} in {self._path}")
        row["config"] = _loads(row["config"], {})
        row["versions"] = _loads(row["versions"], {})
        return row

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with best_fitness, n_generations and n_individuals."""
        rows = self._rows(
            """
            SELECT r.*,
                   (SELECT MAX(fitness) FROM individuals WHERE run_id = r.id) AS best_fitness,
                   (SELECT COUNT(*) FROM generations WHERE run_id = r.id) AS n_generations,
                   (SELECT COUNT(*) FROM individuals WHERE run_id = r.id) AS n_individuals
            FROM runs r ORDER BY r.id DESC
            """
        )
        for row in rows:
            row["config"] = _loads(row["config"], {})
            row["versions"] = _loads(row["versions"], {})
        return rows

    # -- generations ---------------------------------------------------------------------------

    def write_generation(
        self,
        run_id: int,
        generation: int,
        individuals: list[dict[str, Any]],
        stats: dict[str, Any],
        rng_state: str,
        state: dict[str, Any],
    ) -> list[int]:
        """Write one generation in ONE transaction; returns the new individual ids in order.

        Each individual dict has `text`, `token_ids`, `fitness`, `scores`, `op`, `parents`
        (store ids), `span` ((start, end) or None), `detail` and `position`, and for
        multi-objective runs `objectives` (list of floats) and `pareto_rank`. `stats` has best,
        mean, std, worst, n_evaluated, n_cache_hits, n_unique, best_individual_id (None: the
        fittest individual written here) and seconds. If anything fails, nothing of this
        generation is kept.
        """
        now = _now()
        ids: list[int] = []
        with self._transaction() as conn:
            self._require_run(run_id)
            if conn.execute(
                "SELECT 1 FROM generations WHERE run_id = ? AND generation = ?",
                (run_id, generation),
            ).fetchone():
                raise StoreError(f"generation {generation} of run {run_id} is already written")
            text_ids = self._put_texts(conn, [ind["text"] for ind in individuals])
            for pos, (ind, tid) in enumerate(zip(individuals, text_ids, strict=True)):
                span = ind.get("span")
                token_ids = [int(t) for t in ind["token_ids"]]
                objectives = ind.get("objectives")
                cursor = conn.execute(
                    "INSERT INTO individuals (run_id, generation, position, text_id, token_ids, "
                    "n_tokens, fitness, scores, op, span_start, span_end, detail, created_at, "
                    "objectives, pareto_rank) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        generation,
                        ind.get("position", pos),
                        tid,
                        _dumps(token_ids),
                        len(token_ids),
                        ind.get("fitness"),
                        _dumps(ind.get("scores") or {}),
                        ind.get("op", "init"),
                        span[0] if span else None,
                        span[1] if span else None,
                        _dumps(ind.get("detail") or {}),
                        now,
                        _dumps(list(objectives)) if objectives is not None else None,
                        ind.get("pareto_rank"),
                    ),
                )
                new_id = int(cursor.lastrowid)
                conn.executemany(
                    "INSERT INTO parents (child_id, parent_id, position) VALUES (?, ?, ?)",
                    [(new_id, int(p), i) for i, p in enumerate(ind.get("parents") or ())],
                )
                ids.append(new_id)
            best_id = stats.get("best_individual_id")
            if best_id is None:
                best_id = self._fittest(individuals, ids)
            conn.execute(
                "INSERT INTO generations (run_id, generation, best, mean, std, worst, "
                "n_evaluated, n_cache_hits, n_unique, best_individual_id, seconds, rng_state, "
                "state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    generation,
                    stats.get("best"),
                    stats.get("mean"),
                    stats.get("std"),
                    stats.get("worst"),
                    stats.get("n_evaluated"),
                    stats.get("n_cache_hits"),
                    stats.get("n_unique"),
                    best_id,
                    stats.get("seconds"),
                    rng_state,
                    _dumps(state),
                    now,
                ),
            )
            conn.execute(
                "UPDATE runs SET generations_done = MAX(generations_done, ?) WHERE id = ?",
                (generation, run_id),
            )
        return ids

    @staticmethod
    def _fittest(individuals: Sequence[dict[str, Any]], ids: Sequence[int]) -> int | None:
        """Id of the fittest individual written (the first of equals), None if none is scored."""
        best: tuple[float, int] | None = None
        for ind, new_id in zip(individuals, ids, strict=True):
            fitness = ind.get("fitness")
            if fitness is not None and (best is None or fitness > best[0]):
                best = (fitness, new_id)
        return best[1] if best else None

    def last_generation(self, run_id: int) -> dict[str, Any] | None:
        """The latest written generation row (with rng_state and decoded state), or None."""
        self._require_run(run_id)
        row = self._one(
            "SELECT * FROM generations WHERE run_id = ? ORDER BY generation DESC LIMIT 1",
            (run_id,),
        )
        if row is not None:
            row["state"] = _loads(row["state"], {})
        return row

    def generation_stats(self, run_id: int) -> list[dict[str, Any]]:
        """Per-generation statistics of a run, in order (without the resume state)."""
        self._require_run(run_id)
        return self._rows(
            "SELECT generation, best, mean, std, worst, n_evaluated, n_cache_hits, n_unique, "
            "best_individual_id, seconds, created_at FROM generations WHERE run_id = ? "
            "ORDER BY generation",
            (run_id,),
        )

    def population(self, run_id: int, generation: int) -> list[dict[str, Any]]:
        """The individuals of one generation in population order, token ids decoded."""
        self._require_run(run_id)
        rows = self._rows(
            "SELECT i.id, i.position, i.token_ids, t.text, i.fitness, i.scores, i.op, "
            "i.n_tokens, i.objectives, i.pareto_rank FROM individuals i "
            "JOIN texts t ON t.id = i.text_id "
            "WHERE i.run_id = ? AND i.generation = ? ORDER BY i.position, i.id",
            (run_id, generation),
        )
        for row in rows:
            row["token_ids"] = _loads(row["token_ids"], [])
            row["scores"] = _loads(row["scores"], {})
            row["objectives"] = _loads(row["objectives"])
        return rows

    def pareto_front(self, run_id: int, generation: int | None = None) -> list[dict[str, Any]]:
        """The distinct texts on the Pareto front (pareto_rank 0) of a generation (default:
        the last one), best scalar fitness first; empty for a single-objective run."""
        self._require_run(run_id)
        if generation is None:
            last = self.last_generation(run_id)
            if last is None:
                return []
            generation = last["generation"]
        rows = self._rows(
            "SELECT MIN(i.id) AS id, i.generation, i.fitness, i.objectives, t.text "
            "FROM individuals i JOIN texts t ON t.id = i.text_id "
            "WHERE i.run_id = ? AND i.generation = ? AND i.pareto_rank = 0 "
            "GROUP BY i.text_id ORDER BY i.fitness DESC, id",
            (run_id, generation),
        )
        for row in rows:
            row["objectives"] = _loads(row["objectives"], [])
        return rows

    def scored_individuals(self, run_id: int) -> list[tuple[list[int], dict[str, Any]]]:
        """(token ids, scores) of every text the run has scored, for warming its caches.

        Individuals carry their scores; a text rejected by Metropolis-Hastings was scored too
        and lives in the detail of the `mh_reject` row that replaced it (`rejected_scores`,
        or in runs before causal scores `rejected_pll` and `rejected_n_tokens`). Offspring that
        were scored but not kept (mu_plus_lambda and nsga2 survivor selection) are read from
        `dropped_scores` ([[token ids, scores], ...]) in the state of the generation that
        dropped them.
        """
        self._require_run(run_id)
        out: list[tuple[list[int], dict[str, Any]]] = []
        for row in self._rows(
            "SELECT token_ids, scores FROM individuals WHERE run_id = ? AND scores != '{}'",
            (run_id,),
        ):
            out.append((_loads(row["token_ids"], []), _loads(row["scores"], {})))
        for row in self._rows(
            "SELECT detail FROM individuals WHERE run_id = ? AND op = 'mh_reject'", (run_id,)
        ):
            detail = _loads(row["detail"], {})
            if "rejected_ids" not in detail:
                continue
            scores = detail.get("rejected_scores")
            if scores is None:
                scores = {
                    "pll": detail.get("rejected_pll"),
                    "n_tokens": detail.get("rejected_n_tokens"),
                }
            out.append((detail["rejected_ids"], scores))
        for (state,) in self.db.conn.execute(
            "SELECT state FROM generations WHERE run_id = ? ORDER BY generation", (run_id,)
        ):
            for ids, scores in (_loads(state, {}) or {}).get("dropped_scores", ()):
                out.append((ids, scores))
        return out

    def best(self, run_id: int, n: int = 5) -> list[dict[str, Any]]:
        """The n fittest distinct texts of a run, each from its first individual at that fitness."""
        self._require_run(run_id)
        return self._rows(
            """
            SELECT id, generation, position, fitness, op, n_tokens, text, full_text FROM (
                SELECT i.id, i.generation, i.position, i.fitness, i.op, i.n_tokens, t.text,
                       r.prompt || t.text AS full_text,
                       ROW_NUMBER() OVER (
                           PARTITION BY i.text_id ORDER BY i.fitness DESC, i.id
                       ) AS rank_in_text
                FROM individuals i
                JOIN texts t ON t.id = i.text_id
                JOIN runs r ON r.id = i.run_id
                WHERE i.run_id = ? AND i.fitness IS NOT NULL
            )
            WHERE rank_in_text = 1
            ORDER BY fitness DESC, id
            LIMIT ?
            """,
            (run_id, n),
        )

    def truncate_after(self, run_id: int, generation: int) -> int:
        """Delete everything of a run after `generation` (for resume); returns rows deleted."""
        with self._transaction() as conn:
            self._require_run(run_id)
            later = "SELECT id FROM individuals WHERE run_id = ? AND generation > ?"
            conn.execute(f"DELETE FROM parents WHERE child_id IN ({later})", (run_id, generation))
            deleted = conn.execute(
                "DELETE FROM individuals WHERE run_id = ? AND generation > ?", (run_id, generation)
            ).rowcount
            conn.execute(
                "DELETE FROM generations WHERE run_id = ? AND generation > ?", (run_id, generation)
            )
            conn.execute(
                "UPDATE runs SET generations_done = COALESCE("
                "  (SELECT MAX(generation) FROM generations WHERE run_id = ?), 0),"
                " best_individual_id = CASE WHEN best_individual_id IN "
                "  (SELECT id FROM individuals) THEN best_individual_id END "
                "WHERE id = ?",
                (run_id, run_id),
            )
        return deleted

    # -- individuals ---------------------------------------------------------------------------

    def individual(self, individual_id: int) -> dict[str, Any]:
        """One individual with text, full text, decoded JSON and parent ids."""
        row = self._one(
            "SELECT i.*, t.text, r.prompt || t.text AS full_text FROM individuals i "
            "JOIN texts t ON t.id = i.text_id JOIN runs r ON r.id = i.run_id WHERE i.id = ?",
            (individual_id,),
        )
        if row is None:
            raise StoreError(f"no individual {individual_id} in {self._path}")
        row["token_ids"] = _loads(row["token_ids"], [])
        row["scores"] = _loads(row["scores"], {})
        row["detail"] = _loads(row["detail"], {})
        row["parents"] = self._parents_of([individual_id])[individual_id]
        return row

    def lineage(self, individual_id: int, max_depth: int | None = None) -> list[dict[str, Any]]:
        """Every ancestor of an individual (itself at depth 0), nearest first.

        Each row: depth, id, generation, position, op, span_start, span_end, fitness, text,
        detail and parents (ids). An ancestor reached along several paths appears once, at
        its smallest depth. Same recursion as the `lineage` view, but seeded with the one id:
        SQLite cannot push a WHERE into a recursive view, which would walk every individual.
        """
        self.individual(individual_id)  # StoreError if unknown
        rows = self._rows(
            """
            WITH RECURSIVE anc(ancestor_id, depth) AS (
                SELECT ?, 0
                UNION
                SELECT p.parent_id, anc.depth + 1
                FROM anc JOIN parents p ON p.child_id = anc.ancestor_id
                WHERE ? IS NULL OR anc.depth < ?
            )
            SELECT MIN(a.depth) AS depth, i.id, i.run_id, i.generation, i.position, i.op,
                   i.span_start, i.span_end, i.fitness, t.text, i.detail
            FROM anc a
            JOIN individuals i ON i.id = a.ancestor_id
            JOIN texts t ON t.id = i.text_id
            GROUP BY i.id
            ORDER BY depth, i.generation DESC, i.position, i.id
            """,
            (individual_id, max_depth, max_depth),
        )
        parents = self._parents_of([row["id"] for row in rows])
        for row in rows:
            row["detail"] = _loads(row["detail"], {})
            row["parents"] = parents[row["id"]]
        return rows

    # -- scores --------------------------------------------------------------------------------

    def put_scores(self, rows: list[dict[str, Any]]) -> None:
        """Store scores of texts; a (text, prefix, scorer) already stored is kept as it is.

        Each row: text, prefix ('' for none), scorer, total, n_tokens, per_token (list).
        """
        now = _now()
        with self._transaction() as conn:
            texts = [r["text"] for r in rows]
            prefixes = sorted({r.get("prefix", "") for r in rows} - {""})
            tids = self._put_texts(conn, texts)
            self._put_texts(conn, prefixes)
            conn.executemany(
                "INSERT OR IGNORE INTO scores (text_id, prefix_id, scorer, total, n_tokens, "
                "per_token, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        tid,
                        text_id(r["prefix"]) if r.get("prefix") else "",
                        r["scorer"],
                        r.get("total"),
                        r.get("n_tokens"),
                        _dumps(list(r.get("per_token") or ())),
                        now,
                    )
                    for tid, r in zip(tids, rows, strict=True)
                ],
            )

    def get_scores(self, texts: list[str], prefix: str, scorer: str) -> dict[str, dict[str, Any]]:
        """Stored scores of `texts` under (prefix, scorer), keyed by text; missing ones absent."""
        by_id = {text_id(t): t for t in texts}
        prefix_id = text_id(prefix) if prefix else ""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(by_id)):
            marks = ",".join("?" * len(chunk))
            for row in self._rows(
                f"SELECT text_id, total, n_tokens, per_token, created_at FROM scores "
                f"WHERE prefix_id = ? AND scorer = ? AND text_id IN ({marks})",
                [prefix_id, scorer, *chunk],
            ):
                found[by_id[row.pop("text_id")]] = {
                    **row,
                    "per_token": _loads(row["per_token"], []),
                }
        return found

    # -- baselines -----------------------------------------------------------------------------

    def add_baseline(
        self,
        prompt: str,
        method: str,
        model: str,
        params: dict[str, Any],
        seed: int | None,
        text: str,
        run_id: int | None = None,
    ) -> int:
        """Record a continuation made by a baseline method (sampling, beam, ...); its id."""
        with self._transaction() as conn:
            if run_id is not None:
                self._require_run(run_id)
            prompt_id, tid = self._put_texts(conn, [prompt, text])
            cursor = conn.execute(
                "INSERT INTO baselines (run_id, prompt_id, method, model, params, seed, text_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, prompt_id, method, model, _dumps(params), seed, tid, _now()),
            )
        return int(cursor.lastrowid)

    def baselines(self, run_id: int | None = None, prompt: str | None = None) -> list[dict]:
        """Baselines, oldest first, optionally only those of a run and/or a prompt."""
        where, params = ["1"], []
        if run_id is not None:
            where.append("b.run_id = ?")
            params.append(run_id)
        if prompt is not None:
            where.append("b.prompt_id = ?")
            params.append(text_id(prompt))
        rows = self._rows(
            "SELECT b.id, b.run_id, p.text AS prompt, b.method, b.model, b.params, b.seed, "
            "t.text, b.created_at FROM baselines b JOIN texts p ON p.id = b.prompt_id "
            f"JOIN texts t ON t.id = b.text_id WHERE {' AND '.join(where)} ORDER BY b.id",
            params,
        )
        for row in rows:
            row["params"] = _loads(row["params"], {})
        return rows

    # -- experiments ---------------------------------------------------------------------------

    def add_experiment(
        self,
        kind: str,
        config: dict[str, Any],
        summary: dict[str, Any],
        rows: list[dict[str, Any]],
        status: str = "finished",
    ) -> int:
        """Record an experiment (comparison, amplification sweep, ...) and its rows; its id."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO experiments (kind, created_at, status, config, summary) "
                "VALUES (?, ?, ?, ?, ?)",
                (kind, _now(), status, _dumps(config), _dumps(summary)),
            )
            experiment_id = int(cursor.lastrowid)
            conn.executemany(
                "INSERT INTO experiment_rows (experiment_id, idx, data) VALUES (?, ?, ?)",
                [(experiment_id, i, _dumps(row)) for i, row in enumerate(rows)],
            )
        return experiment_id

    def experiment(self, experiment_id: int) -> dict[str, Any]:
        """One experiment with config, summary and rows decoded; StoreError if unknown."""
        row = self._one("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        if row is None:
            raise StoreError(f"no experiment {experiment_id} in {self._path}")
        row["config"] = _loads(row["config"], {})
        row["summary"] = _loads(row["summary"], {})
        row["rows"] = [
            _loads(data, {})
            for (data,) in self.db.conn.execute(
                "SELECT data FROM experiment_rows WHERE experiment_id = ? ORDER BY idx",
                (experiment_id,),
            )
        ]
        return row

    def experiments(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Experiments newest first (without rows; n_rows counts them)."""
        rows = self._rows(
            "SELECT e.*, (SELECT COUNT(*) FROM experiment_rows WHERE experiment_id = e.id) "
            "AS n_rows FROM experiments e WHERE ? IS NULL OR kind = ? ORDER BY e.id DESC",
            (kind, kind),
        )
        for row in rows:
            row["config"] = _loads(row["config"], {})
            row["summary"] = _loads(row["summary"], {})
        return rows

    # -- read-only SQL -------------------------------------------------------------------------

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement; returns (column names, rows).

        The statement runs on a separate `mode=ro` connection with an authorizer that allows
        only reading, so INSERT, DROP, ATTACH, PRAGMA writes and the like raise StoreError
        ("read-only: ...") and the file is not changed. SQL errors are StoreErrors too.
        """
        conn = self._read_only_connection()
        denied: list[int] = []

        def authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
            if action in _READ_ACTIONS:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_PRAGMA and (arg2 is None or arg1 in _READ_PRAGMAS):
                return sqlite3.SQLITE_OK
            # Table-valued pragmas (`SELECT * FROM pragma_table_info('runs')`) register an
            # in-memory schema entry; mode=ro and query_only still keep the file unwritten.
            if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
                return sqlite3.SQLITE_OK
            denied.append(action)
            return sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        try:
            cursor = conn.execute(sql, params)
            columns = [d[0] for d in cursor.description or ()]
            rows = [tuple(row) for row in cursor.fetchall()]
        except (sqlite3.Error, sqlite3.Warning) as exc:
            if denied:
                keyword = re.match(r"\s*(\w+)", sql)
                what = keyword.group(1).upper() if keyword else "this statement"
                raise StoreError(
                    f"read-only: {what} refused; only SELECT queries may run here"
                ) from exc
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise StoreError(f"read-only: {exc}") from exc
            raise StoreError(f"SQL error: {exc}") from exc
        finally:
            conn.set_authorizer(None)
        return columns, rows

    def _read_only_connection(self) -> sqlite3.Connection:
        if self._query_conn is None:
            self._query_conn = _open_read_only(self._path)
            self._query_conn.execute("PRAGMA query_only = ON")
        return self._query_conn

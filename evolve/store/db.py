"""`LogStore`: the one place that reads and writes the SQLite record of runs.

It puts the aggregates together (`runs`, `scores`, `experiments`, read-only `sql`) over one
connection, and owns opening: a path (created with its folder if needed), ``":memory:"``, or an
injected `sqlite_utils.Database` (as simonw/llm's LogStore takes one), migrated on open
(`evolve.store.schema`). A file is refused untouched unless it is SQLite, and opened in WAL
mode with a 30 s busy timeout, so several processes can log runs into one file. Opening for
writing needs write access and a file with one name (`evolve.store.access`); `for_reading`
opens a database that read commands only read, on read-only storage too.

A LogStore holds one connection; use one instance per thread or process.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

from evolve.store.access import check_one_name, check_writable, open_read_only, write_problem
from evolve.store.core import BUSY_TIMEOUT_MS, StoreError, check_sqlite_file
from evolve.store.experiments import ExperimentsMixin
from evolve.store.runs import RunsMixin
from evolve.store.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    applied_migrations,
    check_schema_version,
    migrate,
)
from evolve.store.scores import ScoresMixin
from evolve.store.sql import QueryMixin

MEMORY = ":memory:"
# Tables every mlm-evolve database has; a file without them is someone else's.
OUR_TABLES = ("runs", "individuals", "parents", "generations", "texts")


class LogStore(RunsMixin, ScoresMixin, ExperimentsMixin, QueryMixin):
    """The SQLite record of runs, individuals, scores, baselines and experiments."""

    def __init__(self, db: Database | str | Path, readonly: bool = False) -> None:
        """Open and migrate `db`: a path, ``":memory:"`` or a `sqlite_utils.Database`.

        `readonly=True` opens an existing file with SQLite's `mode=ro`: no migration, every
        write refused. That is how `evolve sql` reads a database it must not change. An
        injected Database stays the caller's: `close` leaves its connection open.
        """
        self.readonly = readonly
        self._query_conn = None
        self._owns_connection = not isinstance(db, Database)
        if isinstance(db, Database):
            self.db = db
            (file,) = [
                row[2] for row in db.conn.execute("PRAGMA database_list") if row[1] == "main"
            ]
            self._path = Path(file) if file else None
            if self._path is not None:
                check_sqlite_file(self._path)
        elif str(db) == MEMORY:
            if readonly:
                raise StoreError("an in-memory database cannot be opened read-only: it is empty")
            self._path = None
            self.db = self._wrap(sqlite3.connect(MEMORY, isolation_level=None))
        else:
            self._path = Path(db)
            self.db = self._wrap(self._connect(self._path, readonly))
        conn = self.db.conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                check_schema_version(conn, self._where)
                if self._path is not None and not conn.in_transaction:
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA foreign_keys = ON")
                migrate(self.db, self._where, self._transaction)
        except sqlite3.OperationalError as exc:
            self._close_connection()
            name = getattr(exc, "sqlite_errorname", "")
            if name == "SQLITE_CANTOPEN":
                raise StoreError(f"cannot open {self._where}: {exc}") from exc
            if name.startswith("SQLITE_READONLY") and self._path is not None:
                check_writable(self._path)  # names the file or folder that is read-only
                raise StoreError(f"cannot write {self._where}: {exc}") from exc
            raise
        except BaseException:
            self._close_connection()
            raise

    @staticmethod
    def _wrap(conn: sqlite3.Connection) -> Database:
        return Database(conn, recursive_triggers=False, execute_plugins=False)

    @staticmethod
    def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
        """A connection to the file at `path`, refused untouched unless it is SQLite."""
        check_sqlite_file(path)
        if readonly:
            if not path.exists():
                raise StoreError(f"no database at {path}")
            return open_read_only(path)
        check_one_name(path)
        check_writable(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc.strerror}") from exc
        # isolation_level=None: no implicit transactions; every write opens its own.
        try:
            return sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.OperationalError as exc:  # e.g. a folder where files cannot be made
            raise StoreError(f"cannot open {path}: {exc}") from exc

    @classmethod
    def for_reading(cls, path: Path) -> LogStore:
        """The existing database at `path`, for commands that only read it.

        Where the file and its folder can be written (and the file has one name) it is
        opened as usual, so an older schema is migrated, and then switched to
        `query_only`; SQLite removes its -wal and -shm files when it closes. Elsewhere
        (read-only storage) it is opened `mode=ro`, immutable where nothing can be
        writing it; a newer or older schema is then refused with one line. Either way
        every write through this store is refused.
        """
        if not path.exists():
            raise StoreError(f"no database at {path}; `evolve run` creates one")
        check_sqlite_file(path)
        if write_problem(path) is None and path.stat().st_nlink == 1:
            store = cls(path)
            store.db.conn.execute("PRAGMA query_only = ON")
            store.readonly = True
            return store
        store = cls(path, readonly=True)
        try:
            conn = store.db.conn
            check_schema_version(conn, str(path))
            applied = applied_migrations(conn, str(path))
            if any(fn.__name__ not in applied for fn in MIGRATIONS):
                version = max(applied.values(), default=0)
                raise StoreError(
                    f"{path} has schema version {version}, older than this mlm-evolve's "
                    f"({SCHEMA_VERSION}), and cannot be upgraded where it is (no write "
                    "access); copy it somewhere writable and open it there once"
                )
        except BaseException:
            store.close()
            raise
        return store

    def schema_version(self) -> int:
        """The highest migration recorded in the database (0 for none)."""
        return max(applied_migrations(self.db.conn, self._where).values(), default=0)

    def close(self) -> None:
        """Close the connections (an injected Database's stays open); unusable afterwards."""
        self._close_query_connection()
        self._close_connection()

    def _close_connection(self) -> None:
        if self._owns_connection:
            self.db.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_database(path: Path) -> None:
    """Raise StoreError (one line) unless `path` is an mlm-evolve database this code reads
    (`evolve serve` checks the file before a server starts).

    An SQLite file of something else is only read, never migrated. A database of an older
    schema is migrated first, as every other command does; one of a newer schema is refused
    with the store's message.
    """
    if not path.exists():
        raise StoreError(f"no database at {path}; `evolve run` creates one")
    try:
        with LogStore(path, readonly=True) as store:  # refuses folders and non-SQLite files
            _, rows = store.query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            version = store.schema_version()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable mlm-evolve database: {exc}") from exc
    names = {row[0] for row in rows}
    missing = [name for name in OUR_TABLES if name not in names]
    if missing or version == 0:
        what = f"no {missing[0]} table" if missing else "no schema version"
        raise StoreError(f"{path} is not an mlm-evolve database ({what})")
    if version != SCHEMA_VERSION:
        LogStore(path).close()  # migrates an older schema; refuses a newer one

"""Read-only SQL over the store: what `evolve sql` and `LogStore.query` run.

Two locks, either of which alone keeps the database unchanged:

- an authorizer that allows only reading (SELECT, reads, functions, recursive CTEs and the
  introspection pragmas), so INSERT, DROP, ATTACH, PRAGMA writes, VACUUM, BEGIN and the like
  are refused before they run;
- for a database file, a separate connection opened with SQLite's `mode=ro` and
  `PRAGMA query_only`, so SQLite itself refuses to write the file. An in-memory database has
  no file to open twice: its query runs on the store's own connection with the authorizer and
  `query_only` switched on for the statement.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evolve.store.core import BUSY_TIMEOUT_MS, StoreCore, StoreError

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


def open_read_only(path: Path) -> sqlite3.Connection:
    """A `mode=ro` connection: SQLite itself refuses writes to the file."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}") from exc
    conn.isolation_level = None
    return conn


def read_only_query(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> tuple[list[str], list[tuple]]:
    """Run one statement on `conn` under the read-only authorizer; (column names, rows)."""
    denied: list[int] = []

    def authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg2 is None or arg1 in _READ_PRAGMAS):
            return sqlite3.SQLITE_OK
        # Table-valued pragmas (`SELECT * FROM pragma_table_info('runs')`) register an
        # in-memory schema entry; query_only (and mode=ro for a file) still refuse writes.
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


class QueryMixin(StoreCore):
    """`LogStore.query`: read-only SQL (see module doc)."""

    _query_conn: sqlite3.Connection | None = None

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement; returns (column names, rows).

        INSERT, DROP, ATTACH, PRAGMA writes and the like raise StoreError ("read-only: ...")
        and change nothing. SQL errors are StoreErrors too.
        """
        if self._path is not None:
            return read_only_query(self._read_only_connection(), sql, params)
        conn = self.db.conn
        if conn.in_transaction:  # query_only cannot be switched mid-transaction safely
            raise StoreError("read-only: a query cannot run inside an open write transaction")
        conn.execute("PRAGMA query_only = ON")
        try:
            return read_only_query(conn, sql, params)
        finally:
            conn.execute("PRAGMA query_only = OFF")

    def _read_only_connection(self) -> sqlite3.Connection:
        assert self._path is not None
        if self._query_conn is None:
            self._query_conn = open_read_only(self._path)
            self._query_conn.execute("PRAGMA query_only = ON")
        return self._query_conn

    def _close_query_connection(self) -> None:
        if self._query_conn is not None:
            self._query_conn.close()
            self._query_conn = None

"""Read-only SQL over the store: what `evolve sql` and `LogStore.query` run.

Two locks, either of which alone keeps the database unchanged:

- an authorizer that allows only reading (SELECT, reads, functions, recursive CTEs and the
  introspection pragmas), so INSERT, DROP, ATTACH, PRAGMA writes, VACUUM, BEGIN and the like
  are refused before they run;
- for a database file, a separate connection opened with SQLite's `mode=ro` and
  `PRAGMA query_only`, so SQLite itself refuses to write the file. An in-memory database has
  no file to open twice: its query runs on the store's own connection with the authorizer and
  `query_only` switched on for the statement.

`LogStore.stream` reads rows as they are iterated (memory stays flat however many rows a query
returns) and stops a statement at a time limit or a Ctrl-C, checked by a progress handler
every few thousand SQLite instructions.

Memory is bounded too, since a query is a program: `SELECT randomblob(1000000000)` took 4 GB
in `evolve sql` and 7.8 GB in the web server before these limits (issue 25).

- `bound_connection` sets SQLite's SQLITE_LIMIT_LENGTH on a connection that runs users'
  queries: no string or blob the query makes or reads may exceed `MAX_VALUE_BYTES`;
- `limit_heap` caps everything SQLite allocates in the process (`PRAGMA hard_heap_limit`,
  `MAX_HEAP_BYTES`), which bounds a row of many large values, sorts and temporary tables;
  a process that serves queries (`evolve sql` run as the `evolve` process, `evolve serve`)
  sets it once. It is process-wide and can only be lowered, so a library user's process
  (or a test runner invoking the CLI) is left alone.

A query past either limit stops with one line (StoreError) and changes nothing.

`evolve serve` runs visitors' SQL on connections Datasette opens (`mode=ro`) and hands to
the web code; `prepare_served` puts the same value limit on each, and counts the bytes of the
rows a statement hands over (`MAX_RESULT_BYTES`, Datasette holds up to a page of rows in
memory at once). `served_error` turns a statement stopped by a limit into the one-line
OperationalError that Datasette shows as an SQL error.
"""

from __future__ import annotations

import re
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from evolve.store.access import open_read_only
from evolve.store.core import StoreCore, StoreError

_PROGRESS_STEPS = 10_000  # SQLite instructions between time-limit checks: well under 1 ms
# The largest value in a run database is a few kB (a generation's random state, a score's
# per-token list); 16 MiB leaves room for any group_concat a person reads in a terminal.
MAX_VALUE_BYTES = 16 * 2**20
# SQLite's page caches are 2 MB a connection and sorts spill to temporary files; 256 MiB
# holds a dozen values of the largest size at once.
MAX_HEAP_BYTES = 256 * 2**20
# Text and blobs one statement on a served connection may hand over: pages of 1,000 rows.
MAX_RESULT_BYTES = 64 * 2**20


def bound_connection(conn: sqlite3.Connection) -> int:
    """Cap the length of any string or blob on `conn` at MAX_VALUE_BYTES; returns the old
    limit (`conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old)` restores it)."""
    return conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)


def limit_heap() -> None:
    """Cap the memory SQLite may allocate in this process at MAX_HEAP_BYTES (a lower cap
    already set is kept: SQLite only lets the hard heap limit go down)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"PRAGMA hard_heap_limit = {MAX_HEAP_BYTES}")
    finally:
        conn.close()


def too_big(exc: BaseException) -> str | None:
    """The one-line reason when `exc` is SQLite refusing a query for its size, else None."""
    if isinstance(exc, MemoryError):
        return (
            f"the query needs more than {MAX_HEAP_BYTES // 2**20} MiB of memory, the limit "
            "for a query here; ask for fewer or smaller values"
        )
    if isinstance(exc, sqlite3.DataError) and "too big" in str(exc):
        return (
            f"the query makes or reads a value larger than {MAX_VALUE_BYTES // 2**20} MiB, the "
            "limit for one value here"
        )
    return None


def result_too_big() -> str:
    return (
        f"the result holds more than {MAX_RESULT_BYTES // 2**20} MiB of text and blobs, "
        "the limit for one query here; select fewer rows or columns"
    )


def bound_rows(conn: sqlite3.Connection) -> None:
    """Make `conn` count the bytes of the rows each cursor fetches, and stop the statement
    with an OperationalError past MAX_RESULT_BYTES. Rows stay `sqlite3.Row`, as Datasette
    makes them."""
    fetched: weakref.WeakKeyDictionary[sqlite3.Cursor, int] = weakref.WeakKeyDictionary()

    def factory(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> sqlite3.Row:
        size = sum(len(v) for v in row if isinstance(v, str | bytes))
        total = fetched.get(cursor, 0) + size
        if total > MAX_RESULT_BYTES:
            raise sqlite3.OperationalError(result_too_big())
        fetched[cursor] = total
        return sqlite3.Row(cursor, row)

    conn.row_factory = factory


def prepare_served(conn: sqlite3.Connection) -> None:
    """Every bound on a connection that serves visitors' SQL (Datasette's, in `evolve serve`):
    the value limit of `bound_connection` and the result limit of `bound_rows`."""
    bound_connection(conn)
    bound_rows(conn)


def served_error(exc: BaseException) -> sqlite3.OperationalError | None:
    """SQLite refusing a statement for its size (a DataError "too big", or MemoryError from
    the heap limit) as an OperationalError with one line, which Datasette shows as an SQL
    error (status 400); None for any other exception."""
    reason = too_big(exc)
    return None if reason is None else sqlite3.OperationalError(reason)


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


def _authorizer(denied: list[int]) -> Callable[..., int]:
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

    return authorize


@contextmanager
def read_only_rows(
    conn: sqlite3.Connection,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
    timeout: float | None = None,
) -> Iterator[tuple[list[str], Iterator[tuple]]]:
    """Run one statement on `conn` under the read-only authorizer; yields (column names,
    rows), the rows fetched from SQLite as they are read, not all at once.

    `timeout` (seconds; None or 0: none) stops the statement with a StoreError, checked
    every few thousand SQLite instructions so that an endless recursive query stops too.
    A Ctrl-C (or SIGTERM, see `cli.process`) while SQLite runs stops it within that check as
    well and is raised as KeyboardInterrupt. No value may exceed MAX_VALUE_BYTES (for the
    statement only: the connection's own limit is restored after it). Iterate the rows
    inside the `with` block.
    """
    denied: list[int] = []
    deadline = time.monotonic() + timeout if timeout else None
    timed_out = False

    def progress() -> int:
        # A signal handler that raises here (Ctrl-C) also stops the statement: SQLite
        # treats an exception in this callback as "stop"; `_error` turns it back.
        nonlocal timed_out
        if deadline is not None and time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    def error(exc: sqlite3.Error | sqlite3.Warning | MemoryError) -> BaseException:
        reason = too_big(exc)
        if reason is not None:
            return StoreError(reason)
        if denied:
            keyword = re.match(r"\s*(\w+)", sql)
            what = keyword.group(1).upper() if keyword else "this statement"
            return StoreError(f"read-only: {what} refused; only SELECT queries may run here")
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            if timed_out:
                return StoreError(
                    f"the query was stopped at its time limit of {timeout:g} s "
                    "(--timeout; 0 for none)"
                )
            return KeyboardInterrupt()
        if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
            return StoreError(f"read-only: {exc}")
        return StoreError(f"SQL error: {exc}")

    def rows(cursor: sqlite3.Cursor) -> Iterator[tuple]:
        # One row at a time, not fetchmany: a batch would hold back rows already found
        # while SQLite searches for the rest of it.
        while True:
            try:
                row = cursor.fetchone()
            except (sqlite3.Error, sqlite3.Warning, MemoryError) as exc:
                raise error(exc) from exc
            if row is None:
                return
            yield row

    conn.set_authorizer(_authorizer(denied))
    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    length = bound_connection(conn)
    try:
        try:
            cursor = conn.execute(sql, params)
        except (sqlite3.Error, sqlite3.Warning, MemoryError) as exc:
            raise error(exc) from exc
        try:
            yield [d[0] for d in cursor.description or ()], rows(cursor)
        finally:
            cursor.close()
    finally:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length)
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)


def read_only_query(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> tuple[list[str], list[tuple]]:
    """Run one statement on `conn` under the read-only authorizer; (column names, all rows)."""
    with read_only_rows(conn, sql, params) as (columns, rows):
        return columns, list(rows)


class QueryMixin(StoreCore):
    """`LogStore.query` and `LogStore.stream`: read-only SQL (see module doc)."""

    _query_conn: sqlite3.Connection | None = None

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> tuple[list[str], list[tuple]]:
        """Run one read-only SQL statement; returns (column names, rows).

        INSERT, DROP, ATTACH, PRAGMA writes and the like raise StoreError ("read-only: ...")
        and change nothing. SQL errors are StoreErrors too.
        """
        with self.stream(sql, params) as (columns, rows):
            return columns, list(rows)

    @contextmanager
    def stream(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] = (),
        timeout: float | None = None,
    ) -> Iterator[tuple[list[str], Iterator[tuple]]]:
        """`query`, with the rows read as they are iterated and an optional time limit (see
        `read_only_rows`): `with store.stream(sql) as (columns, rows): for row in rows: ...`"""
        if self._path is not None:
            with read_only_rows(self._read_only_connection(), sql, params, timeout) as found:
                yield found
            return
        conn = self.db.conn
        if conn.in_transaction:  # query_only cannot be switched mid-transaction safely
            raise StoreError("read-only: a query cannot run inside an open write transaction")
        conn.execute("PRAGMA query_only = ON")
        try:
            with read_only_rows(conn, sql, params, timeout) as found:
                yield found
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

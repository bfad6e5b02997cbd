"""Bounded memory for the SQL that `evolve serve` runs: Datasette's SQL page, its table
views and our own pages all read through the connections prepared here.

A visitor's SQL is a program: before issue 25, `SELECT randomblob(1000000000)` through the
SQL page took 23.8 s and 7.8 GB of server memory. Three bounds now hold:

- every connection caps a string or blob at `MAX_VALUE_BYTES` (SQLITE_LIMIT_LENGTH,
  `evolve.store.sql.bound_connection`), and the server process caps SQLite's heap
  (`evolve.store.sql.limit_heap`, set by `evolve.web.app.serve`);
- the rows one statement hands to the server are counted as they are fetched: past
  `MAX_RESULT_BYTES` of text and blobs the statement stops (Datasette holds up to
  `max_returned_rows` rows of a page in memory at once);
- a statement stopped by either limit is an ordinary SQL error page (status 400) with one
  line that says which limit, not a server error with a traceback.
"""

from __future__ import annotations

import sqlite3
import weakref
from typing import Any

from datasette.database import Database

from evolve.store.sql import MAX_VALUE_BYTES, bound_connection, too_big

MAX_RESULT_BYTES = 64 * 2**20  # text and blobs one statement may hand over: pages of 1,000 rows


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


def prepare(conn: sqlite3.Connection) -> None:
    """Every bound of this module on one of Datasette's connections."""
    bound_connection(conn)
    bound_rows(conn)


class BoundedDatabase(Database):
    """Datasette's Database whose statements past a size limit fail as SQL errors.

    SQLite's "string or blob too big" is a DataError, and its heap limit reaches Python as
    MemoryError; Datasette shows neither as an SQL error (a table view answers 500 and
    prints a traceback). Both become an OperationalError with one line here.
    """

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(*args, **kwargs)
        except (sqlite3.DataError, MemoryError) as exc:
            reason = too_big(exc)
            if reason is None:
                raise
            raise sqlite3.OperationalError(reason) from None


__all__ = ["MAX_RESULT_BYTES", "MAX_VALUE_BYTES", "BoundedDatabase", "bound_rows", "prepare"]

"""Bounded memory for the SQL that `evolve serve` runs: Datasette's SQL page, its table
views and our own pages all read through connections bounded by the store.

A visitor's SQL is a program: before issue 25, `SELECT randomblob(1000000000)` through the
SQL page took 23.8 s and 7.8 GB of server memory. Three bounds now hold:

- every connection caps a string or blob at `MAX_VALUE_BYTES` (SQLITE_LIMIT_LENGTH), and
  counts the rows one statement hands to the server: past `MAX_RESULT_BYTES` of text and
  blobs the statement stops (Datasette holds up to `max_returned_rows` rows of a page in
  memory at once). Both are `evolve.store.sql.prepare_served`, which the plugin's
  `prepare_connection` hook applies to each connection Datasette opens;
- the server process caps SQLite's heap (`evolve.store.sql.limit_heap`, set by
  `evolve.web.app.serve`);
- a statement stopped by either limit is an ordinary SQL error page (status 400) with one
  line that says which limit, not a server error with a traceback (`BoundedDatabase`).
"""

from __future__ import annotations

from typing import Any

from datasette.database import Database

from evolve.store.sql import MAX_RESULT_BYTES, MAX_VALUE_BYTES, served_error


class BoundedDatabase(Database):
    """Datasette's Database whose statements past a size limit fail as SQL errors.

    SQLite's "string or blob too big" is a DataError, and its heap limit reaches Python as
    MemoryError; Datasette shows neither as an SQL error (a table view answers 500 and
    prints a traceback). Both become an OperationalError with one line here
    (`evolve.store.sql.served_error`).
    """

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute(*args, **kwargs)
        except Exception as exc:  # MemoryError included
            error = served_error(exc)
            if error is None:
                raise
            raise error from None


__all__ = ["MAX_RESULT_BYTES", "MAX_VALUE_BYTES", "BoundedDatabase"]

"""What every part of the store shares: the error type, text keys, JSON helpers, and `StoreCore`,
the connection with its write transaction and the small queries the aggregates build on.

The aggregates (`runs`, `scores`, `experiments`, `sql`) are mixins over `StoreCore`; `db.LogStore`
puts them together and owns opening and migrating the database.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from scoring.errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000  # a long generation commit by another process is worth waiting for
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
_CHUNK = 500  # bound parameters per IN (...) list, well under SQLite's limit


class StoreError(UserError):
    """The database cannot be used as asked: not SQLite, newer schema, unknown id, read-only."""


# SQLite's own error for a database that is locked, corrupt or full, which the store lets
# through unchanged: callers outside the store catch it by this name (they import no sqlite3).
DatabaseError = sqlite3.DatabaseError


def text_id(text: str) -> str:
    """The key of a text in `texts`: the first 32 hex digits of sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def prefix_id(prefix: str) -> str:
    """The key of a scoring context in `scores.prefix_id`: '' for none, else its text id."""
    return text_id(prefix) if prefix else ""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def loads(value: str | None, default: Any = None) -> Any:
    return json.loads(value) if value is not None else default


def versions() -> dict[str, str | None]:
    """Library versions stored with a run; read from metadata so torch is not imported."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("mlm-evolve", "torch", "transformers", "deap", "sqlite-utils"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["sqlite"] = sqlite3.sqlite_version
    return found


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite gets a chance to write to it."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not an mlm-evolve database")
    if not path.exists() or path.stat().st_size == 0:
        return  # SQLite turns an empty file into a new database
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StoreError(f"{path} is not an mlm-evolve database (not SQLite)")


def put_texts(db: Database, texts: Sequence[str]) -> list[str]:
    """Store texts once each (keyed by `text_id`); their ids, in order."""
    ids = [text_id(t) for t in texts]
    rows = {tid: {"id": tid, "text": t} for tid, t in zip(ids, texts, strict=True)}
    if rows:
        db.table("texts").insert_all(rows.values(), ignore=True)
    return ids


class StoreCore:
    """The connection, the write transaction and shared lookups (see module doc)."""

    db: Database
    readonly: bool
    _path: Path | None  # None for an in-memory database

    @property
    def path(self) -> Path | None:
        """The database file as it was given (or found for an injected Database); None in memory."""
        return self._path

    @property
    def _where(self) -> str:
        """How error messages name this database."""
        return str(self._path) if self._path is not None else "the in-memory database"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so a busy
        database is waited for (busy_timeout) instead of failing on a lock upgrade.

        sqlite-utils table calls inside it nest as savepoints (`Database.atomic`), so they
        commit or roll back with the whole transaction."""
        if self.readonly:
            raise StoreError(f"read-only: {self._where} was opened read-only")
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, without waiting for or blocking
        readers (PASSIVE): afterwards a plain copy of the file alone holds every commit so
        far. Frames a reader still needs stay in the WAL until a later checkpoint."""
        if self._path is None or self.readonly:
            return
        # Busy or locked: the next generation's checkpoint copies these frames.
        with suppress(sqlite3.OperationalError):
            self.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict]:
        cursor = self.db.conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _require_run(self, run_id: int) -> None:
        if not self.db.conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
            raise StoreError(f"no run {run_id} in {self._where}")

    def _parents_of(self, ids: Sequence[int]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {i: [] for i in ids}
        for chunk in chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for child, parent in self.db.conn.execute(
                f"SELECT child_id, parent_id FROM parents WHERE child_id IN ({marks}) "
                "ORDER BY child_id, position",
                chunk,
            ):
                found[child].append(parent)
        return found

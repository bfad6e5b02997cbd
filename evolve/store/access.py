"""How a database file may be opened, and copying it whole: the file-level rules of the store.

- **Writing** needs write access to the file and to its folder (SQLite creates `NAME-wal` and
  `NAME-shm` next to the file), and a file with one name only. SQLite names the WAL and the
  shared-memory index after the path it was given, so two processes that reach one file
  through two hard links each keep their own WAL: both commit, both believe they wrote run 2,
  and one of the two histories is lost when the other checkpoints. Such a file is refused for
  writing with one line; reading it is harmless and allowed.
- **Reading** works on read-only storage: a `mode=ro` connection, and `immutable=1` where the
  folder cannot be written and no `-wal` file holds anything. SQLite then needs no `-shm`
  file (which it could not create there) and takes no locks; nobody can be writing a database
  whose folder is not writable.
- **Backup** (`backup_database`) uses SQLite's online backup API in one step: it reads one
  consistent snapshot (the generations committed before it began) without blocking a run that
  keeps writing, and writes it to a temporary file that is checked and then renamed into
  place, so DEST is never half a database.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from evolve.store.core import BUSY_TIMEOUT_MS, StoreError, check_sqlite_file

READ_COMMANDS = "runs, show, lineage, sql, db backup"  # named in the write-access error


def _can_write(path: Path) -> bool:
    """Whether this process may write `path` (False on read-only storage, even for root)."""
    return os.access(path, os.W_OK)


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _wal_has_frames(path: Path) -> bool:
    try:
        return wal_path(path).stat().st_size > 0
    except OSError:
        return False


def folder_writable(path: Path) -> bool:
    return _can_write(path.absolute().parent)


def write_problem(path: Path) -> str | None:
    """Why this process cannot write the database at `path`, or None if it can.

    A missing file is no problem here (it is created, with its folder, by the caller)."""
    folder = path.absolute().parent
    if folder.exists() and not _can_write(folder):
        return (
            f"cannot write {path}: its folder is read-only "
            "(SQLite keeps its -wal and -shm files next to the database)"
        )
    if path.exists() and not _can_write(path):
        return f"cannot write {path}: the file is read-only"
    return None


def check_writable(path: Path) -> None:
    """StoreError (one line) if a writing command cannot write `path`."""
    problem = write_problem(path)
    if problem is not None:
        raise StoreError(f"{problem}; commands that only read it ({READ_COMMANDS}) still work")


def check_one_name(path: Path) -> None:
    """StoreError if the file has several names (hard links): see the module doc."""
    try:
        links = path.stat().st_nlink
    except OSError:  # missing (or below a file): creating it reports what is wrong
        return
    if links > 1:
        raise StoreError(
            f"{path} has {links} names (hard links); SQLite keeps a separate -wal per name, "
            "so two runs writing it through different names lose one of them. Write it through "
            "a single name: copy it (`evolve db backup`) instead of linking it"
        )


def read_only_uri(path: Path) -> str:
    """The URI that opens `path` read-only; immutable where nothing can be writing it."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    if not folder_writable(path) and not _wal_has_frames(path):
        uri += "&immutable=1"
    return uri


def open_read_only(path: Path) -> sqlite3.Connection:
    """A `mode=ro` connection (see `read_only_uri`): SQLite itself refuses writes to the file."""
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}") from exc
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _wal_has_frames(path) and not folder_writable(path):
            raise StoreError(
                f"cannot read {path}: its -wal file holds changes that are not in the file "
                "yet, and reading them needs write access to the folder (for the -shm file); "
                "open it once where it can be written, or copy it with `evolve db backup`"
            ) from exc
        raise StoreError(f"cannot open {path} read-only: {exc}") from exc
    conn.isolation_level = None
    return conn


# -- backup ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """What `backup_database` copied."""

    dest: Path
    bytes: int
    runs: int
    generations: int
    seconds: float


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.absolute().resolve() == b.absolute().resolve()


def _count(conn: sqlite3.Connection, table: str) -> int:
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # not an mlm-evolve table (an empty database)
        return 0


def backup_database(source: Path, dest: Path, force: bool = False) -> BackupResult:
    """Copy the database at `source` to `dest` as one whole, consistent database.

    Safe while a run writes `source`: the copy holds everything committed before it began.
    `dest` must not exist (unless `force`) and must not be `source` under any name. The copy
    is written next to `dest`, checked with `PRAGMA integrity_check`, switched out of WAL
    mode (so it is one self-contained file) and renamed into place.
    """
    if not source.exists():
        raise StoreError(f"no database at {source}")
    check_sqlite_file(source)
    if dest.is_dir():
        raise StoreError(f"{dest} is a folder; give the path of the backup file")
    own = (source, wal_path(source), source.with_name(source.name + "-shm"))
    if any(_same_file(dest, name) for name in own):
        raise StoreError(f"{dest} is the database itself (or its -wal/-shm); give another path")
    if dest.exists() and not force:
        raise StoreError(f"{dest} exists; use --force to replace it")
    if not dest.absolute().parent.is_dir():
        raise StoreError(f"cannot write {dest}: no folder {dest.absolute().parent}")
    started = time.monotonic()
    src = open_read_only(source)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        try:
            out = sqlite3.connect(str(tmp), isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write {dest}: {exc}") from exc
        try:
            # One step (pages=-1): one read transaction, so one snapshot; in WAL mode a
            # writer is not blocked by it.
            src.backup(out)
            out.execute("PRAGMA journal_mode = DELETE")
            (check,) = out.execute("PRAGMA integrity_check").fetchone()
            if check != "ok":
                raise StoreError(f"the backup of {source} failed its integrity check: {check}")
            runs, generations = _count(out, "runs"), _count(out, "generations")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot back up {source} to {dest}: {exc}") from exc
        finally:
            out.close()
        os.replace(tmp, dest)
    except OSError as exc:
        raise StoreError(f"cannot write {dest}: {exc.strerror}") from exc
    finally:
        src.close()
        tmp.unlink(missing_ok=True)
    return BackupResult(
        dest=dest,
        bytes=dest.stat().st_size,
        runs=runs,
        generations=generations,
        seconds=time.monotonic() - started,
    )

"""Pieces every command module shares: error translation, the --db option, id and count types."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.process import interrupted_exit, interruption, sigterm_as_interrupt, terminated
from evolve.ga.config import INT64_MAX
from evolve.store import DatabaseError, LogStore, StoreError
from scoring.errors import UserError
from scoring.models import PRESETS

DEFAULT_DB = Path("runs") / "evolve.db"  # runs/ is the project's place for run databases
INTERRUPTED_MESSAGE = (
    "everything written before {what} is kept "
    "(`evolve runs` lists runs; `evolve resume ID` continues one)."
)
# Ids and counts are SQLite INTEGERs (signed 64-bit): a larger number is no id and used to end
# in an OverflowError traceback where it met SQLite. Click refuses it with one line, exit 2.
ID = click.IntRange(0, INT64_MAX)
COUNT = click.IntRange(0, INT64_MAX)


def default_db_path() -> Path:
    return Path(os.environ.get("MLM_EVOLVE_DB", str(DEFAULT_DB)))


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--db PATH` (env MLM_EVOLVE_DB, default runs/evolve.db) for commands that use the store."""
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"SQLite database of runs [env MLM_EVOLVE_DB; default {DEFAULT_DB}]",
    )(func)


def resolve_db(db_path: Path | None) -> Path:
    return db_path if db_path is not None else default_db_path()


class ErrorTranslatingGroup(click.Group):
    """Turn domain errors into one-line click errors instead of tracebacks.

    UserError (bad input) and an option value click refuses (out of range, say) become one
    `Error: ...` line, exit code 2. A database that is locked or corrupt becomes a
    ClickException (exit 1) with the sqlite message, and so does output that cannot be
    written (`evolve runs > /dev/full`, a full disk), as coreutils report a write error.
    A Ctrl-C that no command handled itself (one during model loading, or a second one while a run records
    its interruption) exits 130 with one line instead of click's "Aborted!" and exit 1:
    every store write is one transaction, so what was committed before it is kept.
    SIGTERM takes the same path (`cli.process`) and exits 143.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except UserError as exc:
            raise click.UsageError(str(exc).splitlines()[0] if str(exc) else "bad input") from exc
        except click.MissingParameter:
            raise  # with the usage, which says what is missing
        except click.BadParameter as exc:  # a bad option value: one line, without the usage
            raise click.UsageError(exc.format_message()) from None
        except DatabaseError as exc:
            raise click.ClickException(f"database error: {exc}") from exc
        except OSError as exc:
            # A write that fails without a file name is a write to the output (files are
            # opened by name, and their errors are translated where they are written).
            # EPIPE (`evolve runs | head`) is click's: it exits 1 silently, as `cat` does.
            if exc.errno not in OUTPUT_ERRNOS or exc.filename is not None:
                raise
            _drop_stdout()
            raise click.ClickException(f"cannot write the output: {exc.strerror}") from None
        except KeyboardInterrupt:
            what = "SIGTERM" if terminated() else "Ctrl-C"
            click.echo(f"\n{interruption()}: {INTERRUPTED_MESSAGE.format(what=what)}", err=True)
            raise click.exceptions.Exit(interrupted_exit()) from None


# errno values of a write that cannot complete: no space, quota, file size limit, I/O error.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _drop_stdout() -> None:
    """After a failed write to stdout, point its file descriptor at /dev/null, so that the
    interpreter's last flush of what is still buffered cannot fail a second time and print
    "Exception ignored ..." (the fix the Python docs give for SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def unescape(text: str) -> str:
    r"""Let `--prompt "a\nb"` mean a newline (and \t a tab), as users type it in a shell."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def absolute_db(store: LogStore) -> str:
    """The store's file as an absolute path, for hints to be pasted in another directory."""
    path = store.path
    return str(path) if path is None else os.path.abspath(path)  # None: an in-memory store


def absolute_model(name: str) -> str:
    """A model given as a local folder (`--mlm ./model`) as its absolute path, so the stored
    config still names it when the run is resumed or compared from another directory.
    Presets and hub ids (no such folder here) are kept as given."""
    if name in PRESETS:
        return name
    path = Path(name).expanduser()
    return str(path.absolute()) if path.is_dir() else name


def existing_db(db_path: Path | None) -> Path:
    """The path --db resolves to, which must exist: reading commands (and `resume`, which
    writes only to a run that is there) never create a database."""
    path = resolve_db(db_path)
    if not path.exists():
        raise StoreError(f"no database at {path}; `evolve run` creates one")
    return path


def open_existing(db_path: Path | None) -> LogStore:
    """The store at --db, migrated, for a command that writes it; a missing file is an
    error, not a new empty database."""
    return LogStore(existing_db(db_path))


def open_for_reading(db_path: Path | None) -> LogStore:
    """The store at --db for a command that only reads it: works on read-only storage, and
    every write through it is refused (`LogStore.for_reading`)."""
    return LogStore.for_reading(resolve_db(db_path))

"""Pieces every command module shares: error translation and the --db option."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from evolve.store import LogStore, StoreError
from scoring.errors import UserError

DEFAULT_DB = Path("runs") / "evolve.db"  # runs/ is the project's place for run databases
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for a Ctrl-C
INTERRUPTED_MESSAGE = (
    "Interrupted: everything written before Ctrl-C is kept "
    "(`evolve runs` lists runs; `evolve resume ID` continues one)."
)


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

    UserError (bad input) becomes a usage error, exit code 2. A database that is locked or
    corrupt becomes a ClickException (exit 1) with the sqlite message. A Ctrl-C that no
    command handled itself (one during model loading, or a second one while a run records
    its interruption) exits 130 with one line instead of click's "Aborted!" and exit 1:
    every store write is one transaction, so what was committed before it is kept.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.UsageError(str(exc).splitlines()[0] if str(exc) else "bad input") from exc
        except sqlite3.DatabaseError as exc:
            raise click.ClickException(f"database error: {exc}") from exc
        except KeyboardInterrupt:
            click.echo(f"\n{INTERRUPTED_MESSAGE}", err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT) from None


def unescape(text: str) -> str:
    r"""Let `--prompt "a\nb"` mean a newline (and \t a tab), as users type it in a shell."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def open_existing(db_path: Path | None) -> LogStore:
    """The store at --db, migrated; a missing file is an error, not a new empty database."""
    path = resolve_db(db_path)
    if not path.exists():
        raise StoreError(f"no database at {path}; `evolve run` creates one")
    return LogStore(path)

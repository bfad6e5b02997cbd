"""`evolve sql` (read-only SQL on the run database) and `evolve db` (its path, a backup).

`evolve sql` opens the file read-only (`evolve.store.sql`), so no statement it is given can
change it; rows are printed as they come, a table in blocks or a JSON array, within a time
limit and a row limit. `evolve db backup` copies the database safely while runs write it.

Registered with the store's commands (`cli.store_cmds.COMMANDS`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.common import COUNT, db_option, resolve_db
from cli.files import decode_text, read_file_bytes, read_stdin_bytes
from cli.process import interrupted_exit, interruption, whole_process
from cli.tables import NULL, format_cell, format_table
from evolve.store import LogStore, StoreError
from evolve.store.access import backup_database
from evolve.store.sql import limit_heap
from scoring.errors import UserError


def _json_value(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else str(value)


def _read_query(query: str | None, query_file: str | None) -> str:
    """The SQL from the argument or from --file (`-`: standard input), as text."""
    if (query is None) == (query_file is None):
        raise UserError(
            "give the query as an argument or with --file PATH (- for standard input), not both"
            if query is not None
            else "no query: give it as an argument or with --file PATH (- for standard input)"
        )
    if query is not None:
        return query
    assert query_file is not None
    name = "standard input" if query_file == "-" else query_file
    data = read_stdin_bytes() if query_file == "-" else read_file_bytes(Path(query_file))
    text = decode_text(data, name)
    if not text.strip():
        raise UserError(f"{name} holds no query")
    return text


class _Output:
    """Rows printed as they come: a table in blocks, or a JSON array one object a line.

    A table's column widths come from its first block (all rows, when there are fewer than
    SQL_BLOCK and they hold less than SQL_BLOCK_BYTES of text), so a short result looks as
    every other table; later rows are padded to those widths (a longer cell widens its own
    line only). NULL is shown as NULL, the empty string as nothing. Output is flushed at
    least every SQL_FLUSH_S seconds, so rows show while a slow query still runs.
    """

    def __init__(self, columns: list[str], as_json: bool) -> None:
        self.columns, self.as_json = columns, as_json
        self.block: list[tuple] = []
        self.block_bytes = 0  # text and blob bytes held in `block`
        self.widths: list[int] | None = None
        self.numeric: list[bool] = []
        self.count = 0
        self.flushed = 0.0

    def add(self, row: tuple) -> None:
        self.count += 1
        if self.as_json:
            record = json.dumps(
                dict(zip(self.columns, row, strict=True)), ensure_ascii=False, default=_json_value
            )
            click.echo(("[\n  " if self.count == 1 else ",\n  ") + record, nl=False)
        else:
            self.block.append(row)
            self.block_bytes += sum(len(v) for v in row if isinstance(v, str | bytes))
            if len(self.block) >= SQL_BLOCK or self.block_bytes >= SQL_BLOCK_BYTES:
                self._print_block()
        if time.monotonic() - self.flushed > SQL_FLUSH_S:
            self._print_block()
            sys.stdout.flush()
            self.flushed = time.monotonic()

    def _print_block(self) -> None:
        if self.as_json or not self.block:
            return
        if self.widths is None:
            text = format_table(self.columns, self.block, null=NULL)
            self.widths = [
                max(
                    [
                        len(format_cell(h)),
                        *(len(format_cell(row[i], null=NULL)) for row in self.block),
                    ]
                )
                for i, h in enumerate(self.columns)
            ]
            self.numeric = [
                all(row[i] is None or _is_number(row[i]) for row in self.block)
                for i in range(len(self.columns))
            ]
            click.echo(text)
        else:
            for row in self.block:
                cells = [format_cell(v, null=NULL) for v in row]
                parts = [
                    c.rjust(w) if self.numeric[i] or _is_number(row[i]) else c.ljust(w)
                    for i, (c, w) in enumerate(zip(cells, self.widths, strict=False))
                ]
                click.echo("  ".join(parts).rstrip())
        self.block = []
        self.block_bytes = 0

    def close(self) -> None:
        """Print what is left (also after an error or Ctrl-C: those rows are real)."""
        if self.as_json:
            click.echo("[]" if self.count == 0 else "\n]")
        elif self.columns:
            if self.widths is None and not self.block:
                click.echo(format_table(self.columns, [], null=NULL))
            self._print_block()
        sys.stdout.flush()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


SQL_TIMEOUT_S = 30.0  # long enough for any query on a large run database; an endless one ends
SQL_MAX_ROWS = 10_000  # more than a terminal shows; --max-rows 0 (or --json to a file) for all
SQL_BLOCK = 1_000  # table rows held to measure column widths before the first is printed
SQL_BLOCK_BYTES = 16 * 2**20  # ... unless their text reaches this: held rows stay bounded
SQL_FLUSH_S = 0.2  # how stale printed rows may get while a slow query runs


@click.command()
@click.argument("query", required=False)
@click.option(
    "-f",
    "--file",
    "query_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    default=None,
    help="Read the query from this file ('-': standard input) instead of QUERY.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print rows as a JSON list of objects, one a line."
)
@click.option(
    "-p",
    "--param",
    "params",
    type=(str, str),
    multiple=True,
    metavar="NAME VALUE",
    help="Bind :NAME in the query to VALUE (repeatable).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=SQL_TIMEOUT_S,
    show_default=True,
    help="Stop the query after this many seconds (0: no limit); a stopped query exits 2.",
)
@click.option(
    "--max-rows",
    type=COUNT,
    default=SQL_MAX_ROWS,
    show_default=True,
    help="Print at most this many rows (0: all); a line on stderr says when rows were cut.",
)
@db_option
def sql(
    query: str | None,
    query_file: str | None,
    as_json: bool,
    params: tuple[tuple[str, str], ...],
    timeout: float,
    max_rows: int,
    db_path: Path | None,
) -> None:
    """Run a read-only SQL query, e.g. evolve sql "SELECT * FROM edits LIMIT 5".

    Tables: runs, individuals, parents, texts, generations, scores, baselines, experiments,
    experiment_rows. Views: individual_texts, lineage, edits. Writes are refused. Rows are
    printed as they come; Ctrl-C stops the query within a second. NULL prints as NULL. A
    value may be at most 16 MiB, and SQLite at most 256 MiB of memory.
    """
    if math.isnan(timeout):
        raise UserError("--timeout must be a number of seconds (0: no limit), not nan")
    text = _read_query(query, query_file)
    params_ = dict(params) if params else {}
    if whole_process():  # this process only runs the query: cap SQLite's memory for it
        limit_heap()
    out: _Output | None = None
    cut = False
    try:
        with (
            LogStore(resolve_db(db_path), readonly=True) as store,
            store.stream(text, params_, timeout or None) as (columns, rows),
        ):
            out = _Output(columns, as_json)
            for row in rows:
                if max_rows and out.count >= max_rows:
                    cut = True
                    break
                out.add(row)
    except KeyboardInterrupt:
        if out is not None:
            out.close()
        n = out.count if out is not None else 0
        click.echo(
            f"{interruption()}: the query was stopped after {n:,} row{'' if n == 1 else 's'}; "
            "it changed nothing.",
            err=True,
        )
        raise click.exceptions.Exit(interrupted_exit()) from None
    except StoreError:
        if out is not None:  # the time limit: the rows printed before it stand
            out.close()
        raise
    assert out is not None
    out.close()
    if cut:
        click.echo(
            f"(output cut at {max_rows:,} rows: the query has more; --max-rows 0 prints all)",
            err=True,
        )


@click.group()
def db() -> None:
    """About the run database itself."""


@db.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"path", "exists"} as JSON.')
@db_option
def path(as_json: bool, db_path: Path | None) -> None:
    """Print the database path that --db / MLM_EVOLVE_DB / the default resolves to."""
    resolved = resolve_db(db_path).resolve()
    if as_json:
        click.echo(json.dumps({"path": str(resolved), "exists": resolved.exists()}))
    else:
        click.echo(str(resolved))


@db.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@db_option
def backup(dest: Path, force: bool, db_path: Path | None) -> None:
    """Copy the database to DEST as one whole file, safely while runs write it.

    The copy holds everything committed before it began (SQLite's online backup), is checked
    with integrity_check and needs no -wal file. A plain `cp` of a database in use may miss
    the newest generation; this does not.
    """
    done = backup_database(resolve_db(db_path), dest, force=force)
    click.echo(
        f"Backed up {resolve_db(db_path)} to {done.dest}: {done.runs} runs, "
        f"{done.generations} generations, {done.bytes / 1e6:.1f} MB in {done.seconds:.1f} s."
    )

"""`evolve export RUN`: a run's rows as JSON lines or CSV, streamed to stdout or a file.

What is exported (`--what`): `individuals` (every individual of every generation, with its
parents, its island (empty in a run without islands) and model scores), `generations` (statistics per generation), `edits` (the `edits`
view: each child with its operator, span, parents and fitness gain) or `baselines` (the
causal LM's own decodings of the run's prompt). Rows are read from the store in chunks and
written as they come, so a large run is never held in memory. JSON lines keep nested values
(lists, score mappings); CSV flattens them: parents as space-separated ids, each scorer's
total and mean as the columns ``<scorer>`` and ``<scorer>/mean``, other nested values as JSON.

`--out FILE` is written whole or not at all (a temporary file renamed into place), and an
existing FILE is replaced only with `--force`, as `evolve db backup` does.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from cli.common import ID, db_option, open_for_reading, resolve_db
from evolve.store import LogStore
from scoring.errors import UserError

WHAT = ("individuals", "generations", "edits", "baselines")
COLUMNS = {
    "individuals": [
        "id", "generation", "position", "text", "fitness", "op", "span_start", "span_end",
        "parents", "n_tokens", "pareto_rank", "island", "objectives", "detail",
    ],
    "generations": [
        "generation", "best", "mean", "std", "worst", "n_evaluated", "n_cache_hits", "n_unique",
        "best_individual_id", "seconds", "created_at",
    ],
    "edits": [
        "child_id", "generation", "op", "span_start", "span_end", "parents", "child_fitness",
        "best_parent_fitness", "gain", "n_parents",
    ],
    "baselines": ["id", "run_id", "method", "model", "seed", "text", "params", "created_at"],
}  # fmt: skip


def _rows(store: LogStore, run_id: int, what: str) -> Iterator[dict[str, Any]]:
    if what == "individuals":
        for row in store.iter_individuals(run_id):
            row.pop("token_ids", None)  # the model's token ids: large, and text says it
            yield row
    elif what == "generations":
        yield from store.generation_stats(run_id)
    elif what == "edits":
        for row in store.iter_edits(run_id):
            row.pop("run_id", None)
            yield row
    else:
        prompt = store.run(run_id)["prompt"]
        for row in store.baselines(prompt=prompt):
            row.pop("prompt", None)
            yield row


def _cell(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return " ".join(str(v) for v in value)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_csv(
    rows: Iterable[dict[str, Any]], columns: list[str], scorers: list[str], out: IO[str]
) -> int:
    """Rows as CSV with a header; scores (individuals) as one total and one mean column per
    scorer. Returns the number of rows."""
    header = [*columns, *(c for name in scorers for c in (name, f"{name}/mean"))]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    n = 0
    for row in rows:
        scores = row.get("scores") or {}
        cells = [_cell(row.get(c)) for c in columns]
        for name in scorers:
            s = scores.get(name) or {}
            cells += [s.get("total"), s.get("mean")]
        writer.writerow(cells)
        n += 1
    return n


def write_jsonl(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def check_destination(path: Path, force: bool, database: Path) -> None:
    """UserError (one line) unless `path` may be written: not a folder, not the database
    (under any name), not an existing file unless `force`, in a folder that exists."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the path of the file to write")
    own = (database, database.with_name(database.name + "-wal"))
    if any(_same_file(path, name) for name in own):
        raise UserError(f"{path} is the database itself; give another path")
    if path.exists() and not force:
        raise UserError(f"{path} exists; use --force to replace it")
    if not path.absolute().parent.is_dir():
        raise UserError(f"cannot write {path}: no folder {path.absolute().parent}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """Standard output, or a whole file at `path`: the rows go to a temporary file in the
    same folder, which is synced and renamed over `path` only once every row is written.
    A full disk, a Ctrl-C or any error leaves `path` as it was (or absent) and no
    temporary file behind, as `evolve db backup` does."""
    if path is None:
        yield sys.stdout
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as `open` gives
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with open(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = "is unchanged" if path.exists() else "was not written"
        raise UserError(f"cannot write {path}: {exc.strerror}; {path} {kept}") from exc
    finally:
        tmp.unlink(missing_ok=True)


@click.command()
@click.argument("run_id", type=ID)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("jsonl", "csv")),
    default="jsonl",
    show_default=True,
    help="JSON lines (nested values kept) or CSV (flattened).",
)
@click.option(
    "--what",
    type=click.Choice(WHAT),
    default="individuals",
    show_default=True,
    help="Which rows: every individual, statistics per generation, edits, or baselines.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of stdout (whole or not at all).",
)
@click.option("--force", is_flag=True, help="Replace the --out file if it exists.")
@db_option
def export(
    run_id: int, fmt: str, what: str, out: Path | None, force: bool, db_path: Path | None
) -> None:
    """Export a run's individuals, generations, edits or baselines as JSON lines or CSV."""
    if out is not None:
        check_destination(out, force, resolve_db(db_path))
    with open_for_reading(db_path) as store:
        store.run(run_id)  # an unknown run is one line, before any output file is made
        scorers = store.run_scorers(run_id) if what == "individuals" else []
        with _output(out) as handle:
            rows = _rows(store, run_id, what)
            if fmt == "csv":
                n = write_csv(rows, COLUMNS[what], scorers, handle)
            else:
                n = write_jsonl(rows, handle)
    if out is not None:
        click.echo(f"{n} {what} of run {run_id} written to {out}", err=True)
    sys.stdout.flush()


COMMANDS: list[click.Command] = [export]

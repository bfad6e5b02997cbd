"""`evolve tag`, `evolve note` and `evolve rename`: the labels that tell runs apart.

A run's name, tags and note (migration 6) are set by `evolve run --name/--tag/--note` and
changed here later; `evolve runs --tag/--name` filters on them.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import ID, db_option, existing_db
from cli.tables import visible
from evolve.store import LogStore


@click.command()
@click.argument("run_id", type=ID)
@click.argument("tags", nargs=-1)
@click.option("--remove", "removed", multiple=True, help="Take this tag off (repeatable).")
@db_option
def tag(run_id: int, tags: tuple[str, ...], removed: tuple[str, ...], db_path: Path | None) -> None:
    """Add TAGS to run RUN_ID (and take --remove ones off); prints the run's tags."""
    for t in (*tags, *removed):
        if not t.strip():
            raise click.UsageError("a tag is empty")
    with LogStore(existing_db(db_path)) as store:  # writes; never creates a database
        now = store.run(run_id)["tags"]
        if tags or removed:
            kept = [t for t in [*now, *tags] if t not in removed]
            now = store.set_labels(run_id, tags=kept)["tags"]
    click.echo(f"run {run_id} tags: {visible(', '.join(now)) if now else '(none)'}")


@click.command()
@click.argument("run_id", type=ID)
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Remove the note.")
@db_option
def note(run_id: int, text: str | None, clear: bool, db_path: Path | None) -> None:
    """Set the note of run RUN_ID to TEXT (without TEXT: print it)."""
    if clear and text is not None:
        raise click.UsageError("give a TEXT or --clear, not both")
    with LogStore(existing_db(db_path)) as store:  # writes; never creates a database
        if clear or text is not None:
            value = store.set_labels(run_id, note=None if clear else text)["note"]
        else:
            value = store.run(run_id)["note"]
    # A note may span lines: it is printed so, with other control characters made visible.
    shown = visible(value, tab="\t", newline="\n") if value is not None else "(none)"
    click.echo(f"run {run_id} note: {shown}")


@click.command()
@click.argument("run_id", type=ID)
@click.argument("name")
@db_option
def rename(run_id: int, name: str, db_path: Path | None) -> None:
    """Give run RUN_ID the name NAME ("" removes it)."""
    with LogStore(existing_db(db_path)) as store:  # writes; never creates a database
        value = store.set_labels(run_id, name=name or None)["name"]
    click.echo(f"run {run_id} name: {visible(value) if value else '(none)'}")


COMMANDS: list[click.Command] = [tag, note, rename]

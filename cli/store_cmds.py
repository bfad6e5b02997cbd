"""Commands that read the run database: runs, show, lineage, sql and db path.

They only format what `evolve.store.LogStore` returns. Reading commands refuse a missing
database instead of creating an empty one; `evolve sql` opens the file read-only, so no
statement it is given can change the file. A run stored as 'running' whose process is gone
(kill -9, a crash, power loss) is shown as 'dead', with how to resume it. A run whose stored
config this version cannot read (written by a newer version, or edited) is listed with a
marker and the reason, and the other runs as usual.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.common import COUNT, ID, db_option, open_existing, resolve_db
from cli.tables import format_cell, format_table
from evolve.ga.config import RunConfig
from evolve.store import LogStore, run_process_state
from scoring.errors import UserError

PROMPT_WIDTH = 40  # runs table: enough of the prompt to recognise it
UNUSABLE = "!"  # marks the status of a run whose stored config this version cannot use


def _span(start: int | None, end: int | None) -> str:
    return "" if start is None else f"{start}:{end}"


def _when(stamp: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    return "" if not stamp else stamp[:19].replace("T", " ")


def config_problem(config: Any) -> str | None:
    """Why this version cannot use a stored run config, or None if it can. An empty config
    (runs from before configs were stored) is no problem: there is nothing to read. Machine
    checks (device, memory) are left out: they are `evolve resume`'s business."""
    if config in ({}, None):
        return None
    try:
        RunConfig.from_dict(config).validate(here=False)
    except (UserError, TypeError, ValueError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config dicts as dotted keys, e.g. ('mutation.top_k', 20)."""
    if not isinstance(config, dict):
        return [(prefix.rstrip(".") or "(not a mapping)", config)]
    items: list[tuple[str, Any]] = []
    for key, value in config.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _escape(text: str) -> str:
    return text.replace("\n", "\\n")


def _status(run: dict[str, Any]) -> str:
    """The stored status, except that a 'running' run whose process is gone reads 'dead'."""
    return "dead" if run_process_state(run) == "dead" else run["status"]


def _dead_note(run: dict[str, Any]) -> str:
    return (
        f"run {run['id']} was running in process {run['pid']} on {run['host']}, which has "
        f"ended without finishing it (killed or crashed); `evolve resume {run['id']}` "
        "continues it from its last completed generation"
    )


@click.command()
@db_option
def runs(db_path: Path | None) -> None:
    """List the runs in the database, newest first."""
    with open_existing(db_path) as store:
        rows = store.runs()
        if not rows:
            click.echo(f"No runs in {store.path}.")
            return
        problems = {r["id"]: p for r in rows if (p := config_problem(r["config"])) is not None}
        click.echo(
            format_table(
                ["id", "created", "status", "prompt", "gens", "best"],
                [
                    [
                        r["id"],
                        _when(r["created_at"]),
                        _status(r) + (UNUSABLE if r["id"] in problems else ""),
                        r["prompt"],
                        r["n_generations"],
                        r["best_fitness"],
                    ]
                    for r in rows
                ],
                widths={"prompt": PROMPT_WIDTH},
            )
        )
        dead = [r["id"] for r in rows if _status(r) == "dead"]
        if dead:
            ids = ", ".join(str(i) for i in dead)
            click.echo(
                f"\ndead: the process running it has ended without finishing it (killed or "
                f"crashed); `evolve resume ID` continues it. Dead runs: {ids}."
            )
        for run_id, problem in problems.items():
            click.echo(
                f"\n{UNUSABLE} run {run_id}: its stored config is not valid for this version "
                f"({problem}); `evolve show {run_id}` prints it, `evolve resume` cannot use it."
            )


@click.command()
@click.argument("run_id", type=ID)
@click.option(
    "-n",
    "n_best",
    type=COUNT,
    default=5,
    show_default=True,
    help="How many of the best distinct texts to list.",
)
@db_option
def show(run_id: int, n_best: int, db_path: Path | None) -> None:
    """A run: its settings, best texts and statistics per generation."""
    with open_existing(db_path) as store:
        run = store.run(run_id)
        click.echo(
            f"Run {run['id']}: {_status(run)}, created {_when(run['created_at'])}"
            + (f", ended {_when(run['finished_at'])}" if run["finished_at"] else "")
        )
        if _status(run) == "dead":
            click.echo(f"note:     {_dead_note(run)}")
        click.echo(f"prompt:   {_escape(run['prompt'])}")
        click.echo(
            f"models:   mlm {run['mlm']}, causal {run['causal'] or '-'}; fitness {run['fitness']}"
        )
        click.echo(
            f"seed:     {run['seed']}; generations done {run['generations_done']}; "
            f"best individual {run['best_individual_id'] or '-'}"
        )
        if run["error"]:
            click.echo(f"error:    {run['error']}")
        problem = config_problem(run["config"])
        if problem:
            click.echo(f"note:     its stored config is not valid for this version ({problem})")
        if run["config"]:
            click.echo("config:")
            for key, value in _flatten(run["config"]):
                click.echo(f"  {key} = {json.dumps(value, ensure_ascii=False)}")
        best = store.best(run_id, n_best)
        if best:
            click.echo("\nBest texts")
            click.echo(
                format_table(
                    ["id", "gen", "fitness", "continuation"],
                    [[b["id"], b["generation"], b["fitness"], b["text"]] for b in best],
                )
            )
        front = store.pareto_front(run_id)
        if front:
            click.echo(f"\nPareto front (generation {front[0]['generation']}, nsga2)")
            click.echo(
                format_table(
                    ["id", "pll", "causal", "diversity", "continuation"],
                    [[f["id"], *f["objectives"][:3], f["text"]] for f in front],
                )
            )
        stats = store.generation_stats(run_id)
        if stats:
            click.echo("\nGenerations")
            click.echo(
                format_table(
                    ["gen", "best", "mean", "std", "worst", "evaluated", "cached", "unique", "s"],
                    [
                        [
                            s["generation"],
                            s["best"],
                            s["mean"],
                            s["std"],
                            s["worst"],
                            s["n_evaluated"],
                            s["n_cache_hits"],
                            s["n_unique"],
                            s["seconds"],
                        ]
                        for s in stats
                    ],
                )
            )
        else:
            click.echo("\nNo generation written yet.")


@click.command()
@click.argument("individual_id", type=ID)
@click.option(
    "--max-depth",
    type=COUNT,
    default=None,
    help="Stop this many generations back (default: back to the first).",
)
@db_option
def lineage(individual_id: int, max_depth: int | None, db_path: Path | None) -> None:
    """The ancestry of an individual: every edit that led to it, nearest first."""
    with open_existing(db_path) as store:
        me = store.individual(individual_id)
        click.echo(
            f"Individual {me['id']}: run {me['run_id']}, generation {me['generation']}, "
            f"op {me['op']}, fitness {format_cell(me['fitness']) or '-'}"
        )
        click.echo(_escape(me["full_text"]))
        rows = store.lineage(individual_id, max_depth=max_depth)
        click.echo()
        click.echo(
            format_table(
                ["depth", "gen", "id", "op", "span", "fitness", "parents", "text"],
                [
                    [
                        a["depth"],
                        a["generation"],
                        a["id"],
                        a["op"],
                        _span(a["span_start"], a["span_end"]),
                        a["fitness"],
                        ",".join(str(p) for p in a["parents"]),
                        a["text"],
                    ]
                    for a in rows
                ],
            )
        )


def _json_value(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else str(value)


@click.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="Print rows as a JSON list of objects.")
@click.option(
    "-p",
    "--param",
    "params",
    type=(str, str),
    multiple=True,
    metavar="NAME VALUE",
    help="Bind :NAME in the query to VALUE (repeatable).",
)
@db_option
def sql(
    query: str, as_json: bool, params: tuple[tuple[str, str], ...], db_path: Path | None
) -> None:
    """Run a read-only SQL query, e.g. evolve sql "SELECT * FROM edits LIMIT 5".

    Tables: runs, individuals, parents, texts, generations, scores, baselines, experiments,
    experiment_rows. Views: individual_texts, lineage, edits. Writes are refused.
    """
    with LogStore(resolve_db(db_path), readonly=True) as store:
        columns, rows = store.query(query, dict(params) if params else ())
    if as_json:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        click.echo(json.dumps(records, indent=2, ensure_ascii=False, default=_json_value))
    elif columns:
        click.echo(format_table(columns, rows))


@click.group()
def db() -> None:
    """About the run database itself."""


@db.command()
@db_option
def path(db_path: Path | None) -> None:
    """Print the database path that --db / MLM_EVOLVE_DB / the default resolves to."""
    click.echo(str(resolve_db(db_path).resolve()))


COMMANDS: list[click.Command] = [runs, show, lineage, sql, db]

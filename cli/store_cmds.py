"""Commands that read the run database: runs and show (here), lineage, sql and db.

`runs`, `show` and `lineage` print tables, or with `--json` JSON whose keys README lists
(kept stable: scripts read them). `lineage` lives in `cli.lineage_cmds`, `sql` and `db` in
`cli.sql_cmds`; `COMMANDS` here registers all five, and their names stay importable from
here.

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

from cli.common import COUNT, ID, db_option, open_for_reading
from cli.lineage_cmds import diff_text as diff_text
from cli.lineage_cmds import lineage
from cli.lineage_cmds import lineage_records as lineage_records
from cli.sql_cmds import SQL_BLOCK as SQL_BLOCK
from cli.sql_cmds import SQL_BLOCK_BYTES as SQL_BLOCK_BYTES
from cli.sql_cmds import SQL_FLUSH_S as SQL_FLUSH_S
from cli.sql_cmds import SQL_MAX_ROWS as SQL_MAX_ROWS
from cli.sql_cmds import SQL_TIMEOUT_S as SQL_TIMEOUT_S
from cli.sql_cmds import _Output as _Output
from cli.sql_cmds import db, sql
from cli.tables import echo_json as _echo_json
from cli.tables import escape as _escape
from cli.tables import format_table, visible
from evolve.ga.config import RunConfig
from evolve.ga.pareto import OBJECTIVES
from evolve.store import config_items, shown_status
from scoring.errors import UserError

PROMPT_WIDTH = 40  # runs table: enough of the prompt to recognise it
NAME_WIDTH = 24  # runs table: names and tags are short labels
UNUSABLE = "!"  # marks the status of a run whose stored config this version cannot use


def _when(stamp: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    return "" if not stamp else visible(str(stamp)[:19].replace("T", " "))


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


def _dead_note(run: dict[str, Any]) -> str:
    return (
        f"run {run['id']} was running in process {_escape(run['pid'])} on "
        f"{_escape(run['host'])}, which has ended without finishing it (killed or crashed); "
        f"`evolve resume {run['id']}` continues it from its last completed generation"
    )


RUN_STATUS_CHOICES = ("running", "finished", "interrupted", "failed", "dead")


def fitness_unit(config: Any) -> str:
    """The unit of a run's fitness values, from its config: nats per token (normalise mean)
    or nats (total); weighted for the sum of two models (and nsga2's reported scalar)."""
    fitness = config.get("fitness") if isinstance(config, dict) else None
    if not isinstance(fitness, dict):
        return ""
    unit = "nats" if fitness.get("normalise") == "total" else "nats/token"
    return f"weighted {unit}" if fitness.get("objective") in ("sum", "nsga2") else unit


def _fitness_kind(run: dict[str, Any]) -> str:
    config = run["config"] if isinstance(run["config"], dict) else {}
    objective = (config.get("fitness") or {}).get("objective") if config else None
    return str(objective) if objective else str(run["fitness"] or "")


def _proposer(run: dict[str, Any]) -> str:
    config = run["config"] if isinstance(run["config"], dict) else {}
    return str(config.get("proposer", "")) if config else ""


def _duration(seconds: float | None) -> str:
    """Seconds as 42s, 3m05s or 2h07m."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run_record(run: dict[str, Any]) -> dict[str, Any]:
    """A run as `evolve runs --json` prints it (keys documented in README)."""
    return {
        "id": run["id"],
        "name": run.get("name"),
        "tags": list(run.get("tags") or []),
        "note": run.get("note"),
        "status": shown_status(run),
        "created_at": run["created_at"],
        "finished_at": run["finished_at"],
        "prompt": run["prompt"],
        "proposer": _proposer(run) or None,
        "fitness": _fitness_kind(run) or None,
        "fitness_label": run["fitness"],
        "fitness_unit": fitness_unit(run["config"]) or None,
        "best": run.get("best_fitness"),
        "generations": run["generations_done"],
        "seconds": run.get("total_seconds"),
        "mlm": run["mlm"],
        "causal": run["causal"],
        "seed": run["seed"],
    }


@click.command()
@click.option("--tag", "tags", multiple=True, help="Only runs with this tag (repeatable: all).")
@click.option("--name", help="Only runs whose name contains this (any case).")
@click.option(
    "--status",
    "statuses",
    type=click.Choice(RUN_STATUS_CHOICES),
    multiple=True,
    help="Only runs with this status (repeatable: any).",
)
@click.option("--limit", type=COUNT, default=None, help="At most this many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (keys in README).")
@db_option
def runs(
    tags: tuple[str, ...],
    name: str | None,
    statuses: tuple[str, ...],
    limit: int | None,
    as_json: bool,
    db_path: Path | None,
) -> None:
    """List the runs in the database, newest first."""
    with open_for_reading(db_path) as store:
        # 'dead' is a stored 'running' whose process is gone: filtered after reading.
        stored = tuple({"dead": "running"}.get(s, s) for s in statuses)
        filters: dict[str, Any] = {"tags": tags, "name": name, "statuses": stored}
        rows = store.runs(**{k: v for k, v in filters.items() if v})
        if statuses:
            rows = [r for r in rows if shown_status(r) in statuses]
        if limit is not None:
            rows = rows[:limit]
        if as_json:
            _echo_json([run_record(r) for r in rows])
            return
        if not rows:
            filtered = tags or name is not None or statuses
            click.echo(f"No runs{' match' if filtered else ''} in {store.path}.")
            return
        problems = {r["id"]: p for r in rows if (p := config_problem(r["config"])) is not None}
        click.echo(
            format_table(
                [
                    "id",
                    "name",
                    "tags",
                    "status",
                    "proposer",
                    "fitness",
                    "best",
                    "gens",
                    "time",
                    "prompt",
                ],
                [
                    [
                        r["id"],
                        r.get("name") or "",
                        ",".join(r.get("tags") or []),
                        shown_status(r) + (UNUSABLE if r["id"] in problems else ""),
                        _proposer(r),
                        " ".join(filter(None, [_fitness_kind(r), _unit_short(r["config"])])),
                        r["best_fitness"],
                        r["generations_done"],
                        _duration(r.get("total_seconds")),
                        r["prompt"],
                    ]
                    for r in rows
                ],
                widths={"prompt": PROMPT_WIDTH, "name": NAME_WIDTH, "tags": NAME_WIDTH},
            )
        )
        dead = [r["id"] for r in rows if shown_status(r) == "dead"]
        if dead:
            ids = ", ".join(str(i) for i in dead)
            click.echo(
                f"\ndead: the process running it has ended without finishing it (killed or "
                f"crashed); `evolve resume ID` continues it. Dead runs: {ids}."
            )
        for run_id, problem in problems.items():
            click.echo(
                f"\n{UNUSABLE} run {run_id}: its stored config is not valid for this version "
                f"({_escape(problem)}); `evolve show {run_id}` prints it, `evolve resume` cannot "
                "use it."
            )


def _unit_short(config: Any) -> str:
    unit = fitness_unit(config)
    return f"({unit})" if unit else ""


def _generation_records(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "generation": s["generation"],
            "best": s["best"],
            "mean": s["mean"],
            "std": s["std"],
            "worst": s["worst"],
            "evaluated": s["n_evaluated"],
            "cache_hits": s["n_cache_hits"],
            "unique": s["n_unique"],
            "best_individual_id": s["best_individual_id"],
            "seconds": s["seconds"],
        }
        for s in stats
    ]


def _text_record(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "generation": row["generation"],
        "fitness": row["fitness"],
        "text": row["text"],
        "scores": row.get("scores") or {},
    }
    if "objectives" in row:
        out["objectives"] = row["objectives"]
    return out


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys in README).")
@db_option
def show(run_id: int, n_best: int, as_json: bool, db_path: Path | None) -> None:
    """A run: its settings, best texts and statistics per generation."""
    with open_for_reading(db_path) as store:
        run = store.run(run_id)
        best = store.best(run_id, n_best)
        front = store.pareto_front(run_id)
        stats = store.generation_stats(run_id)
        if as_json:
            totals = sum(s["seconds"] or 0.0 for s in stats) if stats else None
            record = run_record(
                {
                    **run,
                    "best_fitness": max((s["best"] for s in stats), default=None),
                    "total_seconds": totals,
                }
            )
            _echo_json(
                {
                    "run": {
                        **record,
                        "best_individual_id": run["best_individual_id"],
                        "error": run["error"],
                        "config": run["config"],
                        "config_problem": config_problem(run["config"]),
                        "versions": run["versions"],
                    },
                    "best": [_text_record(b) for b in best],
                    "pareto_front": [_text_record(f) for f in front],
                    "generations": _generation_records(stats),
                }
            )
            return
        click.echo(
            f"Run {run['id']}: {_escape(shown_status(run))}, created {_when(run['created_at'])}"
            + (f", ended {_when(run['finished_at'])}" if run["finished_at"] else "")
        )
        if run.get("name"):
            click.echo(f"name:     {_escape(run['name'])}")
        if run.get("tags"):
            click.echo(f"tags:     {_escape(', '.join(run['tags']))}")
        if run.get("note"):
            click.echo(f"note:     {_escape(run['note'])}")
        if shown_status(run) == "dead":
            click.echo(f"note:     {_dead_note(run)}")
        click.echo(f"prompt:   {_escape(run['prompt'])}")
        unit = fitness_unit(run["config"])
        click.echo(
            f"models:   mlm {_escape(run['mlm'])}, causal {_escape(run['causal'] or '-')}; "
            f"fitness {_escape(run['fitness'])}" + (f" ({unit})" if unit else "")
        )
        click.echo(
            f"seed:     {_escape(run['seed'])}; generations done "
            f"{_escape(run['generations_done'])}; "
            f"best individual {_escape(run['best_individual_id'] or '-')}"
        )
        if run["error"]:
            click.echo(f"error:    {_escape(run['error'])}")
        problem = config_problem(run["config"])
        if problem:
            click.echo(
                f"note:     its stored config is not valid for this version ({_escape(problem)})"
            )
        if run["config"]:
            click.echo("config:")
            for key, value in config_items(run["config"]):
                click.echo(f"  {_escape(key)} = {_escape(json.dumps(value, ensure_ascii=False))}")
        if best:
            click.echo("\nBest texts")
            click.echo(
                format_table(
                    ["id", "gen", "fitness", "continuation"],
                    [[b["id"], b["generation"], b["fitness"], b["text"]] for b in best],
                )
            )
        if front:
            click.echo(f"\nPareto front (generation {front[0]['generation']}, nsga2)")
            width = max(len(f["objectives"]) for f in front)
            names = OBJECTIVES.get(width) or [f"objective {k + 1}" for k in range(width)]
            click.echo(
                format_table(
                    ["id", *names, "continuation"],
                    [
                        [f["id"], *f["objectives"], *[None] * (width - len(f["objectives"]))]
                        + [f["text"]]
                        for f in front
                    ],
                )
            )
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


# lineage, sql and db are registered with the store's commands, as before the split
COMMANDS: list[click.Command] = [runs, show, lineage, sql, db]

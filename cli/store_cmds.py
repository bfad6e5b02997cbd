"""Commands that read the run database: runs, show, lineage, sql and db path.

`runs`, `show` and `lineage` print tables, or with `--json` JSON whose keys README lists
(kept stable: scripts read them).

They only format what `evolve.store.LogStore` returns. Reading commands refuse a missing
database instead of creating an empty one; `evolve sql` opens the file read-only, so no
statement it is given can change the file. A run stored as 'running' whose process is gone
(kill -9, a crash, power loss) is shown as 'dead', with how to resume it. A run whose stored
config this version cannot read (written by a newer version, or edited) is listed with a
marker and the reason, and the other runs as usual.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.common import COUNT, ID, db_option, open_for_reading, resolve_db
from cli.files import decode_text, read_file_bytes, read_stdin_bytes
from cli.process import interrupted_exit, interruption, whole_process
from cli.tables import NULL, format_cell, format_table, visible
from evolve.experiments.worddiff import Piece, edit_pieces
from evolve.ga.config import RunConfig
from evolve.store import LogStore, StoreError, run_process_state
from evolve.store.access import backup_database
from evolve.store.sql import limit_heap
from scoring.errors import UserError

PROMPT_WIDTH = 40  # runs table: enough of the prompt to recognise it
NAME_WIDTH = 24  # runs table: names and tags are short labels
UNUSABLE = "!"  # marks the status of a run whose stored config this version cannot use


def _span(start: int | None, end: int | None) -> str:
    return "" if start is None else f"{start}:{end}"


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


def _escape(text: Any) -> str:
    """Stored text on one terminal line: line breaks and control characters made visible."""
    return visible(str(text))


def _status(run: dict[str, Any]) -> str:
    """The stored status, except that a 'running' run whose process is gone reads 'dead'."""
    return "dead" if run_process_state(run) == "dead" else run["status"]


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
        "status": _status(run),
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


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


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
            rows = [r for r in rows if _status(r) in statuses]
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
                        _status(r) + (UNUSABLE if r["id"] in problems else ""),
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
            f"Run {run['id']}: {_escape(_status(run))}, created {_when(run['created_at'])}"
            + (f", ended {_when(run['finished_at'])}" if run["finished_at"] else "")
        )
        if run.get("name"):
            click.echo(f"name:     {_escape(run['name'])}")
        if run.get("tags"):
            click.echo(f"tags:     {_escape(', '.join(run['tags']))}")
        if run.get("note"):
            click.echo(f"note:     {_escape(run['note'])}")
        if _status(run) == "dead":
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
            for key, value in _flatten(run["config"]):
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
            click.echo(
                format_table(
                    ["id", "pll", "causal", "diversity", "continuation"],
                    [[f["id"], *f["objectives"][:3], f["text"]] for f in front],
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


def lineage_records(store: LogStore, individual_id: int, max_depth: int | None) -> list[dict]:
    """The ancestry of an individual with, for every edit, the word-level diff of the child
    against its parents (`evolve.experiments.worddiff`): runs of pieces with their kind."""
    rows = store.lineage(individual_id, max_depth=max_depth)
    texts = {row["id"]: row["text"] for row in rows}
    out = []
    for row in rows:
        parents = row["parents"]
        for pid in parents:
            if pid not in texts:  # beyond --max-depth
                texts[pid] = store.individual(pid)["text"]
        pieces = edit_pieces(row["text"], [texts[p] for p in parents]) if parents else []
        out.append(
            {
                "depth": row["depth"],
                "id": row["id"],
                "run_id": row["run_id"],
                "generation": row["generation"],
                "position": row["position"],
                "op": row["op"],
                "span": None if row["span_start"] is None else [row["span_start"], row["span_end"]],
                "fitness": row["fitness"],
                "parents": parents,
                "text": row["text"],
                "diff": _runs_of(pieces),
                "scores": row.get("scores") or {},
            }
        )
    return out


def _runs_of(pieces: list[Piece]) -> list[dict[str, str]]:
    """Consecutive pieces of one kind joined: [{"kind", "text"}, ...]."""
    out: list[dict[str, str]] = []
    for piece in pieces:
        if out and out[-1]["kind"] == piece.kind:
            out[-1]["text"] += piece.text
        else:
            out.append({"kind": piece.kind, "text": piece.text})
    return out


def diff_text(diff: list[dict[str, str]], parents: list[int]) -> str:
    """A diff as one line, in git's word-diff style: [-deleted-] {+inserted+}, and for a
    crossover [#ID: words] for the words that came from parent ID."""
    out = []
    for part in diff:
        text, kind = part["text"], part["kind"]
        stripped = text.lstrip()
        space = text[: len(text) - len(stripped)]
        if kind == "same" or not stripped:
            out.append(text)
        elif kind == "insert":
            out.append(f"{space}{{+{stripped}+}}")
        elif kind == "delete":
            out.append(f"{space}[-{stripped}-]")
        else:
            out.append(f"{space}[#{parents[int(kind[-1])]}: {stripped}]")
    return _escape("".join(out))


@click.command()
@click.argument("individual_id", type=ID)
@click.option(
    "--max-depth",
    type=COUNT,
    default=None,
    help="Stop this many generations back (default: back to the first).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys in README).")
@db_option
def lineage(individual_id: int, max_depth: int | None, as_json: bool, db_path: Path | None) -> None:
    """The ancestry of an individual: every edit that led to it, nearest first, with the full
    texts and what each edit changed ([-deleted-] {+inserted+}, [#ID: from parent ID])."""
    with open_for_reading(db_path) as store:
        me = store.individual(individual_id)
        records = lineage_records(store, individual_id, max_depth)
        if as_json:
            _echo_json(
                {
                    "individual": {
                        "id": me["id"],
                        "run_id": me["run_id"],
                        "generation": me["generation"],
                        "op": me["op"],
                        "fitness": me["fitness"],
                        "text": me["text"],
                        "full_text": me["full_text"],
                    },
                    "lineage": records,
                }
            )
            return
        click.echo(
            f"Individual {me['id']}: run {_escape(me['run_id'])}, generation "
            f"{_escape(me['generation'])}, op {_escape(me['op'])}, "
            f"fitness {format_cell(me['fitness']) or '-'}"
        )
        click.echo(_escape(me["full_text"]))
        for a in records:
            span = "" if a["span"] is None else f" span {a['span'][0]}:{a['span'][1]}"
            parents = ",".join(str(p) for p in a["parents"]) or "-"
            click.echo(
                f"\ndepth {a['depth']}  gen {_escape(a['generation'])}  id {a['id']}  "
                f"{_escape(str(a['op']) + span)}  "
                f"fitness {format_cell(a['fitness']) or '-'}  parents {_escape(parents)}"
            )
            click.echo(f"  text: {_escape(a['text'])}")
            if a["parents"]:
                click.echo(f"  diff: {diff_text(a['diff'], a['parents'])}")


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


COMMANDS: list[click.Command] = [runs, show, lineage, sql, db]

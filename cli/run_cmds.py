"""`evolve run` and `evolve resume`: options in, RunConfig out, progress on the terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.common import (
    ID,
    absolute_db,
    absolute_model,
    db_option,
    open_existing,
    resolve_db,
    unescape,
)
from cli.options import ConfigOptions
from cli.process import interrupted_exit, interruption
from evolve.api import (
    GenerationReport,
    Progress,
    RunInterrupted,
    RunSummary,
    resume_run,
    start_run,
)
from evolve.ga.config import RunConfig
from evolve.store import LogStore
from scoring.errors import UserError

# Every RunConfig field is an option of `evolve run` (cli/options.py); these are the
# exceptions. The prompt and seed texts are read and unescaped by the command itself.
RUN_OPTIONS = ConfigOptions(
    RunConfig,
    names={
        "mutation.order": "--fill-order",
        "crossover.points": "--cx-points",
        "fitness.objective": "--fitness",
        "mutation.ban_tokens": "--ban-token",
    },
    short={"population": "-p", "generations": "-g"},
    skip=("prompt", "seed_texts"),
)


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc


@click.command()
@click.option("--prompt", help=r"Fixed prompt prefix (\n means a newline).")
@click.option(
    "--prompt-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the prompt from a UTF-8 file instead.",
)
@click.option(
    "--seed-text", "seed_texts", multiple=True, help="Starting continuation (repeatable)."
)
@RUN_OPTIONS
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@db_option
def run(
    prompt: str | None,
    prompt_file: Path | None,
    seed_texts: tuple[str, ...],
    db_path: Path | None,
    quiet: bool,
    **opts: object,
) -> None:
    """Evolve continuations of a prompt and log every individual to the database."""
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give exactly one of --prompt or --prompt-file")
    text = _read_text_file(prompt_file) if prompt_file else unescape(prompt or "")
    data = RUN_OPTIONS.values(opts)
    data.update(prompt=text, seed_texts=tuple(unescape(s) for s in seed_texts))
    data.update(mlm=absolute_model(data["mlm"]), causal=absolute_model(data["causal"]))
    cfg = RunConfig.from_dict(data).validate()
    with LogStore(resolve_db(db_path)) as store:
        _drive(lambda progress: start_run(cfg, store, progress), cfg.generations, quiet, store)


@click.command()
@click.argument("run_id", type=ID)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@db_option
def resume(run_id: int, db_path: Path | None, quiet: bool) -> None:
    """Continue an interrupted run from its last completed generation."""
    with open_existing(db_path) as store:  # a missing database is an error, not a new file
        generations = RunConfig.from_dict(_config_of(store, run_id)).generations
        _drive(lambda progress: resume_run(run_id, store, progress), generations, quiet, store)


def _config_of(store: LogStore, run_id: int) -> dict[str, Any]:
    config = store.run(run_id)["config"]
    return json.loads(config) if isinstance(config, str) else config


def _drive(
    start: Callable[[Progress | None], RunSummary], generations: int, quiet: bool, store: LogStore
) -> None:
    """Run with a progress bar; on Ctrl-C say how to resume and exit 130 (143 on SIGTERM)."""
    try:
        if quiet:
            summary = start(None)
        else:
            with click.progressbar(
                length=generations + 1, label="evolving", item_show_func=_describe, show_pos=True
            ) as bar:
                summary = start(lambda report: bar.update(1, report))
    except RunInterrupted as exc:
        click.echo(
            f"\n{interruption()}: run {exc.run_id} is saved through generation "
            f"{exc.generation}. Resume with: evolve resume {exc.run_id} --db {absolute_db(store)}",
            err=True,
        )
        sys.exit(interrupted_exit())
    _print_summary(summary)


def _describe(report: GenerationReport | None) -> str:
    if report is None:
        return ""
    best = report.best_text.replace("\n", " ").strip()
    return f"gen {report.generation} best {report.best:.3f} mean {report.mean:.3f} | {best[:50]}"


def _print_summary(summary: RunSummary) -> None:
    from cli.tables import format_table

    click.echo(f"\nRun {summary.run_id} {summary.status}: {summary.generations_done} generations.")
    rows = [
        [b["id"], b["generation"], b["fitness"], b["text"].replace("\n", "\\n")]
        for b in summary.best
    ]
    click.echo(format_table(["id", "gen", "fitness", "continuation"], rows))
    click.echo(f"\nevolve show {summary.run_id}   # stats per generation")


COMMANDS: list[click.Command] = [run, resume]

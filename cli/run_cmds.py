"""`evolve run`, `evolve resume` and `evolve config`: options in, RunConfig out, progress out.

A run's options come, from weakest to strongest, from the config dataclasses' defaults, a
stored run (`--from RUN`), a TOML file (`--config FILE`, the keys `evolve config RUN`
prints), and the options given on the command line. Only options the user actually typed
override (click says where each value came from), so a file's ``top_k = 20`` is not undone
by the option's default. Where no source sets cxpb and mutpb they are the algorithm's
(`RunConfig.for_algorithm`), so ``--algorithm mu_plus_lambda`` alone is a valid run.

Progress: a bar on stderr when stderr is a terminal; otherwise (nohup, SLURM, CI logs) one
line per generation, or with `--log-json` one JSON object per generation (keys in README).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cli.common import (
    ID,
    INT64_MAX,
    absolute_db,
    absolute_model,
    db_option,
    existing_db,
    open_for_reading,
    resolve_db,
    unescape,
)
from cli.config_files import read_config_file, to_toml
from cli.files import read_text_file
from cli.options import ConfigOptions
from cli.process import interrupted_exit, interruption
from cli.tables import format_table, visible
from evolve.api import (
    GenerationReport,
    Progress,
    RunInterrupted,
    RunLabels,
    RunSummary,
    resume_run,
    start_run,
)
from evolve.ga.config import RunConfig, WorkersConfig
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.presets import quiet_conversion

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
GENERATIONS = click.IntRange(1, INT64_MAX)  # a count SQLite can store; validate() caps it
TYPED = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)  # what the user gave
# `evolve resume` may put a run on other workers than it started with (same result).
RESUME_OPTIONS = ConfigOptions(WorkersConfig)


def _overlay(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `top`'s keys set over it; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _overlay(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of a nested mapping's leaves."""
    found: set[str] = set()
    for key, value in data.items():
        if isinstance(value, Mapping):
            found |= _keys(value, f"{prefix}{key}.")
        else:
            found.add(f"{prefix}{key}")
    return found


def _config_file(path: Path) -> dict[str, Any]:
    """A --config file's mapping, its keys checked now so the message names the file."""
    data = read_config_file(path)
    try:
        RunConfig.from_dict({"prompt": "-", **data})  # keys and shape only; values later
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    return data


def _typed_options(ctx: click.Context, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config values of the options given on the command line."""
    out: dict[str, Any] = {}
    for option in RUN_OPTIONS.options:
        if ctx.get_parameter_source(option.param) in TYPED:
            *parents, name = option.path.split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = opts[option.param]
    return out


def _stored_config(db_path: Path | None, run_id: int) -> dict[str, Any]:
    with open_for_reading(db_path) as store:
        return RunConfig.from_dict(_config_of(store, run_id)).to_dict()


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
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read options from a TOML file (the keys `evolve config RUN` prints); options "
    "given here override it.",
)
@click.option(
    "--from",
    "from_run",
    type=ID,
    help="Rerun the stored config of run ID (same database); options given here override it.",
)
@click.option("--name", help="A name for the run, shown by `evolve runs` (not unique).")
@click.option("--tag", "tags", multiple=True, help="A tag for the run (repeatable).")
@click.option("--note", help="A note on the run (what it tries, why).")
@RUN_OPTIONS
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@click.option(
    "--log-json", is_flag=True, help="One JSON object per generation on stderr (see README)."
)
@db_option
@click.pass_context
def run(
    ctx: click.Context,
    prompt: str | None,
    prompt_file: Path | None,
    seed_texts: tuple[str, ...],
    config_file: Path | None,
    from_run: int | None,
    name: str | None,
    tags: tuple[str, ...],
    note: str | None,
    db_path: Path | None,
    quiet: bool,
    log_json: bool,
    **opts: object,
) -> None:
    """Evolve continuations of a prompt and log every individual to the database."""
    if prompt is not None and prompt_file is not None:
        raise click.UsageError("give only one of --prompt or --prompt-file")
    data: dict[str, Any] = {}
    if from_run is not None:
        data = _stored_config(db_path, from_run)
    from_file = _config_file(config_file) if config_file else {}
    data = _overlay(data, from_file)
    typed = _typed_options(ctx, opts)
    given = _keys(data) | _keys(typed)
    data = _overlay(data, typed)
    if prompt is not None or prompt_file is not None:
        data["prompt"] = read_text_file(prompt_file) if prompt_file else unescape(prompt or "")
    elif "prompt" not in data:
        raise click.UsageError("give --prompt or --prompt-file (or a --config or --from with one)")
    if seed_texts:
        data["seed_texts"] = tuple(unescape(s) for s in seed_texts)
    data = RunConfig.for_algorithm(data, given)
    for kind in ("mlm", "causal"):
        if isinstance(data.get(kind), str):
            data[kind] = absolute_model(data[kind])
    cfg = RunConfig.from_dict(data).validate()
    labels = RunLabels(name=name, tags=tags, note=note)
    with LogStore(resolve_db(db_path)) as store:
        _drive(
            lambda progress: start_run(cfg, store, progress, labels=labels),
            cfg.generations,
            quiet,
            log_json,
            store,
        )


@click.command()
@click.argument("run_id", type=ID)
@click.option(
    "-g",
    "--generations",
    type=GENERATIONS,
    default=None,
    help="Extend the run (finished or not) to this many generations, exactly as if it had "
    "been started with them.",
)
@RESUME_OPTIONS
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@click.option(
    "--log-json", is_flag=True, help="One JSON object per generation on stderr (see README)."
)
@db_option
def resume(
    run_id: int,
    generations: int | None,
    db_path: Path | None,
    quiet: bool,
    log_json: bool,
    **opts: object,
) -> None:
    """Continue an interrupted run from its last completed generation, or extend one (on
    --workers N Ray workers if given, whatever the run started with: the result is the same)."""
    workers = WorkersConfig(**RESUME_OPTIONS.values(opts))
    with LogStore(existing_db(db_path)) as store:  # a missing one is an error, not a new file
        total = generations or RunConfig.from_dict(_config_of(store, run_id)).generations
        _drive(
            lambda progress: resume_run(
                run_id, store, progress, generations=generations, workers=workers
            ),
            total,
            quiet,
            log_json,
            store,
        )


@click.command("config")
@click.argument("run_id", type=ID)
@db_option
def config_cmd(run_id: int, db_path: Path | None) -> None:
    """Print a run's config as TOML, for `evolve run --config FILE`."""
    with open_for_reading(db_path) as store:
        stored = RunConfig.from_dict(_config_of(store, run_id)).to_dict()
        where = absolute_db(store)
    header = f"Config of run {run_id} in {where}.\nRerun it: evolve run --config FILE"
    click.echo(to_toml(stored, header), nl=False)


def _config_of(store: LogStore, run_id: int) -> dict[str, Any]:
    config = store.run(run_id)["config"]
    return json.loads(config) if isinstance(config, str) else config


def log_line(report: GenerationReport) -> str:
    """One generation as a line for a log file."""
    return (
        f"run {report.run_id} gen {report.generation}/{report.generations} "
        f"best {report.best:.4f} mean {report.mean:.4f} new {report.n_evaluated} "
        f"cached {report.n_cache_hits} {report.seconds:.2f}s"
    )


def log_record(report: GenerationReport) -> dict[str, Any]:
    """One generation as the JSON object of `--log-json` (keys documented in README)."""
    return {
        "run_id": report.run_id,
        "generation": report.generation,
        "generations": report.generations,
        "best": report.best,
        "mean": report.mean,
        "new": report.n_evaluated,
        "cache_hits": report.n_cache_hits,
        "seconds": report.seconds,
        "best_text": report.best_text,
    }


@contextlib.contextmanager
def _reporter(generations: int, quiet: bool, log_json: bool) -> Iterator[Progress | None]:
    """The progress callback: JSON lines, a bar on a terminal, log lines, or nothing."""
    if log_json:
        yield lambda r: click.echo(json.dumps(log_record(r), ensure_ascii=False), err=True)
    elif quiet:
        yield None
    elif sys.stderr.isatty():
        with click.progressbar(
            length=generations + 1,
            label="evolving",
            item_show_func=_describe,
            show_pos=True,
            file=sys.stderr,
        ) as bar:
            yield lambda report: bar.update(1, report)
    else:
        yield lambda report: click.echo(log_line(report), err=True)


def _drive(
    start: Callable[[Progress | None], RunSummary],
    generations: int,
    quiet: bool,
    log_json: bool,
    store: LogStore,
) -> None:
    """Run with progress; on Ctrl-C say how to resume and exit 130 (143 on SIGTERM)."""
    try:
        with quiet_conversion(quiet), _reporter(generations, quiet, log_json) as progress:
            summary = start(progress)
    except RunInterrupted as exc:
        saved = (
            f"is saved through generation {exc.generation}"
            if exc.generation >= 0
            else "was stopped before its first generation"
        )
        click.echo(
            f"\n{interruption()}: run {exc.run_id} {saved}. "
            f"Resume with: evolve resume {exc.run_id} --db {absolute_db(store)}",
            err=True,
        )
        sys.exit(interrupted_exit())
    _print_summary(summary)


def _describe(report: GenerationReport | None) -> str:
    if report is None:
        return ""
    best = visible(report.best_text.replace("\n", " ").strip(), tab=" ")
    return f"gen {report.generation} best {report.best:.3f} mean {report.mean:.3f} | {best[:50]}"


def _print_summary(summary: RunSummary) -> None:
    click.echo(f"\nRun {summary.run_id} {summary.status}: {summary.generations_done} generations.")
    rows = [[b["id"], b["generation"], b["fitness"], b["text"]] for b in summary.best]
    click.echo(format_table(["id", "gen", "fitness", "continuation"], rows))
    click.echo(f"\nevolve show {summary.run_id}   # stats per generation")


COMMANDS: list[click.Command] = [run, resume, config_cmd]

"""`evolve run` and `evolve resume`: options in, RunConfig out, progress on the terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from cli.common import db_option, resolve_db, unescape
from evolve.ga.config import (
    ALGORITHMS,
    CX_POINTS,
    FILL_ORDERS,
    INITS,
    NORMALISATIONS,
    OBJECTIVES,
    PLL_VARIANTS,
    PROPOSERS,
    CrossoverConfig,
    FitnessConfig,
    MutationConfig,
    RunConfig,
)
from evolve.ga.engine import (
    GenerationReport,
    Progress,
    RunInterrupted,
    RunSummary,
    resume_run,
    start_run,
)
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, DEFAULT_MLM

_defaults = RunConfig(prompt="-")
_mut = MutationConfig()
_cx = CrossoverConfig()
_fit = FitnessConfig()


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
@click.option("-p", "--population", default=_defaults.population, show_default=True)
@click.option("-g", "--generations", default=_defaults.generations, show_default=True)
@click.option(
    "--algorithm", type=click.Choice(ALGORITHMS), default=_defaults.algorithm, show_default=True
)
@click.option("--offspring", default=0, help="Lambda for mu_plus_lambda (0 = population).")
@click.option("--cxpb", default=_defaults.cxpb, show_default=True, help="Crossover probability.")
@click.option("--mutpb", default=_defaults.mutpb, show_default=True, help="Mutation probability.")
@click.option("--tournament", default=_defaults.tournament, show_default=True)
@click.option("--elites", default=_defaults.elites, show_default=True)
@click.option("--patience", default=0, help="Stop after N generations without improvement.")
@click.option("--init-len", default=_defaults.init_len, show_default=True)
@click.option("--min-len", default=_defaults.min_len, show_default=True)
@click.option("--max-len", default=_defaults.max_len, show_default=True)
@click.option("--max-span", default=_mut.max_span, show_default=True, help="Longest masked span.")
@click.option("--indel-prob", default=_mut.indel_prob, show_default=True)
@click.option("--temperature", default=_mut.temperature, show_default=True)
@click.option("--top-k", default=_mut.top_k, show_default=True)
@click.option("--fill-order", type=click.Choice(FILL_ORDERS), default=_mut.order, show_default=True)
@click.option(
    "--proposer",
    type=click.Choice(PROPOSERS),
    default=_defaults.proposer,
    show_default=True,
    help="Who refills spans: the MLM, or the causal LM (samples --candidates fills, keeps the "
    "likeliest text). Individuals are in the proposer's tokens.",
)
@click.option(
    "--candidates",
    default=_mut.candidates,
    show_default=True,
    help="Causal proposer: fills sampled per span.",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=_defaults.init,
    show_default=True,
    help="Generation 0: seed texts, MLM fills, or the causal LM's beam search (one beam per "
    "member), greedy or sampled decoding of --init-len tokens. auto: seed if --seed-text, "
    "else the proposer's samples.",
)
@click.option("--cx-points", type=click.Choice(CX_POINTS), default=_cx.points, show_default=True)
@click.option("--seam", default=_cx.seam, show_default=True)
@click.option(
    "--fitness",
    "objective",
    type=click.Choice(OBJECTIVES),
    default=_fit.objective,
    show_default=True,
    help="pll (MLM), causal (log p(continuation | prompt)), sum (weighted), or nsga2 "
    "(Pareto over pll, causal and diversity).",
)
@click.option("--pll-weight", default=_fit.pll_weight, show_default=True, help="sum/nsga2.")
@click.option("--causal-weight", default=_fit.causal_weight, show_default=True, help="sum/nsga2.")
@click.option("--variant", type=click.Choice(PLL_VARIANTS), default=_fit.variant, show_default=True)
@click.option(
    "--normalise", type=click.Choice(NORMALISATIONS), default=_fit.normalise, show_default=True
)
@click.option("--length-bonus", default=_fit.length_bonus, show_default=True)
@click.option("--bf16", is_flag=True, help="Score in bfloat16 (faster, approximate).")
@click.option("--mh", is_flag=True, help="Metropolis-Hastings acceptance of mutations.")
@click.option("--no-dedupe", is_flag=True, help="Allow duplicate offspring.")
@click.option("--mlm", default=DEFAULT_MLM, show_default=True, help="Preset, hub name or folder.")
@click.option(
    "--causal",
    default=DEFAULT_CAUSAL,
    show_default=True,
    help="Causal LM: judge, baselines, and proposer/fitness when chosen.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
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
    o = opts
    cfg = RunConfig(
        prompt=text,
        seed_texts=tuple(unescape(s) for s in seed_texts),
        population=o["population"],
        generations=o["generations"],
        algorithm=o["algorithm"],
        offspring=o["offspring"],
        cxpb=o["cxpb"],
        mutpb=o["mutpb"],
        tournament=o["tournament"],
        elites=o["elites"],
        patience=o["patience"],
        dedupe=not o["no_dedupe"],
        init_len=o["init_len"],
        min_len=o["min_len"],
        max_len=o["max_len"],
        mlm=o["mlm"],
        causal=o["causal"],
        proposer=o["proposer"],
        init=o["init"],
        seed=o["seed"],
        mh=o["mh"],
        device=o["device"],
        mutation=MutationConfig(
            max_span=o["max_span"],
            indel_prob=o["indel_prob"],
            temperature=o["temperature"],
            top_k=o["top_k"],
            order=o["fill_order"],
            candidates=o["candidates"],
        ),
        crossover=CrossoverConfig(points=o["cx_points"], seam=o["seam"]),
        fitness=FitnessConfig(
            objective=o["objective"],
            pll_weight=o["pll_weight"],
            causal_weight=o["causal_weight"],
            variant=o["variant"],
            normalise=o["normalise"],
            length_bonus=o["length_bonus"],
            bf16=o["bf16"],
        ),
    ).validate()
    store = LogStore(resolve_db(db_path))
    _drive(lambda progress: start_run(cfg, store, progress), cfg.generations, quiet, store)


@click.command()
@click.argument("run_id", type=int)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@db_option
def resume(run_id: int, db_path: Path | None, quiet: bool) -> None:
    """Continue an interrupted run from its last completed generation."""
    store = LogStore(resolve_db(db_path))
    generations = RunConfig.from_dict(_config_of(store, run_id)).generations
    _drive(lambda progress: resume_run(run_id, store, progress), generations, quiet, store)


def _config_of(store: LogStore, run_id: int) -> dict:
    import json

    config = store.run(run_id)["config"]
    return json.loads(config) if isinstance(config, str) else config


def _drive(
    start: Callable[[Progress | None], RunSummary], generations: int, quiet: bool, store: LogStore
) -> None:
    """Run with a progress bar; on Ctrl-C say how to resume and exit 130."""
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
            f"\nInterrupted: run {exc.run_id} is saved through generation {exc.generation}. "
            f"Resume with: evolve resume {exc.run_id} --db {store.path}",
            err=True,
        )
        sys.exit(130)
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

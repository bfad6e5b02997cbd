"""`evolve baseline`, `evolve compare` and `evolve plot`: options in, tables and PNGs out.

The decoding, scoring and drawing live in `evolve.experiments.baselines`, `evolve.experiments.compare` and
`evolve.experiments.plots`; this module only turns options into a `BaselineConfig` or call arguments and
prints what comes back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from cli.common import COUNT, ID, absolute_model, db_option, open_existing, resolve_db, unescape
from cli.options import ConfigOptions
from cli.tables import format_table
from evolve.experiments.baselines import (
    DEFAULT_METHODS,
    METHODS,
    BaselineConfig,
    generate_baselines,
    settings_label,
)
from evolve.experiments.compare import COLUMNS, Comparison, compare_run
from evolve.store import LogStore

TEXT_WIDTH = 70  # continuation column: enough words to judge a text at a glance
PLOTS_DIR = Path("runs") / "plots"  # default: runs/plots/run-N/


# Every BaselineConfig field is an option (help and default from its metadata) but the
# prompt, which is unescaped; the option names are the ones the command always had.
BASELINE_OPTIONS = ConfigOptions(
    BaselineConfig,
    names={"run_id": "--run", "methods": "--method"},
    skip=("prompt",),
    unshown=("causal", "amplifier"),  # empty: the run's model; no amplifier
    types={
        "run_id": ID,
        "methods": click.Choice(METHODS),
        **dict.fromkeys(
            (
                "new_tokens",
                "num_beams",
                "no_repeat_ngram_size",
                "num_return_sequences",
                "top_k",
                "samples",
                "amp_depth",
                "particles",
                "seed",
            ),
            COUNT,
        ),
    },
)
PROMPT_HELP = {f.name: f for f in dataclasses.fields(BaselineConfig)}["prompt"].metadata["help"]


@click.command()
@click.option("--prompt", help=PROMPT_HELP)
@BASELINE_OPTIONS
@db_option
def baseline(prompt: str | None, db_path: Path | None, **opts: Any) -> None:
    """Continue a prompt with greedy, beam search and sampling; store the texts."""
    values = BASELINE_OPTIONS.values(opts)
    causal, amplifier = values["causal"], values["amplifier"]
    cfg = BaselineConfig(
        **{
            **values,
            "prompt": unescape(prompt) if prompt is not None else "",
            "methods": tuple(values["methods"]) or DEFAULT_METHODS,
            "causal": absolute_model(str(causal)) if causal else "",
            "amplifier": str(Path(amplifier).absolute()) if amplifier else "",
        }
    ).validate()
    run_id = cfg.run_id
    store = open_existing(db_path) if run_id is not None else LogStore(resolve_db(db_path))
    with store:
        made = generate_baselines(cfg, store)
    rows = [
        [
            b.id,
            b.method,
            settings_label(b.params),
            b.seed,
            "stored" if b.reused else "generated",
            b.text,
        ]
        for b in made
    ]
    click.echo(
        format_table(
            ["id", "method", "settings", "seed", "source", "continuation"],
            rows,
            widths={"continuation": TEXT_WIDTH},
        )
    )
    if made:
        length, model = made[0].params["new_tokens"], made[0].model
        click.echo(f"\n{len(made)} baseline texts of {length} {model} tokens.")
    if run_id is not None:
        click.echo(f"evolve compare {run_id}   # evolved texts against these")


def _print_comparison(cmp: Comparison) -> None:
    click.echo(
        f"Run {cmp.run_id}: {cmp.mlm} (PLL) and {cmp.causal} (causal LM) scores, "
        f"means over each row's texts; higher log-probabilities are better."
    )
    click.echo(format_table(cmp.headers(), cmp.table_rows(), widths={"settings": 34}, digits=2))
    click.echo("\nFirst text of each row:")
    click.echo(
        format_table(
            ["method", "settings", "continuation"],
            [[r.method, r.settings, r.texts[0]] for r in cmp.rows],
            widths={"settings": 34, "continuation": TEXT_WIDTH},
        )
    )
    for note in cmp.notes:
        click.echo(f"\nNote: {note}")
    if any(cmp.computed.values()):
        scored = ", ".join(f"{n} by {name}" for name, n in cmp.computed.items() if n)
        click.echo(f"\nScored and stored: {scored}.")


@click.command()
@click.argument("run_id", type=ID)
@click.option("--reference", help=r"A human-written continuation to add (\n means a newline).")
@click.option("--causal", default=None, help="Judge causal LM [default: the run's].")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--device", default="cpu", show_default=True)
@db_option
def compare(
    run_id: int,
    reference: str | None,
    causal: str | None,
    as_json: bool,
    device: str,
    db_path: Path | None,
) -> None:
    """Compare a run's evolved texts with its baselines: model scores, repetition, diversity."""
    with open_existing(db_path) as store:
        cmp = compare_run(
            store,
            run_id,
            reference=unescape(reference) if reference is not None else None,
            causal=absolute_model(causal) if causal else causal,
            device=device,
        )
    if as_json:
        click.echo(json.dumps(cmp.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_comparison(cmp)
        legend = "; ".join(f"{c.header}: {c.about}" for c in COLUMNS[3:])
        click.echo(f"\nColumns: {legend}.")
        click.echo(f"{cmp.normalisation[0].upper()}{cmp.normalisation[1:]}.")


@click.command()
@click.argument("run_id", type=ID)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder for the PNGs [default: {PLOTS_DIR}/run-RUN_ID].",
)
@click.option("--reference", help="A human-written continuation for the comparison chart.")
@click.option("--causal", default=None, help="Judge causal LM [default: the run's].")
@click.option("--device", default="cpu", show_default=True)
@db_option
def plot(
    run_id: int,
    out_dir: Path | None,
    reference: str | None,
    causal: str | None,
    device: str,
    db_path: Path | None,
) -> None:
    """Draw fitness per generation, the comparison chart and the best's ancestry as PNGs."""
    # matplotlib loads only for this command
    from evolve.experiments.plots import plot_run, save_figures, writable_dir

    with open_existing(db_path) as store:
        store.run(run_id)  # an unknown run is refused before a folder is made
        out_dir = writable_dir(out_dir or PLOTS_DIR / f"run-{run_id}")  # before any scoring
        cmp = compare_run(
            store,
            run_id,
            reference=unescape(reference) if reference is not None else None,
            causal=absolute_model(causal) if causal else causal,
            device=device,
        )
        figures = plot_run(store, run_id, cmp)
    paths = save_figures(figures, out_dir)
    for path in paths:
        click.echo(str(path))
    for note in cmp.notes:
        click.echo(f"Note: {note}")


COMMANDS: list[click.Command] = [baseline, compare, plot]

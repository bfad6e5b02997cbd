"""`evolve baseline`, `evolve compare` and `evolve plot`: options in, tables and PNGs out.

The decoding, scoring and drawing live in `evolve.experiments.baselines`, `evolve.experiments.compare` and
`evolve.experiments.plots`; this module only turns options into a `BaselineConfig` or call arguments and
prints what comes back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.common import COUNT, ID, absolute_model, db_option, open_existing, resolve_db, unescape
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
from scoring.models import DEFAULT_CAUSAL

_defaults = BaselineConfig()
TEXT_WIDTH = 70  # continuation column: enough words to judge a text at a glance
PLOTS_DIR = Path("runs") / "plots"  # default: runs/plots/run-N/


@click.command()
@click.option("--prompt", help=r"Prompt to continue (\n means a newline); default: the run's.")
@click.option("--run", "run_id", type=ID, help="Link to this run: its prompt and length.")
@click.option(
    "--method",
    "methods",
    type=click.Choice(METHODS),
    multiple=True,
    help="Decoding method (repeatable) [default: greedy, beam, sample; amplified, particle "
    "and learned are opt-in].",
)
@click.option(
    "--causal",
    default="",
    help=f"Causal LM [default: the run's, else {DEFAULT_CAUSAL}].",
)
@click.option(
    "--new-tokens",
    type=COUNT,
    default=None,
    help="Continuation length in causal-LM tokens [default: the run's best, else 20].",
)
@click.option("--num-beams", default=_defaults.num_beams, type=COUNT, show_default=True)
@click.option("--length-penalty", default=_defaults.length_penalty, show_default=True)
@click.option(
    "--no-repeat-ngram-size", default=_defaults.no_repeat_ngram_size, type=COUNT, show_default=True
)
@click.option(
    "--num-return-sequences",
    default=_defaults.num_return_sequences,
    type=COUNT,
    show_default=True,
    help="Beams kept from beam search.",
)
@click.option("--temperature", default=_defaults.temperature, show_default=True)
@click.option("--top-k", default=_defaults.top_k, type=COUNT, show_default=True, help="0 = no cut.")
@click.option("--top-p", default=_defaults.top_p, show_default=True)
@click.option("--typical-p", default=_defaults.typical_p, show_default=True, help="1 = off.")
@click.option(
    "--samples",
    default=_defaults.samples,
    type=COUNT,
    show_default=True,
    help="Sampled texts, one seed each.",
)
@click.option(
    "--amp-depth",
    default=_defaults.amp_depth,
    type=COUNT,
    show_default=True,
    help="Amplified: lookahead D.",
)
@click.option(
    "--amp-lambda", default=_defaults.amp_lambda, show_default=True, help="Amplified: mix weight."
)
@click.option(
    "--particles",
    default=_defaults.particles,
    type=COUNT,
    show_default=True,
    help="Particle: paths per token.",
)
@click.option(
    "--beta", default=_defaults.beta, show_default=True, help="Particle: target p(path)^beta."
)
@click.option(
    "--amplifier",
    default=_defaults.amplifier,
    help="Learned: folder of a learned amplifier (from evolve stunt --variant adversarial).",
)
@click.option(
    "--seed", default=_defaults.seed, type=COUNT, show_default=True, help="First sample's seed."
)
@click.option("--device", default=_defaults.device, show_default=True)
@db_option
def baseline(
    prompt: str | None,
    run_id: int | None,
    methods: tuple[str, ...],
    db_path: Path | None,
    **opts: Any,  # click's converted option values, one type per option
) -> None:
    """Continue a prompt with greedy, beam search and sampling; store the texts."""
    o = opts
    cfg = BaselineConfig(
        prompt=unescape(prompt) if prompt is not None else "",
        run_id=run_id,
        methods=methods or DEFAULT_METHODS,
        causal=absolute_model(str(o["causal"])) if o["causal"] else "",
        new_tokens=o["new_tokens"],
        num_beams=o["num_beams"],
        length_penalty=o["length_penalty"],
        no_repeat_ngram_size=o["no_repeat_ngram_size"],
        num_return_sequences=o["num_return_sequences"],
        temperature=o["temperature"],
        top_k=o["top_k"],
        top_p=o["top_p"],
        typical_p=o["typical_p"],
        samples=o["samples"],
        amp_depth=o["amp_depth"],
        amp_lambda=o["amp_lambda"],
        particles=o["particles"],
        beta=o["beta"],
        amplifier=str(Path(o["amplifier"]).absolute()) if o["amplifier"] else "",
        seed=o["seed"],
        device=o["device"],
    ).validate()
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

"""`evolve adapt-mlm`: train (or resume) a masked-LM adapter for a causal LM.

Options in, `AdaptConfig` out: the config's fields make the options (cli/options.py). The
training lives in `evolve.experiments.adapt`; this module only reports, and turns a finished
run into the adapter folder that ``--mlm FOLDER`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.options import ConfigOptions
from cli.process import interrupted_exit
from cli.progress import Progress
from evolve.experiments.adapt import (
    AdaptConfig,
    export_adapter,
    heldout_numbers,
    train_adapter,
)
from scoring.models import check_kind, load_fresh

ADAPT_OPTIONS = ConfigOptions(AdaptConfig, toggles=("bf16",))


@click.command("adapt-mlm")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: checkpoints go here, and the finished adapter to OUT/adapter. "
    "Giving a folder that holds a checkpoint resumes it.",
)
@ADAPT_OPTIONS
@click.option(
    "--heldout-positions",
    type=click.IntRange(min=0),
    default=4000,
    show_default=True,
    help="Test-split positions for the card's held-out numbers at the end (0: skip); "
    "~4000 give a standard error near 0.05 nats.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def adapt_mlm(out: Path, heldout_positions: int, as_json: bool, **opts: Any) -> None:
    """Make a causal LM a masked LM: masked next-token prediction with a LoRA adapter.

    The decoder attends bidirectionally, and each masked token is predicted from the hidden
    state one position before it (LLM2Vec's MNTP). It trains on the corpus's train split of
    offline English from Debian packages (fortunes, WordNet glosses, dictionaries,
    licences) and watches masked-token log-probability on the dev split. Load the result
    with ``--mlm OUT/adapter``. Model card and numbers: docs/smollm2-mlm.md.
    """
    config = AdaptConfig(**ADAPT_OPTIONS.values(opts)).validate()
    check_kind(config.base, "causal")
    base = load_fresh(config.base, "causal")
    bar = Progress(unit="step", every=config.checkpoint_every, label="adapt-mlm ")
    try:
        result = train_adapter(base, config, out, progress=bar)
    finally:
        bar.close()
    if result.interrupted:
        click.echo(
            f"interrupted at step {result.step}: the same command resumes from the last checkpoint",
            err=True,
        )
        raise click.exceptions.Exit(interrupted_exit())
    evals = [row for row in result.log if row["kind"] == "eval"]
    card: dict[str, Any] = {
        "steps": result.step,
        "seconds": round(result.seconds, 1),
        "train_tokens": result.train_tokens,
        "dev": evals,
    }
    if heldout_positions:
        card["heldout"] = heldout_numbers(result, heldout_positions, config.sources)
    folder = export_adapter(out, result.model, config, card)
    if as_json:
        click.echo(json.dumps({"adapter": str(folder), **card}, indent=2))
        return
    click.echo(f"adapter: {folder}  (use it with --mlm {folder})")
    click.echo(f"steps {result.step}, {result.seconds / 60:.1f} min of training")
    if evals:
        first, last = evals[0], evals[-1]
        click.echo(
            f"dev masked-token log-prob {first['dev_logprob']:.3f} -> {last['dev_logprob']:.3f}, "
            f"top-1 {first['dev_top1']:.3f} -> {last['dev_top1']:.3f}"
        )
    held = card.get("heldout")
    if held:
        click.echo(
            f"held-out ({held['mlm_positions']:.0f} positions): masked {held['mlm_logprob']:.3f} "
            f"(top-1 {held['mlm_top1']:.3f}) vs causal left context {held['causal_logprob']:.3f} "
            f"(top-1 {held['causal_top1']:.3f}): {held['gain_nats_per_token']:+.3f} nats/token"
        )


COMMANDS = [adapt_mlm]

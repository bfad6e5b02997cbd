"""`evolve amplify`: does beam-search lookahead help a causal LM predict real text?

Options in, `AmplifyConfig` out: the config's fields make the options (cli/options.py), so
each default and its help live once, in the config. The experiment itself lives in
`evolve.experiments.amplify`. Results go to the store as an experiment of kind "amplify"
(summary + one row per scored position) and are printed as a table, or as JSON with `--json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import COUNT, absolute_model, db_option, resolve_db
from cli.files import check_regular_file
from cli.options import ConfigOptions
from cli.process import interrupted_exit, interruption
from cli.tables import format_table
from evolve.experiments.amplify import (
    KIND,
    AmplifyConfig,
    AmplifyResult,
    load_documents,
    run_amplify,
)
from evolve.store import LogStore
from scoring.models import load_model

# Every AmplifyConfig field but the device is an option (help and default from its metadata).
# Counts are COUNT, so a number past SQLite's integers is click's one-line error.
AMPLIFY_OPTIONS = ConfigOptions(
    AmplifyConfig,
    short={"beams": "-B", "depth": "-D"},
    skip=("device",),
    toggles=("length_norm", "unwrap"),
    types=dict.fromkeys(
        ("beams", "depth", "max_positions", "stride", "start", "batch_tokens", "particles", "seed"),
        COUNT,
    ),
)


class _Bar:
    """A tqdm bar (positions, with ETA) on stderr, created on the first progress report."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (pipes, tests, logs).
            self.bar = tqdm(total=total, unit="pos", file=sys.stderr, disable=None)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command()
@click.argument("text", required=False)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="UTF-8 text file; blank lines separate documents. Repeatable.",
)
@AMPLIFY_OPTIONS
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@db_option
def amplify(
    text: str | None,
    files: tuple[Path, ...],
    as_json: bool,
    db_path: Path | None,
    **opts: Any,
) -> None:
    """Score real text under a causal LM p and under p amplified by lookahead.

    At each position, beam search (width B, depth D) from the prefix gives q, the
    beam-weighted distribution of the beams' first tokens (or, with --lookahead particle,
    the weighted first tokens of particles sampled from p and reweighted toward
    p(path)^beta); the mixes (1-λ)p + λq and p^(1-λ) q_eps^λ are compared with p on the
    real next token.
    """
    values = AMPLIFY_OPTIONS.values(opts)
    values["causal"] = absolute_model(values["causal"])
    config = AmplifyConfig(**values).validate()
    for corpus in files:
        check_regular_file(corpus)  # /dev/zero or a FIFO would never end
    docs = load_documents([text] if text is not None else [], files, unwrap=config.unwrap)
    db = resolve_db(db_path)
    with LogStore(db):  # fail on a bad --db before minutes of scoring
        pass
    lm = load_model(config.causal, "causal", config.device)
    bar = _Bar(enabled=True)
    try:
        result = run_amplify(lm, docs, config, progress=bar)
    finally:
        bar.close()
    stored_config = config.to_dict() | {
        "texts": 1 if text is not None else 0,
        "files": [str(f) for f in files],
    }
    with LogStore(db) as store:
        exp_id = store.add_experiment(
            kind=KIND,
            config=stored_config,
            summary=result.summary,
            rows=result.rows,
            status=result.status,
        )
    if as_json:
        payload = {
            "experiment_id": exp_id,
            "status": result.status,
            "config": stored_config,
            "summary": result.summary,
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        click.echo(render(exp_id, result))
    if result.interrupted:
        click.echo(f"{interruption()}: {len(result.rows)} positions kept", err=True)
        raise click.exceptions.Exit(interrupted_exit())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-inf" if x is None else f"{x:.4f}"


def _pm(x: float | None, se: float | None) -> str:
    return _signed(x) if se is None else f"{_signed(x)} ± {se:.4f}"


def _signed(x: float | None) -> str:
    return "-inf" if x is None else f"{x:+.4f}"


def render(exp_id: int, result: AmplifyResult) -> str:
    """The experiment as text: header, one table row per λ, best λ, cost."""
    s = result.summary
    cost = s["cost"]
    particle = s.get("lookahead") == "particle"
    search = (
        f"particles={s['particles']} beta={s['beta']:g} D={s['depth']}"
        if particle
        else f"B={s['beams']} D={s['depth']}"
    )
    lines = [
        f"amplify experiment {exp_id} ({result.status}): {s['positions']} positions in "
        f"{s['documents']} document(s), model {s['model']}, {search}, "
        f"eps={s['epsilon']:g}, length_norm={s['length_norm']}",
        f"naive p: mean log-lik {s['naive_mean_ll']:.4f} nats/token; the real token starts a "
        f"{'particle' if particle else 'beam'} at {_pct(s['beam_coverage'])} of positions; "
        f"top-1 accuracy p {_pct(s['top1_p'])}, q {_pct(s['top1_q'])}",
        "",
    ]
    arith, geo = s["arith"]["by_lambda"], s["geo"]["by_lambda"]
    rows = []
    for a, g in zip(arith, geo, strict=True):
        rows.append(
            [
                f"{a['lambda']:g}",
                _num(a["mean_ll"]),
                _pm(a["gain"], a["gain_se"]),
                _pct(a["helped"]),
                a["zero_prob"],
                _num(g["mean_ll"]),
                _pm(g["gain"], g["gain_se"]),
                _pct(g["helped"]),
            ]
        )
    headers = [
        "lambda",
        "arith LL",
        "arith gain ± se",
        "arith helped",
        "p=0",
        "geo LL",
        "geo gain ± se",
        "geo helped",
    ]
    lines.append(format_table(headers, rows, digits=2))
    lines.append("")
    for mix in ("arith", "geo"):
        m = s[mix]
        lines.append(
            f"best {mix}: lambda={m['best_lambda']:g}, mean log-lik "
            f"{_num(m['best_mean_ll'])} ({_signed(m['best_gain'])} nats/token vs p), helped at "
            f"{_pct(m['best_helped'])} of positions; two-fold cross-validated gain "
            f"{_signed(m['cv_gain'])}"
        )
    lines.append(
        f"arith slope d(mean log-lik)/d(lambda) at lambda=0: "
        f"{_pm(s['arith']['slope_at_0'], s['arith']['slope_se'])} "
        "(positive: some small lambda helps)"
    )
    lines.append(
        f"cost: {cost['seconds_per_position']:.3f} s/position, "
        f"{cost['forward_calls_per_position']:.3f} forward calls/position "
        f"({cost['positions_per_group']} positions per group), {cost['seconds']:.1f} s in all"
    )
    return "\n".join(lines)


COMMANDS: list[click.Command] = [amplify]

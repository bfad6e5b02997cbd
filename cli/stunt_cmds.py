"""`evolve stunt`: fine-tune a causal LM with or without stunting, monitoring lookahead gain.

Options in, `StuntConfig` out: the config's fields make the options (cli/options.py), so each
default and its help live once, in the config. The experiment lives in
`evolve.experiments.stunting`. A run is stored as an experiment of kind "stunt" (summary + one
row per step and per dev evaluation); `evolve stunt --compare` puts stored runs side by side
as a table and a PNG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, cast

import click

from cli.common import COUNT, db_option, open_existing, resolve_db
from cli.files import check_regular_file
from cli.options import ConfigOptions
from cli.process import interrupted_exit, interruption
from cli.tables import format_table
from evolve.experiments.amplifier import save_amplifier
from evolve.experiments.amplify import load_documents
from evolve.experiments.stunt_study import (
    REPORT_KEYS,
    StudyConfig,
    run_study,
    study_figure,
    study_runs,
    summarise_study,
)
from evolve.experiments.stunting import (
    DEV_COLUMNS,
    KIND,
    LOOKAHEAD_COLUMNS,
    TRAIN_COLUMNS,
    VARIANTS,
    StuntConfig,
    StuntResult,
    compare_figure,
    compare_rows,
    run_stunt,
)
from evolve.store import LogStore
from scoring.devices import check_device
from scoring.errors import UserError
from scoring.models import check_kind, load_model

# Every StuntConfig field but the device is an option (help and default from its metadata).
STUNT_OPTIONS = ConfigOptions(
    StuntConfig, short={"beams": "-B", "depth": "-D"}, skip=("device",), toggles=("unwrap",)
)
# Six variants make click's [none|skip|...] metavar as long as a help line; the help names them.
next(o for o in STUNT_OPTIONS.options if o.path == "variant").attrs["metavar"] = "VARIANT"


class _Bar:
    """A tqdm bar (steps, with ETA and the latest numbers) on stderr, made on the first report."""

    def __init__(self, desc: str | None = None) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int, latest: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (pipes, tests, logs).
            self.bar = tqdm(total=total, unit="step", desc=self.desc, file=sys.stderr, disable=None)
        shown = {k: f"{v:.3f}" for k, v in latest.items() if v is not None}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _parse_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise UserError(f"--experiments takes comma-separated ids, got {text!r}") from exc
    if not ids:
        raise UserError("--experiments names no experiment")
    return ids


@click.command()
@click.option(
    "--train",
    "train_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="UTF-8 training text (blank lines separate documents).",
)
@click.option(
    "--dev",
    "dev_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="UTF-8 held-out text for monitoring.",
)
@STUNT_OPTIONS
@click.option(
    "--save",
    "save_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save the fine-tuned weights here (new or empty folder); the adversarial variant's "
    "learned amplifier goes to its amplifier/ subfolder.",
)
@click.option("--compare", is_flag=True, help="Compare stored stunt runs instead of training.")
@click.option(
    "--experiments",
    default=None,
    help="With --compare: comma-separated ids [default: the newest run of each variant].",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --compare: the picture's path [default: stunt-compare.png beside the database].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary (or table) as JSON.")
@db_option
def stunt(
    train_file: Path | None,
    dev_file: Path | None,
    save_dir: Path | None,
    compare: bool,
    experiments: str | None,
    png: Path | None,
    as_json: bool,
    db_path: Path | None,
    **opts: Any,
) -> None:
    """Fine-tune a causal LM, optionally refusing updates toward its own lookahead.

    Before each update, beam search (width B, depth D) from every target position gives the
    lookahead distribution q, as in `evolve amplify`; the variant decides what the update
    does with positions where q beats p at the real token. The particle and adversarial
    variants instead remove from each update its component toward a particle lookahead or
    a learned amplifier. The dev text is scored with `evolve amplify`'s numbers
    (log-likelihood, gain at λ = 0.01 and 0.1, slope at 0) for beam and particle lookahead
    (and the amplifier) at step 0, every --eval-every steps and at the end; the monitor is
    the form the variant does not stunt against. Definitions: docs/stunting.md.
    """
    if compare:
        _compare(_parse_ids(experiments), png, as_json, db_path)
        return
    if experiments is not None or png is not None:
        raise UserError("--experiments and --png go with --compare")
    if train_file is None or dev_file is None:
        raise UserError("give --train FILE and --dev FILE (or --compare)")
    config = StuntConfig(**STUNT_OPTIONS.values(opts)).validate()
    for corpus in (train_file, dev_file):
        check_regular_file(corpus)  # /dev/zero or a FIFO would never end
    train = load_documents(files=[train_file], unwrap=config.unwrap)
    dev = load_documents(files=[dev_file], unwrap=config.unwrap)
    if save_dir is not None and save_dir.exists() and any(save_dir.iterdir()):
        raise UserError(f"--save folder {save_dir} is not empty")
    db = resolve_db(db_path)
    if db.is_dir():
        raise UserError(f"--db {db} is a folder")
    if db.exists():
        with LogStore(db):  # fail on a bad database before minutes of training
            pass
    check_kind(config.model, "causal")  # a masked LM is refused before it is loaded
    lm = load_model(config.model, "causal", config.device)
    bar = _Bar()
    try:
        result = run_stunt(lm, train, dev, config, progress=bar)
    finally:
        bar.close()
    stored = config.to_dict() | {"train": str(train_file), "dev": str(dev_file)}
    if save_dir is not None:
        result.model.save_pretrained(save_dir)
        lm.tokenizer.save_pretrained(save_dir)
        stored["saved_to"] = str(save_dir)
        if result.amplifier is not None:
            save_amplifier(result.amplifier, save_dir / "amplifier", {"fit_on": config.model})
    with LogStore(db) as store:
        exp_id = store.add_experiment(
            kind=KIND,
            config=stored,
            summary=result.summary,
            rows=result.rows,
            status=result.status,
        )
    if as_json:
        payload = {"experiment_id": exp_id, "status": result.status, "config": stored}
        click.echo(json.dumps(payload | {"summary": result.summary}, indent=2))
    else:
        click.echo(render(exp_id, result))
    if result.interrupted:
        click.echo(f"interrupted: {len(result.steps)} steps kept", err=True)
        raise click.exceptions.Exit(interrupted_exit())


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "" if x is None else format(x, fmt)


def _pm(s: dict[str, Any], key: str) -> str:
    change, se = s.get(f"{key}_change"), s.get(f"{key}_change_se")
    if change is None:
        return "n/a"
    return f"{change:+.4f}" + ("" if se is None else f" ± {se:.4f}")


def render(exp_id: int, result: StuntResult) -> str:
    """The run as text: header, one line per dev evaluation, training numbers, cost."""
    s = result.summary
    c = result.config
    lines = [
        f"stunt experiment {exp_id} ({result.status}): variant {c.variant}"
        + (f" alpha={c.alpha:g}" if c.variant == "penalty" else "")
        + f", model {s['model']}, {s['steps_done']}/{s['steps_planned']} steps of "
        f"{c.rows_per_step}x{c.seq_len} tokens ({s['updates']} updates), B={c.beams} D={c.depth}",
        f"training NLL: first step {_num(s['train_nll_first'])}, last quarter "
        f"{_num(s['train_nll_last_quarter'])} nats/token; toward positions (q > p at the real "
        f"token) {_num(s['toward_share'], '.1%')}, affected by the variant "
        f"{_num(s['affected_share'], '.1%')}",
        "",
    ]
    headers = ["step", "dev LL", "gain λ=.01", "gain λ=.1", "slope at 0", "± se", "coverage"]
    headers += ["particle λ=.1", "amplifier", f"monitor ({s['monitor']}) λ=.1"]
    rows = [
        [
            e["step"],
            e["dev_ll"],
            e["gain_0.01"],
            e["gain_0.1"],
            e["slope_at_0"],
            e["slope_se"],
            e["beam_coverage"],
            e.get("particle_gain_0.1"),
            e.get("amplifier_gain"),
            e.get("monitor_gain_0.1"),
        ]
        for e in result.evals
    ]
    lines.append(format_table(headers, rows, digits=4))
    if s.get("dev_ll_change") is not None:
        lines.append("")
        lines.append(
            f"change from step 0 to step {s['end_step']} (paired over the same dev positions): "
            f"dev LL {_pm(s, 'dev_ll')}, gain λ=.1 {_pm(s, 'gain_0.1')}, "
            f"gain λ=.01 {_pm(s, 'gain_0.01')}, slope {_pm(s, 'slope_at_0')}"
        )
    if c.variant in ("particle", "adversarial"):
        toward = "the particle q" if c.variant == "particle" else "the learned amplifier"
        lines.append(
            f"update toward {toward}: mean cosine before projection "
            f"{_num(s['update_cos_before_mean'], '+.4f')}, largest |<update, g_q>| after "
            f"{_num(s['max_abs_update_dot_after'], '.2e')}; share of the update removed "
            f"{_num(s['removed_share_mean'], '.2%')}"
        )
    if s.get("amplifier_fits"):
        lines.append(
            f"amplifier: {s['amplifier_fits']} fits, last held-out gain "
            f"{_num(s['amplifier_heldout_gain_last'], '+.4f')} nats/token"
        )
    cost = s["cost"]
    lines.append("")
    lines.append(
        f"cost: {cost['seconds']:.1f} s in all: lookahead {cost['lookahead_seconds']:.1f} s, "
        f"updates {cost['update_seconds']:.1f} s, dev evaluations {cost['eval_seconds']:.1f} s"
        + (
            f", amplifier fits {cost['amplifier_seconds']:.1f} s"
            if cost.get("amplifier_seconds")
            else ""
        )
    )
    return "\n".join(lines)


def _compare(ids: list[int] | None, png: Path | None, as_json: bool, db_path: Path | None) -> None:
    with open_existing(db_path) as store:
        if ids is None:
            newest: dict[str, int] = {}
            for exp in store.experiments(kind=KIND):  # newest first
                newest.setdefault(str(exp["summary"].get("variant")), exp["id"])
            ids = [newest[v] for v in VARIANTS if v in newest]
            if not ids:
                raise UserError(f"no stunt experiments in {store.path}; run `evolve stunt` first")
        exps = [store.experiment(i) for i in ids]
        db_file = cast(Path, store.path)  # open_existing opens a file, never :memory:
        path = png if png is not None else db_file.parent / "stunt-compare.png"
    rows = compare_rows(exps)
    fig = compare_figure(exps)
    fig.savefig(path)
    if as_json:
        click.echo(json.dumps({"png": str(path), "rows": rows}, indent=2))
        return
    for title, columns in (
        ("training", TRAIN_COLUMNS),
        ("dev text (paired changes from step 0)", DEV_COLUMNS),
        (
            "lookahead forms on the dev text (monitor: the form not stunted against)",
            LOOKAHEAD_COLUMNS,
        ),
    ):
        click.echo(f"{title}:")
        headers = [label for _, label in columns]
        click.echo(format_table(headers, [[r[k] for k, _ in columns] for r in rows], digits=4))
        click.echo("")
    click.echo(f"picture: {path}")


# Every StudyConfig field but the device is an option; `--variant` and `--source` repeat.
STUDY_OPTIONS = ConfigOptions(
    StudyConfig,
    names={"variants": "--variant", "sources": "--source"},
    short={"beams": "-B", "depth": "-D"},
    skip=("device",),
    types=dict.fromkeys(
        (
            "train_tokens",
            "seq_len",
            "batch_tokens",
            "beams",
            "depth",
            "particles",
            "retrain_every",
            "amplifier_windows",
            "amplifier_steps",
            "eval_every",
            "dev_positions",
            "dev_stride",
            "tree_tokens",
            "checkpoint_every",
        ),
        COUNT,
    ),
)


class _StudyBar:
    """One `_Bar` per run of a study, named by its variant and seed."""

    def __init__(self) -> None:
        self.bar = _Bar()
        self.run: tuple[str, int] | None = None

    def __call__(self, variant: str, seed: int, done: int, total: int, latest: dict) -> None:
        if self.run != (variant, seed):
            self.close()
            self.run = (variant, seed)
            self.bar = _Bar(desc=f"{variant} seed {seed}")
        self.bar(done, total, latest)

    def close(self) -> None:
        self.bar.close()


@click.command("stunt-study")
@STUDY_OPTIONS
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the runs' checkpoints [default: stunt-study/NAME beside the database].",
)
@click.option(
    "--report", is_flag=True, help="Report the stored study (table and PNG); train nothing."
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The study's picture [default: NAME.png beside the database].",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the model trains and looks ahead (e.g. cuda).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the study's summary as JSON.")
@db_option
def stunt_study(
    folder: Path | None,
    report: bool,
    png: Path | None,
    device: str,
    as_json: bool,
    db_path: Path | None,
    **opts: Any,
) -> None:
    """Run every stunting variant with several seeds on the offline English corpus.

    Trains on the corpus's train split and evaluates on its dev split (the test split is
    never read); every run stores its rows as it goes and checkpoints its state, so the
    same command started again after a kill resumes where it stopped. Ends with a table of
    each variant's changes from step 0, mean ± standard error over seeds, and a PNG of the
    curves. Definitions and the full study's cost: docs/stunting.md.
    """
    values = STUDY_OPTIONS.values(opts)
    values["device"] = check_device(device)
    config = StudyConfig(**values).validate()
    db = resolve_db(db_path)
    if report:
        with open_existing(db_path) as store:
            _study_report(store, config.name, png, as_json)
        return
    if db.is_dir():
        raise UserError(f"--db {db} is a folder")
    folder = folder if folder is not None else db.parent / "stunt-study" / config.name
    check_kind(config.model, "causal")
    lm = load_model(config.model, "causal", config.device)
    bar = _StudyBar()
    with LogStore(db) as store:
        try:
            run_study(lm, config, store, folder, progress=bar)
        except KeyboardInterrupt:
            bar.close()
            click.echo(
                f"{interruption()}: finished steps and evaluations are stored; run the same "
                "command again to resume",
                err=True,
            )
            raise click.exceptions.Exit(interrupted_exit()) from None
        finally:
            bar.close()
        _study_report(store, config.name, png, as_json)


def _pm_cell(entry: dict[str, Any], key: str) -> str:
    mean, se = entry.get(key), entry.get(f"{key}_se")
    if mean is None:
        return ""
    return f"{mean:+.4f}" + ("" if se is None else f" ± {se:.4f}")


def _study_report(store: LogStore, name: str, png: Path | None, as_json: bool) -> None:
    study, runs = study_runs(store, name)
    summary = summarise_study(runs)
    db_file = cast(Path, store.path)
    path = png if png is not None else db_file.parent / f"{name}.png"
    finished = [r for r in runs if r["status"] == "finished"]
    if finished:
        study_figure(finished, f"stunt study {name!r}").savefig(path)
    if as_json:
        payload = {"study": study["id"], "runs": len(runs), "summary": summary}
        click.echo(json.dumps(payload | {"png": str(path) if finished else None}, indent=2))
        return
    data = study["config"].get("data", {})
    click.echo(
        f"stunt study {name!r} (experiment {study['id']}, {study['status']}): {len(finished)} of "
        f"{len(runs)} stored runs finished; {data.get('train_tokens_available', '?')} training "
        f"tokens available ({data.get('epochs', 0):.3g} epochs per run), "
        f"{data.get('dev_documents', '?')} dev documents"
    )
    headers = ["variant", "seeds", "monitor", *[label for _, label in REPORT_KEYS]]
    headers += ["s/step", "checkpoint s/step", "s/eval"]
    rows = [
        [
            variant,
            entry["seeds"],
            entry["monitor"],
            *[_pm_cell(entry, key) for key, _ in REPORT_KEYS],
            _num(entry["seconds_per_step"], ".1f"),
            _num(entry["checkpoint_seconds_per_step"], ".1f"),
            _num(entry["eval_seconds"], ".1f"),
        ]
        for variant, entry in summary.items()
    ]
    click.echo("")
    click.echo("changes from step 0 to the last evaluation, mean ± standard error over seeds:")
    click.echo(format_table(headers, rows, digits=4))
    if finished:
        click.echo(f"\npicture: {path}")


COMMANDS: list[click.Command] = [stunt, stunt_study]

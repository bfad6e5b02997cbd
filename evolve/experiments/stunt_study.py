"""A stunting study: every variant × several seeds on the offline corpus, resumable (issue 23).

One `evolve stunt` run answers nothing: training-run noise (window order) is as large as the
effects. A study trains every variant with every seed on the same data, from the same
model, and evaluates all of them on the same dev positions with the same particles, so that
variants can be compared paired (same seed, same windows) and averaged over seeds.

- Data: the offline English corpus (`evolve.experiments.corpus`): training windows from the
  train split; the dev split (held-out fortune files and hashed entries) for every dev
  evaluation; the test split is never read. The split is fixed by content, and the study
  checks that no dev document key is among the training keys.
- Runs: one stored experiment of kind "stunt" per (variant, seed), written as it goes
  (each step's and each evaluation's row is stored when it is final), with a checkpoint
  (`evolve.experiments.checkpoints`) every `checkpoint_every` steps and after every
  evaluation. A killed study started again with the same name resumes each unfinished run
  from its last checkpoint, drops the rows stored after it, and goes on exactly as if it had
  not stopped; finished runs are skipped. A finished run's checkpoint is deleted once the
  study has recorded the run (the adversarial variant's last amplifier is kept): 18 final
  checkpoints of SmolLM2 would be 29 GB. Runs go seed by seed (all variants of seed 0
  first), so a study stopped early already holds complete paired comparisons.
- The step-0 evaluation depends only on the loaded model and the dev text, so it is made
  once per study (stored as a row of the study) and given to every run.
- The study itself is an experiment of kind "stunt-study" holding its config, a row per run
  as it ends, and a summary per variant (means and standard errors over seeds).

Domain code: no click; progress goes to a callback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evolve.experiments import corpus
from evolve.experiments.amplifier import save_amplifier
from evolve.experiments.amplify import Document
from evolve.experiments.checkpoints import (
    load_checkpoint,
    remove_checkpoint,
    resume_from,
    save_checkpoint,
)
from evolve.experiments.stunting import (
    KIND as RUN_KIND,
)
from evolve.experiments.stunting import (
    VARIANTS,
    Hooks,
    Snapshot,
    StuntConfig,
    evaluate_dev,
    run_stunt,
    training_windows,
    with_monitor,
)
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel

KIND = "stunt-study"

# (variant, seed, steps done, steps planned, latest numbers) after each step of a run
Progress = Callable[[str, int, int, int, dict[str, Any]], None]


def _help(name: str, why: str = "") -> dict[str, str]:
    """A study field's help: the run option's own help, or `why` the study's default differs."""
    base = next(f for f in dataclasses.fields(StuntConfig) if f.name == name).metadata["help"]
    return {"help": why or base}


@dataclass(frozen=True)
class StudyConfig:
    """A study: which runs, on what data, with which run settings. Stored with the study.

    Run settings a study shares with `evolve stunt` keep their help; those whose study
    default differs say why.
    """

    name: str = field(
        default="stunt-study",
        metadata={"help": "The study's name: running the same name again resumes it."},
    )
    variants: tuple[str, ...] = field(
        default=VARIANTS,
        metadata={"help": "A variant to run (repeatable) [default: all six]."},
    )
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2),
        metadata={
            "help": "Comma-separated run seeds (window order, particles): three give a "
            "standard error over training runs."
        },
    )
    train_tokens: int = field(
        default=1_000_000,
        metadata={
            "help": "Training tokens per run (steps = this // `batch_tokens`): 1M is about "
            "a third of the corpus's train split, enough for fine-tuning to change the model."
        },
    )
    sources: tuple[str, ...] = field(
        default=corpus.DEFAULT_SOURCES,
        metadata={"help": "A corpus source (repeatable) [default: all of them]."},
    )
    model: str = field(default=DEFAULT_CAUSAL, metadata=_help("model"))
    seq_len: int = field(
        default=64,
        metadata=_help("seq_len", "Target tokens per window: 64 gives context to every position."),
    )
    batch_tokens: int = field(
        default=512,
        metadata=_help(
            "batch_tokens",
            "Target tokens per step: 8 windows of 64, whose lookahead the batched engine "
            "serves in a few forwards of ~1k rows (`tree_tokens`).",
        ),
    )
    lr: float = field(default=1e-4, metadata=_help("lr"))
    beams: int = field(default=4, metadata=_help("beams"))
    depth: int = field(default=2, metadata=_help("depth"))
    particles: int = field(default=8, metadata=_help("particles"))
    beta: float = field(default=2.0, metadata=_help("beta"))
    alpha: float = field(default=0.5, metadata=_help("alpha"))
    balance_cap: float = field(default=10.0, metadata=_help("balance_cap"))
    retrain_every: int = field(default=50, metadata=_help("retrain_every"))
    amplifier_windows: int = field(default=16, metadata=_help("amplifier_windows"))
    amplifier_steps: int = field(default=200, metadata=_help("amplifier_steps"))
    eval_every: int = field(
        default=100,
        metadata=_help(
            "eval_every",
            "Steps between dev evaluations: about 20 points on a 1M-token run's curves.",
        ),
    )
    dev_positions: int = field(
        default=2048,
        metadata=_help(
            "dev_positions",
            "Dev positions per evaluation: a paired change of a few thousandths of a nat "
            "needs a few thousand (standard errors shrink as 1/sqrt(positions)).",
        ),
    )
    dev_stride: int = field(
        default=4,
        metadata=_help("dev_stride", "Score every 4th dev token: more documents, less overlap."),
    )
    tree_tokens: int = field(default=1024, metadata=_help("tree_tokens"))
    checkpoint_every: int = field(
        default=1,
        metadata={
            "help": "Steps between checkpoints (also after every evaluation): 1 loses no "
            "finished step to a kill; a checkpoint of SmolLM2-135M (weights and AdamW "
            "moments, 1.6 GB) takes a few seconds, small next to a step on a CPU."
        },
    )
    device: str = "cpu"  # no option: the study's device is `--device` of the command

    def validate(self) -> StudyConfig:
        """Check the study's own fields and every run's config; UserError on bad input."""
        if not self.name or not self.name.strip() or "/" in self.name:
            raise UserError(f"study name must be non-empty and have no '/', got {self.name!r}")
        if not self.variants:
            raise UserError("give at least one variant")
        for v in self.variants:
            if v not in VARIANTS:
                raise UserError(f"variant must be one of {', '.join(VARIANTS)}, got {v!r}")
        if len(set(self.variants)) != len(self.variants):
            raise UserError("a variant is named twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"give distinct seeds, got {list(self.seeds)}")
        if any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise UserError(f"seeds must be 0 or more, got {list(self.seeds)}")
        for s in self.sources:
            if s not in corpus.SOURCES:
                raise UserError(
                    f"unknown corpus source {s!r}; choose from {', '.join(corpus.SOURCES)}"
                )
        if not isinstance(self.train_tokens, int) or self.train_tokens < self.batch_tokens:
            raise UserError(
                f"train-tokens ({self.train_tokens}) must be at least batch-tokens "
                f"({self.batch_tokens})"
            )
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise UserError(f"checkpoint-every must be at least 1, got {self.checkpoint_every}")
        self.run_config(self.variants[0], self.seeds[0])  # validates the run settings
        return self

    @property
    def steps(self) -> int:
        return self.train_tokens // self.batch_tokens

    def run_config(self, variant: str, seed: int) -> StuntConfig:
        shared = {f.name for f in dataclasses.fields(StuntConfig)} & {
            f.name for f in dataclasses.fields(self)
        }
        values = {name: getattr(self, name) for name in shared}
        return StuntConfig(**values, variant=variant, seed=seed, steps=self.steps).validate()  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return out | {k: list(v) for k, v in out.items() if isinstance(v, tuple)}


@dataclass(frozen=True)
class StudyData:
    """The study's training windows and dev documents, and what they are."""

    windows: torch.Tensor
    dev: list[Document]
    description: dict[str, Any]


def load_study_data(lm: LoadedModel, config: StudyConfig) -> StudyData:
    """Train and dev splits of the corpus; UserError if a source is missing or they overlap."""
    train_docs = corpus.load_corpus("train", config.sources)
    dev_docs = corpus.load_corpus("dev", config.sources)
    overlap = {d.key for d in train_docs} & {d.key for d in dev_docs}
    if overlap:  # the split is by content; this would be a bug in it
        raise UserError(f"dev documents are also in the training split: {sorted(overlap)[:3]}")
    train = [Document(d.source, i, d.text) for i, d in enumerate(train_docs)]
    dev = [Document(d.source, i, d.text) for i, d in enumerate(dev_docs)]
    windows = training_windows(lm, train, config.seq_len)
    tokens = int(windows.shape[0]) * config.seq_len
    return StudyData(
        windows=windows,
        dev=dev,
        description={
            "train_documents": len(train),
            "train_tokens_available": tokens,
            "epochs": config.steps * config.batch_tokens / tokens,
            "dev_documents": len(dev),
            "dev_sources": sorted({d.source for d in dev}),
            "test_split_read": False,
        },
    )


def _find(store: LogStore, kind: str, **match: Any) -> dict[str, Any] | None:
    for exp in store.experiments(kind=kind):  # newest first
        if all(exp["config"].get(k) == v for k, v in match.items()):
            return exp
    return None


def run_study(
    lm: LoadedModel,
    config: StudyConfig,
    store: LogStore,
    folder: Path,
    progress: Progress | None = None,
    data: StudyData | None = None,
) -> dict[str, Any]:
    """Run (or resume) every run of the study; the study's stored summary.

    `folder` holds one checkpoint folder per run. Ctrl-C stores the current run as
    interrupted (resumable) and re-raises KeyboardInterrupt.
    """
    config.validate()
    wanted = config.to_dict()
    study = _find(store, KIND, name=config.name)
    if study is not None and study["config"].get("study") != wanted:
        raise UserError(
            f"study {config.name!r} (experiment {study['id']}) was started with other "
            "settings; resume it with the same options or choose another --name"
        )
    data = data or load_study_data(lm, config)
    if study is None:
        stored = {"name": config.name, "study": wanted, "data": data.description}
        study_id = store.add_experiment(KIND, stored, {}, [], status="running")
    else:
        study_id = study["id"]
    study_rows = store.experiment(study_id)["rows"]
    first = next((r for r in study_rows if r["kind"] == "first_eval"), None)
    if first is None:
        first = {"kind": "first_eval", **evaluate_dev(lm, data.dev, config.run_config("none", 0))}
        store.append_experiment_rows(study_id, [first])
    first_eval = {k: v for k, v in first.items() if k != "kind"}
    done = {(r["variant"], r["seed"]) for r in study_rows if r["kind"] == "run"}
    for seed in config.seeds:
        for variant in config.variants:
            if (variant, seed) in done:
                continue
            found = _run_one(lm, config, store, folder, data, variant, seed, first_eval, progress)
            store.append_experiment_rows(study_id, [found])
            # Only now, with the run recorded as done, is its checkpoint of no more use: it
            # holds the weights and AdamW moments (1.6 GB for SmolLM2-135M).
            remove_checkpoint(folder / f"{variant}-seed{seed}")
    summary = summarise_study([store.experiment(i) for i in run_ids(store, study_id)])
    store.update_experiment(study_id, status="finished", summary=summary)
    return summary


def _run_one(
    lm: LoadedModel,
    config: StudyConfig,
    store: LogStore,
    folder: Path,
    data: StudyData,
    variant: str,
    seed: int,
    first_eval: dict[str, Any],
    progress: Progress | None,
) -> dict[str, Any]:
    run_cfg = config.run_config(variant, seed)
    where = folder / f"{variant}-seed{seed}"
    exp = _find(store, RUN_KIND, study=config.name, variant=variant, seed=seed)
    resume = None
    if exp is None:
        stored = run_cfg.to_dict() | {"study": config.name, "checkpoints": str(where)}
        exp_id = store.add_experiment(RUN_KIND, stored, {}, [], status="running")
    else:
        exp_id = exp["id"]
        loaded = load_checkpoint(where)
        rows = store.experiment(exp_id)["rows"]
        if loaded is not None:
            resume = resume_from(*loaded, rows)
        store.truncate_experiment_rows(exp_id, len(resume.rows) if resume else 0)
        store.update_experiment(exp_id, status="running")

    def report(done: int, total: int, latest: dict[str, Any]) -> None:
        if progress is not None:
            progress(variant, seed, done, total, latest)

    def on_row(row: dict[str, Any]) -> None:
        store.append_experiment_rows(exp_id, [row])

    def on_checkpoint(snap: Snapshot) -> None:
        save_checkpoint(where, snap)

    hooks = Hooks(on_row, on_checkpoint, config.checkpoint_every)
    try:
        result = run_stunt(
            lm,
            [],
            data.dev,
            run_cfg,
            report,
            windows=data.windows,
            hooks=hooks,
            resume=resume,
            first_eval=with_monitor(first_eval, variant),
        )
    except BaseException:
        store.update_experiment(exp_id, status="interrupted")
        raise
    store.update_experiment(exp_id, status=result.status, summary=result.summary)
    if result.interrupted:
        raise KeyboardInterrupt
    if result.amplifier is not None:
        save_amplifier(result.amplifier, where / "amplifier", {"fit_on": config.model})
    return {"kind": "run", "variant": variant, "seed": seed, "experiment_id": exp_id}


def run_ids(store: LogStore, study_id: int) -> list[int]:
    """The stored run experiments of a study, in the order they were run."""
    return [r["experiment_id"] for r in store.experiment(study_id)["rows"] if r["kind"] == "run"]


# -- the study's numbers ------------------------------------------------------------------------

REPORT_KEYS = (
    ("dev_ll_change", "Δ dev LL"),
    ("gain_0.1_change", "Δ beam gain .1"),
    ("particle_gain_0.1_change", "Δ particle gain .1"),
    ("monitor_gain_0.1_change", "Δ monitor gain .1"),
    ("amplifier_gain_end", "amplifier gain end"),
)


def _mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def summarise_study(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: seeds finished, and the mean and standard error over seeds of each run's
    change from step 0 (dev LL, gains) and of its cost per step."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["summary"].get("variant", "?"), []).append(run)
    out: dict[str, Any] = {}
    for variant, group in by_variant.items():
        done = [r for r in group if r["status"] == "finished"]
        entry: dict[str, Any] = {"seeds": len(done), "monitor": group[0]["summary"].get("monitor")}
        for key, _ in REPORT_KEYS:
            vals = [r["summary"][key] for r in done if r["summary"].get(key) is not None]
            entry[key], entry[f"{key}_se"] = _mean_se(vals)
        entry["seconds_per_step"], _ = _mean_se([s for r in done if (s := step_seconds(r))])
        entry["checkpoint_seconds_per_step"], _ = _mean_se(
            [s for r in done if (s := step_seconds(r, ("checkpoint",)))]
        )
        entry["eval_seconds"], _ = _mean_se([s for r in done if (s := eval_seconds(r))])
        out[variant] = entry
    return out


def step_seconds(
    run: dict[str, Any], parts: Sequence[str] = ("lookahead", "update", "amplifier")
) -> float | None:
    """Seconds per step of a stored run spent on `parts` (by default training: lookahead,
    update, amplifier refits; checkpoints and dev evaluations apart)."""
    s = run["summary"]
    cost, steps = s.get("cost") or {}, s.get("steps_done")
    if not steps:
        return None
    return sum(cost.get(f"{k}_seconds", 0.0) for k in parts) / steps


def eval_seconds(run: dict[str, Any]) -> float | None:
    """Seconds per dev evaluation the run made itself (the shared step-0 one is not its)."""
    s = run["summary"]
    own = (s.get("evaluations") or 0) - 1
    seconds = (s.get("cost") or {}).get("eval_seconds")
    return seconds / own if own > 0 and seconds else None


def study_figure(runs: Sequence[dict[str, Any]], title: str) -> Figure:
    """Mean ± standard error over seeds, per variant, of dev LL and each lookahead gain over
    training steps (evaluations at the same steps in every run)."""
    if not runs:
        raise UserError("the study has no finished run to draw")
    fig = Figure(figsize=(15, 8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    panels = [
        (axes[0][0], "dev_ll", "dev mean log-likelihood of p"),
        (axes[0][1], "gain_0.1", "beam gain at λ = 0.1"),
        (axes[0][2], "particle_gain_0.1", "particle gain at λ = 0.1"),
        (axes[1][0], "monitor_gain_0.1", "monitor: gain of the form not stunted, λ = 0.1"),
        (axes[1][1], "amplifier_gain", "learned amplifier gain"),
        (axes[1][2], "gain_0.01", "beam gain at λ = 0.01"),
    ]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["summary"].get("variant", "?"), []).append(run)
    for variant, group in by_variant.items():
        for ax, key, _ in panels:
            per_step: dict[int, list[float]] = {}
            for run in group:
                for r in run["rows"]:
                    if r.get("kind") == "eval" and r.get(key) is not None:
                        per_step.setdefault(r["step"], []).append(r[key])
            steps = sorted(per_step)
            if not steps:
                continue
            stats = [_mean_se(per_step[s]) for s in steps]
            mean = [0.0 if m is None else m for m, _ in stats]
            se = [e or 0.0 for _, e in stats]
            label = f"{variant} ({len(group)} seed{'s' if len(group) > 1 else ''})"
            color = f"C{VARIANTS.index(variant)}" if variant in VARIANTS else None
            ax.plot(steps, mean, marker="o", label=label, color=color)
            ax.fill_between(
                steps,
                [m - e for m, e in zip(mean, se, strict=True)],
                [m + e for m, e in zip(mean, se, strict=True)],
                color=color,
                alpha=0.2,
            )
    for ax, _, name in panels:
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: mean ± standard error over seeds")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)))
    return fig


def study_runs(store: LogStore, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored study called `name` and its runs (finished or not); UserError if none."""
    study = _find(store, KIND, name=name)
    if study is None:
        raise UserError(f"no study named {name!r} in {store.path}; run `evolve stunt-study` first")
    runs = [
        store.experiment(e["id"])
        for e in reversed(store.experiments(kind=RUN_KIND))
        if e["config"].get("study") == name
    ]
    return study, runs

"""Pictures of a run: fitness per generation, the comparison chart, the best's ancestry.

Each function returns a matplotlib `Figure` (a notebook shows it; `save_figures` writes PNGs,
which is what `evolve plot` does).

Meant to be read without the terminal, so each has a title naming the run, axis labels with
units and a legend. Figures are built as `matplotlib.figure.Figure` objects on the Agg
canvas, never through pyplot: no global figure state and no display needed, so plotting
works the same in tests, over ssh and in threads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from evolve.experiments.compare import Comparison
from evolve.store import LogStore
from scoring.errors import UserError

DPI = 120
LABEL_CHARS = 60  # the best text's label on the lineage picture


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _short(text: str, n: int = LABEL_CHARS) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 1] + "…"


def _wrap(text: str, width: int) -> list[str]:
    """Words of `text` in lines of at most about `width` characters (tick labels)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def plot_fitness(stats: Sequence[dict[str, Any]], title: str, ylabel: str) -> Figure:
    """Best and mean fitness per generation, with the worst..best range and mean ± std bands."""
    if not stats:
        raise UserError("the run has no generations to plot")
    gens = [s["generation"] for s in stats]
    best = [s["best"] for s in stats]
    mean = [s["mean"] for s in stats]
    worst = [s["worst"] for s in stats]
    std = [s["std"] or 0.0 for s in stats]
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.fill_between(gens, worst, best, color="tab:blue", alpha=0.12, label="worst to best")
    # Clipped to the population's range: with a skewed population mean + std can pass the
    # best, which would draw a band where no individual is.
    ax.fill_between(
        gens,
        [max(m - s, w) for m, s, w in zip(mean, std, worst, strict=True)],
        [min(m + s, b) for m, s, b in zip(mean, std, best, strict=True)],
        color="tab:orange",
        alpha=0.25,
        label="mean ± std (within worst..best)",
    )
    ax.plot(gens, best, marker="o", color="tab:blue", label="best")
    ax.plot(gens, mean, marker=".", color="tab:orange", label="mean")
    ax.set_title(title)
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    return fig


def plot_comparison(cmp: Comparison) -> Figure:
    """Grouped bars per method: PLL per token (both variants) and causal log-prob per token."""
    series = [
        ("pll_tok", f"PLL/token, original ({cmp.mlm})", "tab:blue"),
        ("pll_l2r_tok", f"PLL/token, word_l2r ({cmp.mlm})", "tab:cyan"),
        ("causal_tok", f"causal log p/token ({cmp.causal})", "tab:red"),
    ]
    labels = ["\n".join([r.method, *_wrap(r.settings, 22), f"(n={r.n})"]) for r in cmp.rows]
    width = 0.8 / len(series)
    fig = _figure(max(7.0, 1.6 * len(cmp.rows) + 1.5), 5.5)
    ax = fig.add_subplot()
    for k, (key, name, color) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(cmp.rows))]
        values = [getattr(r, key) for r in cmp.rows]
        bars = ax.bar(
            xs, [v if v is not None else 0.0 for v in values], width, label=name, color=color
        )
        ax.bar_label(
            bars,
            labels=[f"{v:.2f}" if v is not None else "" for v in values],
            fontsize=7,
            padding=2,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cmp.rows)), labels, fontsize=8)
    ax.set_ylabel("mean log-probability per token (nats; higher is better)")
    ax.set_title(f"Run {cmp.run_id}: evolved texts against baselines")
    ax.grid(axis="y", alpha=0.3)
    low = min((getattr(r, key) or 0.0) for r in cmp.rows for key, _, _ in series)
    ax.set_ylim(low * 1.12 if low < 0 else -1.0, 0)  # room below the bars for their labels
    fig.legend(loc="outside lower center", ncols=len(series), fontsize=8)
    return fig


def plot_lineage(rows: Sequence[dict[str, Any]], title: str) -> Figure:
    """The ancestry of one individual: nodes at (generation, position), edges parent → child.

    `rows` is `LogStore.lineage(individual_id)` (the individual itself at depth 0). Nodes and
    the edges into them are coloured by the operator that made the child.
    """
    if not rows:
        raise UserError("no ancestry to plot")
    by_id = {r["id"]: r for r in rows}
    ops = sorted({r["op"] for r in rows})
    palette = [f"C{i}" for i in range(10)]
    color = {op: palette[i % len(palette)] for i, op in enumerate(ops)}
    fig = _figure(max(7.5, 0.7 * (max(r["generation"] for r in rows) + 1) + 3), 5.5)
    ax = fig.add_subplot()
    for child in rows:
        for parent_id in child["parents"]:
            parent = by_id.get(parent_id)
            if parent is None:  # cut off by a depth limit
                continue
            ax.annotate(
                "",
                xy=(child["generation"], child["position"]),
                xytext=(parent["generation"], parent["position"]),
                arrowprops={
                    "arrowstyle": "->",
                    "color": color[child["op"]],
                    "alpha": 0.7,
                    "shrinkA": 4,
                    "shrinkB": 4,
                },
            )
    for op in ops:
        nodes = [r for r in rows if r["op"] == op]
        ax.scatter(
            [r["generation"] for r in nodes],
            [r["position"] for r in nodes],
            s=40,
            color=color[op],
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
        )
    target = min(rows, key=lambda r: r["depth"])
    ax.scatter(
        [target["generation"]],
        [target["position"]],
        s=220,
        marker="*",
        color="gold",
        edgecolors="black",
        zorder=4,
    )
    handles = [Line2D([], [], marker="o", linestyle="-", color=color[op], label=op) for op in ops]
    handles.append(
        Line2D(
            [],
            [],
            marker="*",
            linestyle="",
            color="gold",
            markersize=12,
            label=f"id {target['id']}",
        )
    )
    ax.legend(
        handles=handles, title="made by", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8
    )
    fitness = target["fitness"]
    scored = f", fitness {fitness:.3f}" if fitness is not None else ""
    ax.set_title(f"{title}\nid {target['id']}{scored}: {_short(target['text'])!r}", fontsize=10)
    ax.set_xlabel("generation")
    ax.set_ylabel("position in the population")
    gens = sorted({r["generation"] for r in rows})
    ax.set_xticks(range(gens[0], gens[-1] + 1))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    positions = [r["position"] for r in rows]
    ax.set_ylim(min(positions) - 0.8, max(positions) + 0.8)
    ax.invert_yaxis()  # position 0 (the elite slot) on top, as in a printed population
    ax.margins(x=0.08)
    ax.grid(alpha=0.2)
    return fig


def writable_dir(out_dir: Path) -> Path:
    """Make `out_dir` (and its parents) and check that a file can be written in it; UserError
    with one line otherwise. Called before the comparison scores texts, so an unwritable
    --out costs no model time and leaves nothing half done. The check writes a file rather
    than asking os.access, which says yes to root and knows nothing of read-only mounts."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot write plots to {out_dir}: {reason}") from None
    return out_dir


def plot_run(store: LogStore, run_id: int, comparison: Comparison) -> dict[str, Figure]:
    """The three pictures of a run, by file stem: fitness, compare, lineage."""
    store.run(run_id)  # StoreError if there is no such run
    stats = store.generation_stats(run_id)
    best = store.best(run_id, 1)
    if not best:
        raise UserError(f"run {run_id} has no scored individual yet; nothing to plot")
    fitness_name = store.run(run_id)["fitness"] or "fitness"
    ancestry = store.lineage(best[0]["id"])
    return {
        "fitness": plot_fitness(
            stats, f"Run {run_id}: fitness per generation", f"fitness ({fitness_name})"
        ),
        "compare": plot_comparison(comparison),
        "lineage": plot_lineage(
            ancestry,
            f"Run {run_id}: ancestry of the best individual ({len(ancestry)} individuals)",
        ),
    }


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Write each figure as `<name>.png` into `out_dir` (made if missing); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        paths.append(path)
    return paths

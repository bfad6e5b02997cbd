"""`evolve lineage`: the ancestry of an individual, with what each edit changed.

Every edit is shown with the word-level diff of the child against its parents
(`evolve.experiments.worddiff`), in git's word-diff style; `--json` gives the same as data
(keys in README, kept stable).

Registered with the store's commands (`cli.store_cmds.COMMANDS`).
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import COUNT, ID, db_option, open_for_reading
from cli.tables import echo_json as _echo_json
from cli.tables import escape as _escape
from cli.tables import format_cell
from evolve.experiments.worddiff import Piece, edit_pieces
from evolve.store import LogStore


def lineage_records(store: LogStore, individual_id: int, max_depth: int | None) -> list[dict]:
    """The ancestry of an individual with, for every edit, the word-level diff of the child
    against its parents (`evolve.experiments.worddiff`): runs of pieces with their kind."""
    rows = store.lineage(individual_id, max_depth=max_depth)
    texts = {row["id"]: row["text"] for row in rows}
    out = []
    for row in rows:
        parents = row["parents"]
        for pid in parents:
            if pid not in texts:  # beyond --max-depth
                texts[pid] = store.individual(pid)["text"]
        pieces = edit_pieces(row["text"], [texts[p] for p in parents]) if parents else []
        out.append(
            {
                "depth": row["depth"],
                "id": row["id"],
                "run_id": row["run_id"],
                "generation": row["generation"],
                "position": row["position"],
                "op": row["op"],
                "span": None if row["span_start"] is None else [row["span_start"], row["span_end"]],
                "fitness": row["fitness"],
                "parents": parents,
                "text": row["text"],
                "diff": _runs_of(pieces),
                "scores": row.get("scores") or {},
            }
        )
    return out


def _runs_of(pieces: list[Piece]) -> list[dict[str, str]]:
    """Consecutive pieces of one kind joined: [{"kind", "text"}, ...]."""
    out: list[dict[str, str]] = []
    for piece in pieces:
        if out and out[-1]["kind"] == piece.kind:
            out[-1]["text"] += piece.text
        else:
            out.append({"kind": piece.kind, "text": piece.text})
    return out


def diff_text(diff: list[dict[str, str]], parents: list[int]) -> str:
    """A diff as one line, in git's word-diff style: [-deleted-] {+inserted+}, and for a
    crossover [#ID: words] for the words that came from parent ID."""
    out = []
    for part in diff:
        text, kind = part["text"], part["kind"]
        stripped = text.lstrip()
        space = text[: len(text) - len(stripped)]
        if kind == "same" or not stripped:
            out.append(text)
        elif kind == "insert":
            out.append(f"{space}{{+{stripped}+}}")
        elif kind == "delete":
            out.append(f"{space}[-{stripped}-]")
        else:
            out.append(f"{space}[#{parents[int(kind[-1])]}: {stripped}]")
    return _escape("".join(out))


@click.command()
@click.argument("individual_id", type=ID)
@click.option(
    "--max-depth",
    type=COUNT,
    default=None,
    help="Stop this many generations back (default: back to the first).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys in README).")
@db_option
def lineage(individual_id: int, max_depth: int | None, as_json: bool, db_path: Path | None) -> None:
    """The ancestry of an individual: every edit that led to it, nearest first, with the full
    texts and what each edit changed ([-deleted-] {+inserted+}, [#ID: from parent ID])."""
    with open_for_reading(db_path) as store:
        me = store.individual(individual_id)
        records = lineage_records(store, individual_id, max_depth)
        if as_json:
            _echo_json(
                {
                    "individual": {
                        "id": me["id"],
                        "run_id": me["run_id"],
                        "generation": me["generation"],
                        "op": me["op"],
                        "fitness": me["fitness"],
                        "text": me["text"],
                        "full_text": me["full_text"],
                    },
                    "lineage": records,
                }
            )
            return
        click.echo(
            f"Individual {me['id']}: run {_escape(me['run_id'])}, generation "
            f"{_escape(me['generation'])}, op {_escape(me['op'])}, "
            f"fitness {format_cell(me['fitness']) or '-'}"
        )
        click.echo(_escape(me["full_text"]))
        for a in records:
            span = "" if a["span"] is None else f" span {a['span'][0]}:{a['span'][1]}"
            parents = ",".join(str(p) for p in a["parents"]) or "-"
            click.echo(
                f"\ndepth {a['depth']}  gen {_escape(a['generation'])}  id {a['id']}  "
                f"{_escape(str(a['op']) + span)}  "
                f"fitness {format_cell(a['fitness']) or '-'}  parents {_escape(parents)}"
            )
            click.echo(f"  text: {_escape(a['text'])}")
            if a["parents"]:
                click.echo(f"  diff: {diff_text(a['diff'], a['parents'])}")

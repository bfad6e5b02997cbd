"""What the pages show, made from what the store read (`evolve.store.web_queries`).

The store runs the SQL on Datasette's read-only connections and returns plain dicts; here
they become what a template shows: a run's name and status, its config as dotted pairs, the
comparison of its best text with its baselines, and an individual's ancestry as a tree. So
the pages can be tested on plain dicts, without a server. Values a crafted file holds where a
number or JSON belongs (SQLite lets it) are shown as text or left out, never trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from markupsafe import Markup

from evolve.store import config_items, shown_status
from evolve.store.web_queries import AncestryRead, RunRead
from evolve.web.highlight import edit_pieces, to_html

N_BEST = 10  # distinct best texts on a run page: a screenful
MAX_ANCESTORS = 3000  # ancestry rows read for one tree; a 100 x 30 run fits whole


def _json(value: str | None, default: Any) -> Any:
    try:
        return json.loads(value) if value else default
    except (ValueError, TypeError):  # a hand-edited row must not take the page down
        return default


def _number(value: Any) -> float | None:
    """A stored number, or None where a crafted file holds something else in its place."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def tags_of(value: Any) -> list[str]:
    """A run's tags (a JSON list in `runs.tags`) as strings; [] where there are none."""
    tags = _json(value, [])
    return [str(t) for t in tags] if isinstance(tags, list) else [str(tags)]


def label(run: Mapping[str, Any]) -> str:
    """How pages name a run: its own name, or "run N · model" when it has none."""
    if run.get("name"):
        return str(run["name"])
    # A model given as a folder is named by its last part: the path is on the run page.
    model = PurePath(str(run["mlm"])).name if run.get("mlm") else ""
    return f"run {run['id']} · {model}" if model else f"run {run['id']}"


# -- home --------------------------------------------------------------------------------------


def runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run as the home page lists it (rows of `web_queries.runs`, newest first): name
    (its own, or "run N · model"), tags, note, prompt, status, progress and best text so far."""
    out = []
    for row in rows:
        row["status"] = shown_status(row)
        for key in ("pid", "host", "process"):
            row.pop(key)
        row["name"] = label(row)
        row["tags"] = tags_of(row["tags"])
        row["created_at"] = _text(row["created_at"])
        out.append(row)
    return out


# -- run page ----------------------------------------------------------------------------------


def run(read: RunRead | None) -> dict[str, Any] | None:
    """One run with config, generation statistics, best texts and baselines; None if absent."""
    if read is None:
        return None
    row = read.run
    row["status"] = shown_status(row)
    row["label"] = label(row)
    row["tags"] = tags_of(row.get("tags"))
    config = _json(row["config"], {})
    row["config_items"] = config_items(
        config if isinstance(config, Mapping) else {"config": config}
    )
    row["generations"] = read.generations
    # Best distinct texts: an elite copied for 20 generations is one text, not 20 rows.
    row["best"] = read.best
    row["comparison"] = _comparison(read)
    return row


def _comparison(read: RunRead) -> dict[str, Any]:
    """The run's best text and its baselines with their stored scores, one column per scorer.

    Scores are read from `scores` keyed by (text, prompt, scorer); a cell is the mean per
    token (total / n_tokens), the number the comparison table of `evolve compare` shows.
    """
    texts: list[dict[str, Any]] = []
    best = read.fittest
    if best is not None:
        texts.append(
            {
                "label": "evolved best",
                "individual_id": best["id"],
                "text": best["text"],
                "text_id": best["text_id"],
                "prefix_id": read.prompt_id,
                "seed": None,
                "params": "",
            }
        )
    for b in read.baselines:
        texts.append(
            {
                "label": f"{b['method']} ({b['model'] or '?'})",
                "individual_id": None,
                "text": b["text"],
                "text_id": b["text_id"],
                "prefix_id": b["prompt_id"],
                "seed": b["seed"],
                "params": b["params"] or "",
                "baseline_id": b["id"],
            }
        )
    scorers: list[str] = []
    for entry in texts:
        entry["scores"] = {}
        for s in read.scores[(entry["text_id"], entry["prefix_id"])]:
            total, n = _number(s["total"]), _number(s["n_tokens"])
            mean = total / n if total is not None and n else None
            entry["scores"][s["scorer"]] = {**s, "mean": mean}
            if s["scorer"] not in scorers:
                scorers.append(s["scorer"])
    n_best = 0 if best is None else 1
    return {"rows": texts, "scorers": sorted(scorers), "n_baselines": len(texts) - n_best}


# -- individual page: the ancestry tree ----------------------------------------------------------


@dataclass
class Node:
    """One text in the tree: the individual that made it, and the copies that kept it."""

    origin: dict[str, Any]  # the individual whose edit produced the text
    kept_as: list[dict[str, Any]]  # later unchanged copies (elite, copy, mh_reject), newest first
    parents: list[int]  # origin's parents, in order (crossover: parent 0, parent 1)
    gain: float | None  # origin's fitness minus its best parent's
    html: Markup  # the text with its edit marked
    kind: str  # "initial", "mutation", "crossover"
    missing_parents: int = 0  # parents beyond MAX_ANCESTORS, not read
    parent_roles: dict[int, str] = field(default_factory=dict)  # parent id -> "p0" / "p1"


@dataclass
class Ancestry:
    """The individual, its run's prompt, and its ancestry folded into Nodes."""

    individual: dict[str, Any]
    prompt: str
    root: int  # origin id of the root node
    nodes: dict[int, Node]
    shown_as: dict[int, int]  # every individual read -> the node (origin id) it is shown in
    truncated: bool


def _origin(
    ind_id: int, inds: Mapping[int, dict], parents: Mapping[int, list[int]]
) -> tuple[int, list[dict]]:
    """Follow unchanged single-parent copies back to the individual that made the text."""
    kept: list[dict] = []
    current = ind_id
    while True:
        ps = parents.get(current, [])
        if len(ps) != 1 or ps[0] not in inds or inds[ps[0]]["text"] != inds[current]["text"]:
            return current, kept
        kept.append(inds[current])
        current = ps[0]


def ancestry(read: AncestryRead | None) -> Ancestry | None:
    """The ancestry the store read of one individual as a tree of Nodes (None if there is no
    such id).

    Ancestors reached along several paths (crossover of relatives) appear once in `nodes`;
    chains of unchanged copies are folded into the node of the text's origin.
    """
    if read is None:
        return None
    individual_id, inds, parents = read.individual_id, read.individuals, read.parents
    nodes: dict[int, Node] = {}
    shown_as: dict[int, int] = {}
    todo = [individual_id]
    root: int | None = None
    while todo:
        current = todo.pop()
        if current in shown_as:
            continue
        origin_id, kept = _origin(current, inds, parents)
        shown_as[current] = origin_id
        for copy in kept:
            shown_as[copy["id"]] = origin_id
        if root is None:
            root = origin_id
        if origin_id in nodes:
            listed = {k["id"] for k in nodes[origin_id].kept_as}
            nodes[origin_id].kept_as.extend(k for k in kept if k["id"] not in listed)
            nodes[origin_id].kept_as.sort(
                key=lambda k: (-(_number(k["generation"]) or 0), -(_number(k["id"]) or 0))
            )
            continue
        origin = inds[origin_id]
        origin["detail"] = _json(origin.get("detail"), {})
        ps = parents.get(origin_id, [])
        known = [p for p in ps if p in inds]
        parent_texts = [inds[p]["text"] for p in known]
        fits = [f for p in known if (f := _number(inds[p]["fitness"])) is not None]
        fitness = _number(origin["fitness"])
        gain = fitness - max(fits) if fits and fitness is not None else None
        kind = "initial" if not ps else ("mutation" if len(ps) == 1 else "crossover")
        nodes[origin_id] = Node(
            origin=origin,
            kept_as=kept,
            parents=known,
            gain=gain,
            html=to_html(edit_pieces(_text(origin["text"]), [_text(t) for t in parent_texts])),
            kind=kind,
            missing_parents=len(ps) - len(known),
            parent_roles={p: f"p{i}" for i, p in enumerate(known)} if kind == "crossover" else {},
        )
        todo.extend(reversed(known))
    assert root is not None
    return Ancestry(
        individual=inds[individual_id],
        prompt=read.prompt,
        root=root,
        nodes=nodes,
        shown_as=shown_as,
        truncated=read.truncated,
    )


def walk(tree: Ancestry) -> Iterator[tuple[str, int, int, str]]:
    """Depth-first events over the tree without recursion (trees can be hundreds deep):
    ("open", node id, depth, role) the first time a node is met, ("ref", ...) when it is met
    again, ("close", ...) after its parents."""
    seen: set[int] = set()
    stack: list[tuple[str, int, int, str]] = [("visit", tree.root, 0, "")]
    while stack:
        action, node_id, depth, role = stack.pop()
        if action == "close":
            yield ("close", node_id, depth, role)
            continue
        if node_id in seen:
            yield ("ref", node_id, depth, role)
            continue
        seen.add(node_id)
        yield ("open", node_id, depth, role)
        node = tree.nodes[node_id]
        stack.append(("close", node_id, depth, role))
        for parent in reversed(node.parents):
            target = tree.shown_as.get(parent, parent)
            stack.append(("visit", target, depth + 1, node.parent_roles.get(parent, "")))

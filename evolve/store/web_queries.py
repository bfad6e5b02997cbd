"""The SQL of `evolve serve`: what its pages read, and the canned queries Datasette offers.

Datasette opens its own read-only connections to the served file (`mode=ro`, so SQLite
refuses writes on them, yet each read sees the latest commit of a running `evolve run`) and
hands them to the web code (`Database.execute_fn`, the `prepare_connection` hook). The web
passes them on to the functions here (and to `evolve.store.sql.prepare_served`) and runs no
SQL of its own. Each read returns what its SQL found as plain dicts, without shaping: labels,
statuses, the ancestry tree and HTML are the web's (`evolve.web.pages`), so the web can be
tested on plain dicts and the SQL is the schema's (docs/DESIGN.md), not a second model of it.
Nothing here reads `individuals.scores`: model scores come from the `scores` table.

The values a crafted file holds are passed on as SQLite returns them (text in an INTEGER
column, a NULL prompt): the web shows them as text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evolve.store.core import chunks, text_id

# The connection Datasette hands the web code: the web passes it to the reads below and
# uses it for nothing else.
Connection = sqlite3.Connection


def _rows(conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# -- home: every run -------------------------------------------------------------------------

RUNS_SQL = """
SELECT r.id, r.name, r.tags, r.note, r.created_at, r.finished_at, r.status, r.prompt, r.mlm,
       r.fitness, r.seed, r.generations_done,
       CASE WHEN json_valid(r.config) THEN json_extract(r.config, '$.generations') END
           AS generations_planned,
       r.pid, r.host, r.process,
       b.id AS best_id, b.fitness AS best_fitness, t.text AS best_text
FROM runs r
LEFT JOIN individuals b ON b.id = (
    SELECT id FROM individuals WHERE run_id = r.id AND fitness IS NOT NULL
    ORDER BY fitness DESC, id LIMIT 1)
LEFT JOIN texts t ON t.id = b.text_id
ORDER BY r.id DESC
"""


def runs(conn: Connection) -> list[dict[str, Any]]:
    """Every run, newest first, with its labels, progress, process (pid, host, process) and
    its fittest individual so far (best_id, best_fitness, best_text)."""
    return _rows(conn, RUNS_SQL)


# -- run page ----------------------------------------------------------------------------------

# The fittest individual of each distinct text (a window per text: a correlated subquery per
# text took 7 s on a 30 x 100 run, this takes milliseconds).
BEST_TEXTS_SQL = """
SELECT b.id, b.generation, b.op, b.fitness, t.text
FROM (
    SELECT id, generation, op, fitness, text_id,
           ROW_NUMBER() OVER (PARTITION BY text_id ORDER BY fitness DESC, id) AS rank
    FROM individuals WHERE run_id = ? AND fitness IS NOT NULL
) b
JOIN texts t ON t.id = b.text_id
WHERE b.rank = 1
ORDER BY b.fitness DESC, b.id
LIMIT ?
"""

GENERATIONS_SQL = (
    "SELECT generation, best, mean, std, worst, n_evaluated, n_cache_hits, n_unique, "
    "best_individual_id, seconds FROM generations WHERE run_id = ? ORDER BY generation"
)
FITTEST_SQL = (
    "SELECT i.id, i.text_id, t.text FROM individuals i JOIN texts t ON t.id = i.text_id "
    "WHERE i.run_id = ? AND i.fitness IS NOT NULL ORDER BY i.fitness DESC, i.id LIMIT 1"
)
BASELINES_SQL = (
    "SELECT b.id, b.method, b.model, b.params, b.seed, b.text_id, b.prompt_id, t.text "
    "FROM baselines b JOIN texts t ON t.id = b.text_id WHERE b.run_id = ? ORDER BY b.id"
)
SCORES_SQL = (
    "SELECT scorer, total, n_tokens FROM scores WHERE text_id = ? AND prefix_id = ? ORDER BY scorer"
)


@dataclass
class RunRead:
    """What the run page shows of one run, as read."""

    run: dict[str, Any]  # its `runs` row
    generations: list[dict[str, Any]]  # per-generation statistics, in order
    best: list[dict[str, Any]]  # the fittest individual of each distinct text, best first
    fittest: dict[str, Any] | None  # the fittest individual (id, text_id, text); None: none yet
    prompt_id: str  # the text id of the run's prompt: the prefix_id of its scores
    baselines: list[dict[str, Any]]  # its baselines with their texts, in order
    # Stored scores (scorer, total, n_tokens; by scorer) of the fittest text after the prompt
    # and of each baseline text after its prompt, keyed by (text_id, prefix_id).
    scores: dict[tuple[Any, Any], list[dict[str, Any]]]


def run(conn: Connection, run_id: int, n_best: int) -> RunRead | None:
    """One run with its generations, `n_best` best distinct texts, and its fittest text and
    baselines with their stored scores; None if there is no such run."""
    found = _rows(conn, "SELECT * FROM runs WHERE id = ?", (run_id,))
    if not found:
        return None
    row = found[0]
    generations = _rows(conn, GENERATIONS_SQL, (run_id,))
    best = _rows(conn, BEST_TEXTS_SQL, (run_id, n_best))
    prompt = row["prompt"]
    prompt_id = text_id("" if prompt is None else str(prompt))
    fittest = _rows(conn, FITTEST_SQL, (run_id,))
    baselines = _rows(conn, BASELINES_SQL, (run_id,))
    keys = [(f["text_id"], prompt_id) for f in fittest]
    keys += [(b["text_id"], b["prompt_id"]) for b in baselines]
    return RunRead(
        run=row,
        generations=generations,
        best=best,
        fittest=fittest[0] if fittest else None,
        prompt_id=prompt_id,
        baselines=baselines,
        scores={key: _rows(conn, SCORES_SQL, key) for key in dict.fromkeys(keys)},
    )


# -- individual page: the ancestry ---------------------------------------------------------------

ANCESTRY_SQL = """
WITH RECURSIVE anc(id) AS (
    SELECT ?
    UNION
    SELECT p.parent_id FROM anc JOIN parents p ON p.child_id = anc.id
)
SELECT i.id, i.run_id, i.generation, i.position, i.op, i.fitness, i.span_start, i.span_end,
       i.detail, i.n_tokens, t.text
FROM (SELECT id FROM anc LIMIT ?) a
JOIN individuals i ON i.id = a.id
JOIN texts t ON t.id = i.text_id
"""


@dataclass
class AncestryRead:
    """An individual and its ancestors, as read."""

    individual_id: int
    individuals: dict[int, dict[str, Any]]  # every individual read (ANCESTRY_SQL), by id
    parents: dict[int, list[int]]  # child id -> its parents' ids in order (those with any)
    prompt: Any  # the prompt of the individual's run ("" if the run row is gone)
    truncated: bool  # the ancestry has more individuals than were read


def ancestry(conn: Connection, individual_id: int, limit: int) -> AncestryRead | None:
    """The individual and at most `limit` of its ancestors (itself included), with the
    parents of each; None if there is no such individual."""
    rows = _rows(conn, ANCESTRY_SQL, (individual_id, limit))
    inds = {r["id"]: r for r in rows}
    if individual_id not in inds:
        return None
    parents: dict[int, list[int]] = {}
    for chunk in chunks(list(inds)):
        marks = ",".join("?" * len(chunk))
        for child, parent in conn.execute(
            f"SELECT child_id, parent_id FROM parents WHERE child_id IN ({marks}) "
            "ORDER BY child_id, position",
            chunk,
        ):
            parents.setdefault(child, []).append(parent)
    prompt = conn.execute(
        "SELECT prompt FROM runs WHERE id = ?", (inds[individual_id]["run_id"],)
    ).fetchone()
    return AncestryRead(
        individual_id=individual_id,
        individuals=inds,
        parents=parents,
        prompt=prompt[0] if prompt else "",
        truncated=len(rows) >= limit,
    )


# -- canned queries ------------------------------------------------------------------------------

# Datasette shows each on the database page as a form with one field per `:parameter`.
# Parameters arrive as text; SQLite compares them with integer columns numerically, and
# `:run = ''` lets an empty field mean "every run".
CANNED_QUERIES: dict[str, dict[str, Any]] = {
    "best_texts": {
        "title": "Best texts of a run",
        "description": "The fittest distinct continuations of a run, with where they were made.",
        "sql": """
SELECT b.id, b.generation, b.op, b.fitness, t.text
FROM (
  SELECT id, generation, op, fitness, text_id,
         ROW_NUMBER() OVER (PARTITION BY text_id ORDER BY fitness DESC, id) AS rank
  FROM individuals WHERE run_id = :run AND fitness IS NOT NULL
) b JOIN texts t ON t.id = b.text_id
WHERE b.rank = 1
ORDER BY b.fitness DESC, b.id
LIMIT 20""",
    },
    "fitness_per_generation": {
        "title": "Fitness per generation",
        "description": "Best, mean, spread and lowest fitness of each generation of a run.",
        "sql": """
SELECT generation, best, mean, std, worst, n_evaluated, n_cache_hits, n_unique,
       best_individual_id, seconds
FROM generations WHERE run_id = :run ORDER BY generation""",
    },
    "operator_gains": {
        "title": "Which operators improve",
        "description": "Per operator: children made, how many beat their best parent, the "
        "rate, and mean and best gain. Leave run empty for every run.",
        "sql": """
WITH e AS (
  SELECT c.id, c.op, c.fitness - MAX(p.fitness) AS gain
  FROM individuals c
  JOIN parents pr ON pr.child_id = c.id
  JOIN individuals p ON p.id = pr.parent_id
  WHERE (:run = '' OR c.run_id = :run) AND c.fitness IS NOT NULL
  GROUP BY c.id
)
SELECT op, COUNT(*) AS children, SUM(gain > 0) AS improved,
       ROUND(1.0 * SUM(gain > 0) / COUNT(*), 3) AS improve_rate,
       ROUND(AVG(gain), 4) AS mean_gain, ROUND(MAX(gain), 4) AS best_gain
FROM e GROUP BY op ORDER BY improve_rate DESC, children DESC""",
    },
    "ancestry": {
        "title": "Ancestry of an individual",
        "description": "Every ancestor of an individual with its depth, operator, fitness and "
        "text (the page /-/evolve/individuals/ID draws it as a tree).",
        "sql": """
WITH RECURSIVE anc(id, depth) AS (
  SELECT CAST(:individual AS INTEGER), 0
  UNION
  SELECT p.parent_id, anc.depth + 1 FROM anc JOIN parents p ON p.child_id = anc.id
)
SELECT MIN(anc.depth) AS depth, i.id, i.generation, i.op, i.fitness, i.span_start, i.span_end,
       (SELECT group_concat(parent_id) FROM parents WHERE child_id = i.id) AS parents,
       t.text
FROM anc JOIN individuals i ON i.id = anc.id JOIN texts t ON t.id = i.text_id
GROUP BY i.id
ORDER BY depth, i.generation DESC, i.id""",
    },
    "runs_same_prompt": {
        "title": "Runs compared side by side (same prompt)",
        "description": "Every run with the same prompt as the given run: settings, progress "
        "and best text.",
        "sql": """
SELECT r.id AS run, r.status, r.mlm, r.fitness, r.seed, r.generations_done,
       json_extract(r.config, '$.population') AS population,
       b.fitness AS best_fitness, t.text AS best_text
FROM runs r
LEFT JOIN individuals b ON b.id = (SELECT id FROM individuals WHERE run_id = r.id
                                   AND fitness IS NOT NULL ORDER BY fitness DESC, id LIMIT 1)
LEFT JOIN texts t ON t.id = b.text_id
WHERE r.prompt = (SELECT prompt FROM runs WHERE id = :run)
ORDER BY best_fitness DESC""",
    },
    "baselines_vs_evolved": {
        "title": "Baselines vs evolved for a run",
        "description": "The run's best evolved text and its baselines, with every stored "
        "score (mean = total / n_tokens, per scorer).",
        "sql": """
WITH run AS (SELECT r.id, p.id AS prompt_id FROM runs r
             LEFT JOIN texts p ON p.text = r.prompt WHERE r.id = :run),
best AS (SELECT i.text_id FROM individuals i, run WHERE i.run_id = run.id
         AND i.fitness IS NOT NULL ORDER BY i.fitness DESC, i.id LIMIT 1),
entries AS (
  SELECT 'evolved best' AS source, NULL AS model, best.text_id, run.prompt_id
  FROM best, run
  UNION ALL
  SELECT b.method, b.model, b.text_id, b.prompt_id FROM baselines b, run
  WHERE b.run_id = run.id
)
SELECT e.source, e.model, s.scorer, ROUND(s.total, 4) AS total, s.n_tokens,
       ROUND(s.total / s.n_tokens, 4) AS mean, t.text
FROM entries e JOIN texts t ON t.id = e.text_id
LEFT JOIN scores s ON s.text_id = e.text_id AND s.prefix_id = e.prompt_id
ORDER BY s.scorer, mean DESC""",
    },
}

"""The schema: an ordered list of migrations, each applied once, and the code that applies them.

Each migration runs in its own BEGIN IMMEDIATE transaction and is recorded in `_migrations`,
re-checked inside the write lock (another process may have migrated meanwhile). A schema change
is a new migration appended to `MIGRATIONS`, never an edit of a released one. A database
written by a newer version (migrations this code does not know) is refused untouched.

Migrations use the raw connection (`db.conn`), not the sqlite-utils table API: what a released
migration does must not change with a library upgrade.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database

from evolve.store.core import StoreError, loads, now, prefix_id

# -- migrations 1-3 (released) ---------------------------------------------------------------

_SCHEMA_V1 = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        prompt TEXT NOT NULL,
        seed INTEGER,
        mlm TEXT,
        causal TEXT,
        fitness TEXT,
        config TEXT NOT NULL,
        generations_done INTEGER NOT NULL DEFAULT 0,
        best_individual_id INTEGER,
        versions TEXT,
        error TEXT
    )
    """,
    "CREATE TABLE texts (id TEXT PRIMARY KEY, text TEXT NOT NULL)",
    """
    CREATE TABLE individuals (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        generation INTEGER NOT NULL,
        position INTEGER NOT NULL,
        text_id TEXT NOT NULL REFERENCES texts(id),
        token_ids TEXT NOT NULL,
        n_tokens INTEGER NOT NULL,
        fitness REAL,
        scores TEXT,
        op TEXT NOT NULL,
        span_start INTEGER,
        span_end INTEGER,
        detail TEXT,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX idx_individuals_run_generation ON individuals(run_id, generation)",
    "CREATE INDEX idx_individuals_run_fitness ON individuals(run_id, fitness)",
    "CREATE INDEX idx_individuals_text ON individuals(text_id)",
    """
    CREATE TABLE parents (
        child_id INTEGER NOT NULL REFERENCES individuals(id),
        parent_id INTEGER NOT NULL REFERENCES individuals(id),
        position INTEGER NOT NULL,
        PRIMARY KEY (child_id, position)
    )
    """,
    # Descendant queries and foreign-key checks on delete look parents up by parent_id.
    "CREATE INDEX idx_parents_parent ON parents(parent_id)",
    """
    CREATE TABLE generations (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        generation INTEGER NOT NULL,
        best REAL,
        mean REAL,
        std REAL,
        worst REAL,
        n_evaluated INTEGER,
        n_cache_hits INTEGER,
        n_unique INTEGER,
        best_individual_id INTEGER,
        seconds REAL,
        rng_state TEXT,
        state TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (run_id, generation)
    )
    """,
    """
    CREATE TABLE scores (
        text_id TEXT NOT NULL REFERENCES texts(id),
        prefix_id TEXT NOT NULL,
        scorer TEXT NOT NULL,
        total REAL,
        n_tokens INTEGER,
        per_token TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (text_id, prefix_id, scorer)
    )
    """,
    """
    CREATE TABLE baselines (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id),
        prompt_id TEXT NOT NULL REFERENCES texts(id),
        method TEXT NOT NULL,
        model TEXT,
        params TEXT,
        seed INTEGER,
        text_id TEXT NOT NULL REFERENCES texts(id),
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX idx_baselines_run ON baselines(run_id)",
    """
    CREATE TABLE experiments (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL,
        status TEXT NOT NULL,
        config TEXT,
        summary TEXT
    )
    """,
    """
    CREATE TABLE experiment_rows (
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        idx INTEGER NOT NULL,
        data TEXT,
        PRIMARY KEY (experiment_id, idx)
    )
    """,
    """
    CREATE VIEW individual_texts AS
    SELECT i.run_id, i.generation, i.position, i.id, i.fitness, i.op,
           i.span_start, i.span_end, t.text, r.prompt || t.text AS full_text
    FROM individuals i
    JOIN texts t ON t.id = i.text_id
    JOIN runs r ON r.id = i.run_id
    """,
    # UNION (not UNION ALL) drops repeated (individual, ancestor, depth) rows, so ancestors
    # reached along many crossover paths do not multiply the recursion.
    """
    CREATE VIEW lineage AS
    WITH RECURSIVE anc(individual_id, ancestor_id, depth) AS (
        SELECT id, id, 0 FROM individuals
        UNION
        SELECT anc.individual_id, p.parent_id, anc.depth + 1
        FROM anc JOIN parents p ON p.child_id = anc.ancestor_id
    )
    SELECT individual_id, ancestor_id, depth FROM anc
    """,
    """
    CREATE VIEW edits AS
    SELECT c.id AS child_id, c.run_id, c.generation, c.op, c.span_start, c.span_end,
           c.fitness AS child_fitness, MAX(p.fitness) AS best_parent_fitness,
           c.fitness - MAX(p.fitness) AS gain, COUNT(*) AS n_parents
    FROM individuals c
    JOIN parents pr ON pr.child_id = c.id
    JOIN individuals p ON p.id = pr.parent_id
    GROUP BY c.id
    """,
)


def _m001_initial(db: Database) -> None:
    for statement in _SCHEMA_V1:
        db.conn.execute(statement)


def _m002_pareto(db: Database) -> None:
    """Multi-objective runs (``--fitness nsga2``): each individual's objective values and its
    non-dominated rank within its generation (0 = on the Pareto front); NULL otherwise."""
    db.conn.execute("ALTER TABLE individuals ADD COLUMN objectives TEXT")
    db.conn.execute("ALTER TABLE individuals ADD COLUMN pareto_rank INTEGER")


def _m003_run_process(db: Database) -> None:
    """The process running a run: pid, host name and `process_token` (None on runs from
    before this migration), so a 'running' run whose process died can be recognised."""
    for column in ("pid INTEGER", "host TEXT", "process TEXT"):
        db.conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")


def _m004_one_score_record(db: Database) -> None:
    """Model scores live only in `scores` (text, prompt, scorer): the per-individual JSON
    column `individuals.scores` is converted into rows there and dropped.

    - `runs.prompt_id`: the prompt's text id (the `prefix_id` of the run's scores); the
      prompt is stored in `texts`.
    - `run_texts`: every text a run scored, with the generation that first did (individuals,
      texts undone by Metropolis-Hastings, offspring dropped by survivor selection), so
      `scores_for_run` finds all of them.
    - `individual_scores`: a view of each individual's scores under its run's prompt.

    Old score keys become scorer names from the run's config: ``pll``/``n_tokens`` ->
    ``pll/<variant>/<mlm>`` (``/bf16`` appended for bf16 runs), ``causal``/
    ``causal_n_tokens`` -> ``causal/<causal LM>``. Scores of rejected texts
    (``detail.rejected_scores``, earlier ``rejected_pll``) and of dropped offspring (the
    generation state's ``dropped_scores``) are keyed by token ids only; they are converted
    where the same ids are an individual of the run (whose text is known) and otherwise left
    in the JSON they were written in (a migration has no tokenizer to decode them).
    """
    conn = db.conn
    conn.execute("ALTER TABLE runs ADD COLUMN prompt_id TEXT")
    conn.execute(
        """
        CREATE TABLE run_texts (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            text_id TEXT NOT NULL REFERENCES texts(id),
            generation INTEGER,
            PRIMARY KEY (run_id, text_id)
        )
        """
    )
    runs = conn.execute("SELECT id, prompt, mlm, causal, config FROM runs ORDER BY id").fetchall()
    for run_id, prompt, mlm, causal, config in runs:
        prompt_key = prefix_id(prompt)
        if prompt:
            conn.execute(
                "INSERT OR IGNORE INTO texts (id, text) VALUES (?, ?)", (prompt_key, prompt)
            )
        conn.execute("UPDATE runs SET prompt_id = ? WHERE id = ?", (prompt_key, run_id))
        names = _old_scorer_names(mlm, causal, loads(config, {}) or {})
        found: list[tuple[int, str, dict[str, Any], str]] = []  # generation, text id, scores, at
        by_ids: dict[tuple[int, ...], str] = {}
        by_ids_only: list[tuple[int, list[int], dict[str, Any], str]] = []
        for generation, tid, token_ids, scores, detail, created in conn.execute(
            "SELECT generation, text_id, token_ids, scores, detail, created_at FROM individuals "
            "WHERE run_id = ? ORDER BY generation, position, id",
            (run_id,),
        ).fetchall():
            by_ids.setdefault(tuple(loads(token_ids, [])), tid)
            found.append((generation, tid, loads(scores, {}) or {}, created))
            detail = loads(detail, {}) or {}
            if "rejected_ids" in detail:
                rejected = detail.get("rejected_scores")
                if rejected is None and "rejected_pll" in detail:
                    rejected = {
                        "pll": detail["rejected_pll"],
                        "n_tokens": detail.get("rejected_n_tokens"),
                    }
                by_ids_only.append((generation, detail["rejected_ids"], rejected or {}, created))
        for generation, state, created in conn.execute(
            "SELECT generation, state, created_at FROM generations WHERE run_id = ? "
            "ORDER BY generation",
            (run_id,),
        ).fetchall():
            for ids, scores in (loads(state, {}) or {}).get("dropped_scores", ()):
                by_ids_only.append((generation, ids, scores or {}, created))
        for generation, ids, scores, created in by_ids_only:
            tid = by_ids.get(tuple(ids))
            if tid is not None:
                found.append((generation, tid, scores, created))
        # In the order they were scored (stable: individuals first within a generation), so
        # the score kept for a text scored twice is the one the run's cache held.
        found.sort(key=lambda entry: entry[0])
        for generation, tid, scores, created in found:
            rows = [
                (tid, prompt_key, names[kind], float(scores[total]), int(scores[n]), created)
                for kind, (total, n) in _OLD_SCORE_KEYS.items()
                if scores.get(total) is not None and scores.get(n) is not None and names[kind]
            ]
            conn.executemany(
                "INSERT OR IGNORE INTO scores (text_id, prefix_id, scorer, total, n_tokens, "
                "per_token, created_at) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                rows,
            )
            if rows:
                conn.execute(
                    "INSERT OR IGNORE INTO run_texts (run_id, text_id, generation) VALUES (?, ?, ?)",
                    (run_id, tid, generation),
                )
    conn.execute("ALTER TABLE individuals DROP COLUMN scores")
    conn.execute(
        """
        CREATE VIEW individual_scores AS
        SELECT i.id AS individual_id, i.run_id, i.generation, s.scorer, s.total, s.n_tokens,
               CASE WHEN s.n_tokens > 0 THEN s.total / s.n_tokens END AS mean
        FROM individuals i
        JOIN runs r ON r.id = i.run_id
        JOIN scores s ON s.text_id = i.text_id AND s.prefix_id = r.prompt_id
        """
    )


# Score keys of the dropped `individuals.scores` JSON: (total, token count) per model kind.
_OLD_SCORE_KEYS = {"pll": ("pll", "n_tokens"), "causal": ("causal", "causal_n_tokens")}


def _old_scorer_names(mlm: str | None, causal: str | None, config: dict[str, Any]) -> dict:
    """The scorer names the engine used for a run's PLL and causal scores ('' if no model)."""
    fitness = config.get("fitness") or {}
    pll = f"pll/{fitness.get('variant', 'original')}/{mlm}" if mlm else ""
    if pll and fitness.get("bf16"):
        pll += "/bf16"
    return {"pll": pll, "causal": f"causal/{causal}" if causal else ""}


# Append only: a released migration is never edited (docs/CONTRIBUTING.md, rule 3).
def _m005_rng_state_json(db: Database) -> None:
    """Random states become plain JSON (`evolve.ga.seeding`): earlier versions pickled them,
    and unpickling a column of a shared database can run code. Each pickled state is
    converted without `pickle.loads` (`evolve.store.legacy_rng`); one that does not convert
    becomes NULL (that run then cannot be resumed, and `evolve resume` says so)."""
    from evolve.store.legacy_rng import convert

    rows = db.conn.execute(
        "SELECT run_id, generation, rng_state FROM generations WHERE rng_state IS NOT NULL"
    ).fetchall()
    for run_id, generation, blob in rows:
        new = convert(blob)
        if new != blob:
            db.conn.execute(
                "UPDATE generations SET rng_state = ? WHERE run_id = ? AND generation = ?",
                (new, run_id, generation),
            )


def _m006_run_labels(db: Database) -> None:
    """Labels a researcher gives a run to tell it from the others: a `name` (free text, not
    unique), `tags` (a JSON list of strings, ``[]`` when none; filter with ``json_each``) and
    a `note`. `evolve run --name/--tag/--note` set them, `evolve tag` / `evolve note` change
    them later."""
    db.conn.execute("ALTER TABLE runs ADD COLUMN name TEXT")
    db.conn.execute("ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")
    db.conn.execute("ALTER TABLE runs ADD COLUMN note TEXT")


def _m007_islands(db: Database) -> None:
    """Island runs (``--islands K``, `evolve.ga.islands`): each individual's island (NULL in
    runs without islands), and every migration: which stored individual was copied from
    which island into which, before the step of which generation."""
    db.conn.execute("ALTER TABLE individuals ADD COLUMN island INTEGER")
    db.conn.execute(
        """
        CREATE TABLE migrations (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            generation INTEGER NOT NULL,
            individual_id INTEGER NOT NULL REFERENCES individuals(id),
            from_island INTEGER NOT NULL,
            to_island INTEGER NOT NULL,
            PRIMARY KEY (run_id, generation, individual_id, to_island)
        )
        """
    )
    db.conn.execute("CREATE INDEX idx_migrations_individual ON migrations(individual_id)")


MIGRATIONS: list[Callable[[Database], None]] = [
    _m001_initial,
    _m002_pareto,
    _m003_run_process,
    _m004_one_score_record,
    _m005_rng_state_json,
    _m006_run_labels,
    _m007_islands,
]
SCHEMA_VERSION = len(MIGRATIONS)


# -- applying them -----------------------------------------------------------------------------


def applied_migrations(conn: sqlite3.Connection, where: str) -> dict[str, int]:
    """{name: version} of the recorded migrations; read-only, works before any exist."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).fetchone()
    if not exists:
        return {}
    try:
        rows = conn.execute("SELECT name, version FROM _migrations").fetchall()
    except sqlite3.OperationalError as exc:
        raise StoreError(
            f"{where} has a _migrations table that is not mlm-evolve's ({exc})"
        ) from exc
    return {name: version for name, version in rows}


def check_schema_version(conn: sqlite3.Connection, where: str) -> None:
    """StoreError if the database is unusable or has migrations this code does not know."""
    try:
        applied = applied_migrations(conn, where)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{where} is not a usable mlm-evolve database: {exc}") from exc
    unknown = set(applied) - {fn.__name__ for fn in MIGRATIONS}
    if unknown:
        newest = max(applied.values())
        raise StoreError(
            f"{where} has schema version {newest}, newer than this mlm-evolve "
            f"knows ({SCHEMA_VERSION}); upgrade mlm-evolve to use it"
        )


def migrate(
    db: Database, where: str, transaction: Callable[[], AbstractContextManager[Any]]
) -> None:
    """Apply every migration not yet recorded, each in its own `transaction()`."""
    conn = db.conn
    applied = applied_migrations(conn, where)
    if all(fn.__name__ in applied for fn in MIGRATIONS):
        return
    with transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
        )
    for version, fn in enumerate(MIGRATIONS, start=1):
        # Re-checked inside the write lock: another process may have migrated meanwhile.
        with transaction():
            done = conn.execute(
                "SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)
            ).fetchone()
            if done:
                continue
            fn(db)
            conn.execute(
                "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, fn.__name__, now()),
            )

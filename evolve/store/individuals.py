"""Individuals: a run's individuals as plain records, its best, its Pareto front, lineage.

Every individual of every generation is kept with its parents, the operator and token span
that made it, so the history of a run can be queried with plain SQL (the `individual_texts`,
`lineage`, `edits` and `individual_scores` views do the common joins). Texts are stored once in
`texts`, keyed by a hash; an individual's model scores are rows of `scores` (see
`evolve.store.scores`), attached to every individual these methods return as
``scores = {scorer: {"total", "n_tokens", "mean"}}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from evolve.store.core import StoreError, loads
from evolve.store.generations import GenerationsMixin
from evolve.store.scores import scores_of_individuals


class IndividualsMixin(GenerationsMixin):
    """Reading the `individuals` of runs (see module doc); a Pareto front defaults to the
    last generation (`GenerationsMixin.last_generation`)."""

    def _with_scores(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = scores_of_individuals(self.db, [row["id"] for row in rows])
        for row in rows:
            row["scores"] = by_id[row["id"]]
        return rows

    def population(self, run_id: int, generation: int) -> list[dict[str, Any]]:
        """The individuals of one generation in population order, token ids decoded."""
        self._require_run(run_id)
        rows = self._rows(
            "SELECT i.id, i.position, i.token_ids, t.text, i.fitness, i.op, "
            "i.n_tokens, i.objectives, i.pareto_rank FROM individuals i "
            "JOIN texts t ON t.id = i.text_id "
            "WHERE i.run_id = ? AND i.generation = ? ORDER BY i.position, i.id",
            (run_id, generation),
        )
        for row in rows:
            row["token_ids"] = loads(row["token_ids"], [])
            row["objectives"] = loads(row["objectives"])
        return self._with_scores(rows)

    def individuals(self, run_id: int) -> list[dict[str, Any]]:
        """Every individual of a run as a plain record, by generation and position: id,
        generation, position, text, token_ids, n_tokens, fitness, op, span_start, span_end,
        detail, objectives, pareto_rank, island, parents (ids) and scores."""
        self._require_run(run_id)
        rows = self._rows(
            "SELECT i.id, i.generation, i.position, t.text, i.token_ids, i.n_tokens, i.fitness, "
            "i.op, i.span_start, i.span_end, i.detail, i.objectives, i.pareto_rank, i.island "
            "FROM individuals i JOIN texts t ON t.id = i.text_id "
            "WHERE i.run_id = ? ORDER BY i.generation, i.position, i.id",
            (run_id,),
        )
        return self._records(rows)

    def _records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Individual rows as records: stored JSON decoded, parent ids and scores added."""
        parents = self._parents_of([row["id"] for row in rows])
        for row in rows:
            row["token_ids"] = loads(row["token_ids"], [])
            row["detail"] = loads(row["detail"], {})
            row["objectives"] = loads(row["objectives"])
            row["parents"] = parents[row["id"]]
        return self._with_scores(rows)

    def iter_individuals(self, run_id: int, chunk_size: int = 1000) -> Iterator[dict[str, Any]]:
        """The records of `individuals`, read `chunk_size` at a time (for export: a run of
        millions of individuals is never held in memory at once)."""
        self._require_run(run_id)
        after = (-1, -1, -1)
        while True:
            rows = self._rows(
                "SELECT i.id, i.generation, i.position, t.text, i.token_ids, i.n_tokens, "
                "i.fitness, i.op, i.span_start, i.span_end, i.detail, i.objectives, "
                "i.pareto_rank, i.island FROM individuals i JOIN texts t ON t.id = i.text_id "
                "WHERE i.run_id = ? AND (i.generation, i.position, i.id) > (?, ?, ?) "
                "ORDER BY i.generation, i.position, i.id LIMIT ?",
                (run_id, *after, chunk_size),
            )
            if not rows:
                return
            yield from self._records(rows)
            last = rows[-1]
            after = (last["generation"], last["position"], last["id"])

    def iter_edits(self, run_id: int, chunk_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Rows of the `edits` view for one run (every individual made from parents: child
        id, generation, op, span, child and best parent fitness, gain, parent count) with
        the parent ids, by child id, `chunk_size` at a time."""
        self._require_run(run_id)
        after = -1
        while True:
            rows = self._rows(
                "SELECT * FROM edits WHERE run_id = ? AND child_id > ? ORDER BY child_id LIMIT ?",
                (run_id, after, chunk_size),
            )
            if not rows:
                return
            parents = self._parents_of([row["child_id"] for row in rows])
            for row in rows:
                row["parents"] = parents[row["child_id"]]
            yield from rows
            after = rows[-1]["child_id"]

    def run_scorers(self, run_id: int) -> list[str]:
        """The names of the scorers that scored the individuals of a run, sorted."""
        self._require_run(run_id)
        rows = self.db.conn.execute(
            "SELECT DISTINCT scorer FROM individual_scores WHERE run_id = ? ORDER BY scorer",
            (run_id,),
        ).fetchall()
        return [row[0] for row in rows]

    def pareto_front(self, run_id: int, generation: int | None = None) -> list[dict[str, Any]]:
        """The distinct texts on the Pareto front (pareto_rank 0) of a generation (default:
        the last one), best scalar fitness first; empty for a single-objective run."""
        self._require_run(run_id)
        if generation is None:
            last = self.last_generation(run_id)
            if last is None:
                return []
            generation = last["generation"]
        rows = self._rows(
            "SELECT MIN(i.id) AS id, i.generation, i.fitness, i.objectives, t.text "
            "FROM individuals i JOIN texts t ON t.id = i.text_id "
            "WHERE i.run_id = ? AND i.generation = ? AND i.pareto_rank = 0 "
            "GROUP BY i.text_id ORDER BY i.fitness DESC, id",
            (run_id, generation),
        )
        for row in rows:
            row["objectives"] = loads(row["objectives"], [])
        return self._with_scores(rows)

    def best(self, run_id: int, n: int = 5) -> list[dict[str, Any]]:
        """The n fittest distinct texts of a run, each from its first individual at that fitness."""
        self._require_run(run_id)
        rows = self._rows(
            """
            SELECT id, generation, position, fitness, op, n_tokens, text, full_text FROM (
                SELECT i.id, i.generation, i.position, i.fitness, i.op, i.n_tokens, t.text,
                       r.prompt || t.text AS full_text,
                       ROW_NUMBER() OVER (
                           PARTITION BY i.text_id ORDER BY i.fitness DESC, i.id
                       ) AS rank_in_text
                FROM individuals i
                JOIN texts t ON t.id = i.text_id
                JOIN runs r ON r.id = i.run_id
                WHERE i.run_id = ? AND i.fitness IS NOT NULL
            )
            WHERE rank_in_text = 1
            ORDER BY fitness DESC, id
            LIMIT ?
            """,
            (run_id, n),
        )
        return self._with_scores(rows)

    def individual(self, individual_id: int) -> dict[str, Any]:
        """One individual with text, full text, decoded JSON, parent ids and scores."""
        row = self._one(
            "SELECT i.*, t.text, r.prompt || t.text AS full_text FROM individuals i "
            "JOIN texts t ON t.id = i.text_id JOIN runs r ON r.id = i.run_id WHERE i.id = ?",
            (individual_id,),
        )
        if row is None:
            raise StoreError(f"no individual {individual_id} in {self._where}")
        row["token_ids"] = loads(row["token_ids"], [])
        row["detail"] = loads(row["detail"], {})
        row["objectives"] = loads(row["objectives"])
        row["parents"] = self._parents_of([individual_id])[individual_id]
        return self._with_scores([row])[0]

    def lineage(self, individual_id: int, max_depth: int | None = None) -> list[dict[str, Any]]:
        """Every ancestor of an individual (itself at depth 0), nearest first.

        Each row: depth, id, generation, position, op, span_start, span_end, fitness, text,
        detail, parents (ids) and scores. An ancestor reached along several paths appears
        once, at its smallest depth. Same recursion as the `lineage` view, but seeded with
        the one id: SQLite cannot push a WHERE into a recursive view, which would walk every
        individual.
        """
        self.individual(individual_id)  # StoreError if unknown
        rows = self._rows(
            """
            WITH RECURSIVE anc(ancestor_id, depth) AS (
                SELECT ?, 0
                UNION
                SELECT p.parent_id, anc.depth + 1
                FROM anc JOIN parents p ON p.child_id = anc.ancestor_id
                WHERE ? IS NULL OR anc.depth < ?
            )
            SELECT MIN(a.depth) AS depth, i.id, i.run_id, i.generation, i.position, i.op,
                   i.span_start, i.span_end, i.fitness, t.text, i.detail
            FROM anc a
            JOIN individuals i ON i.id = a.ancestor_id
            JOIN texts t ON t.id = i.text_id
            GROUP BY i.id
            ORDER BY depth, i.generation DESC, i.position, i.id
            """,
            (individual_id, max_depth, max_depth),
        )
        parents = self._parents_of([row["id"] for row in rows])
        for row in rows:
            row["detail"] = loads(row["detail"], {})
            row["parents"] = parents[row["id"]]
        return self._with_scores(rows)

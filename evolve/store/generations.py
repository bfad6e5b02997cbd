"""Generations: writing one, and reading back their states and statistics.

One generation is written in one transaction, its model scores included: a crash or Ctrl-C
leaves either the whole generation or nothing of it, which is what makes resuming exact. After
each one the WAL is checkpointed (passively), so the database file alone holds it too. Each
individual is kept with its parents, the operator and token span that made it (and, in an
island run, its island and the generation's migrations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evolve.store.core import StoreCore, StoreError, dumps, loads, now, put_texts
from evolve.store.scores import insert_scores


class GenerationsMixin(StoreCore):
    """The `generations` (and `migrations`) aggregate of `LogStore` (see module doc)."""

    def write_generation(
        self,
        run_id: int,
        generation: int,
        rows: list[dict[str, Any]],
        stats: dict[str, Any],
        rng_state: str,
        state: dict[str, Any],
        scores: Sequence[Mapping[str, Any]] = (),
        migrations: Sequence[Mapping[str, Any]] = (),
    ) -> list[int]:
        """Write one generation in ONE transaction; returns the new individual ids in order.

        Each row has `text`, `token_ids`, `fitness`, `op`, `parents` (store ids), `span`
        ((start, end) or None), `detail` and `position`, and for multi-objective runs
        `objectives` (list of floats) and `pareto_rank`. `stats` has best, mean, std, worst,
        n_evaluated, n_cache_hits, n_unique, best_individual_id (None: the fittest individual
        written here) and seconds. `scores`: the model scores the generation computed, as
        `put_scores` rows (text, prefix, scorer, total, n_tokens, per_token), written once
        (an existing (text, prefix, scorer) keeps its score) and linked to the run. If
        anything fails, nothing of this generation is kept, its scores included.
        """
        if any(row.get("scores") for row in rows):
            raise ValueError("write_generation rows carry no scores; pass them as scores=")
        at = now()
        with self._transaction() as conn:
            self._require_run(run_id)
            if conn.execute(
                "SELECT 1 FROM generations WHERE run_id = ? AND generation = ?",
                (run_id, generation),
            ).fetchone():
                raise StoreError(f"generation {generation} of run {run_id} is already written")
            text_ids = put_texts(self.db, [row["text"] for row in rows])
            # Ids given, not left to SQLite: the parents below need them. The write lock of
            # BEGIN IMMEDIATE makes MAX(id) + 1 what SQLite would have chosen.
            (first,) = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM individuals").fetchone()
            ids = list(range(first, first + len(rows)))
            records: list[dict[str, Any]] = []
            links: list[dict[str, int]] = []
            for pos, (new_id, row, tid) in enumerate(zip(ids, rows, text_ids, strict=True)):
                span = row.get("span")
                token_ids = [int(t) for t in row["token_ids"]]
                objectives = row.get("objectives")
                records.append(
                    {
                        "id": new_id,
                        "run_id": run_id,
                        "generation": generation,
                        "position": row.get("position", pos),
                        "text_id": tid,
                        "token_ids": dumps(token_ids),
                        "n_tokens": len(token_ids),
                        "fitness": row.get("fitness"),
                        "op": row.get("op", "init"),
                        "span_start": span[0] if span else None,
                        "span_end": span[1] if span else None,
                        "detail": dumps(row.get("detail") or {}),
                        "created_at": at,
                        "objectives": dumps(list(objectives)) if objectives is not None else None,
                        "pareto_rank": row.get("pareto_rank"),
                        "island": row.get("island"),
                    }
                )
                links.extend(
                    {"child_id": new_id, "parent_id": int(p), "position": i}
                    for i, p in enumerate(row.get("parents") or ())
                )
            if records:
                self.db.table("individuals").insert_all(records)
            if links:
                self.db.table("parents").insert_all(links)
            insert_scores(self.db, list(scores), run_id, generation)
            if migrations:
                self.db.table("migrations").insert_all(
                    {"run_id": run_id, "generation": generation, **dict(m)} for m in migrations
                )
            best_id = stats.get("best_individual_id")
            if best_id is None:
                best_id = _fittest(rows, ids)
            conn.execute(
                "INSERT INTO generations (run_id, generation, best, mean, std, worst, "
                "n_evaluated, n_cache_hits, n_unique, best_individual_id, seconds, rng_state, "
                "state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    generation,
                    stats.get("best"),
                    stats.get("mean"),
                    stats.get("std"),
                    stats.get("worst"),
                    stats.get("n_evaluated"),
                    stats.get("n_cache_hits"),
                    stats.get("n_unique"),
                    best_id,
                    stats.get("seconds"),
                    rng_state,
                    dumps(state),
                    at,
                ),
            )
            conn.execute(
                "UPDATE runs SET generations_done = MAX(generations_done, ?) WHERE id = ?",
                (generation, run_id),
            )
        self.checkpoint()  # so that a plain copy of the file alone holds this generation
        return ids

    def migrations(self, run_id: int) -> list[dict[str, Any]]:
        """Every migration of an island run (generation, individual_id, from_island,
        to_island), in generation and ring order."""
        self._require_run(run_id)
        return self._rows(
            "SELECT generation, individual_id, from_island, to_island FROM migrations "
            "WHERE run_id = ? ORDER BY generation, to_island, rowid",
            (run_id,),
        )

    def last_generation(self, run_id: int) -> dict[str, Any] | None:
        """The latest written generation row (with rng_state and decoded state), or None."""
        self._require_run(run_id)
        row = self._one(
            "SELECT * FROM generations WHERE run_id = ? ORDER BY generation DESC LIMIT 1",
            (run_id,),
        )
        if row is not None:
            row["state"] = loads(row["state"], {})
        return row

    def generation_states(self, run_id: int) -> list[dict[str, Any]]:
        """{generation, state} of every written generation, in order, state decoded."""
        self._require_run(run_id)
        rows = self._rows(
            "SELECT generation, state FROM generations WHERE run_id = ? ORDER BY generation",
            (run_id,),
        )
        for row in rows:
            row["state"] = loads(row["state"], {})
        return rows

    def generation_stats(self, run_id: int) -> list[dict[str, Any]]:
        """Per-generation statistics of a run, in order (without the resume state)."""
        self._require_run(run_id)
        return self._rows(
            "SELECT generation, best, mean, std, worst, n_evaluated, n_cache_hits, n_unique, "
            "best_individual_id, seconds, created_at FROM generations WHERE run_id = ? "
            "ORDER BY generation",
            (run_id,),
        )


def _fittest(rows: Sequence[Mapping[str, Any]], ids: Sequence[int]) -> int | None:
    """Id of the fittest individual written (the first of equals), None if none is scored."""
    best: tuple[float, int] | None = None
    for row, new_id in zip(rows, ids, strict=True):
        fitness = row.get("fitness")
        if fitness is not None and (best is None or fitness > best[0]):
            best = (fitness, new_id)
    return best[1] if best else None

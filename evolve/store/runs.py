"""Runs, their generations and individuals: the `runs` aggregate of `LogStore`.

Every individual of every generation is kept with its parents, the operator and token span
that made it, so the history of a run can be queried with plain SQL (the `individual_texts`,
`lineage`, `edits` and `individual_scores` views do the common joins). Texts are stored once in
`texts`, keyed by a hash; an individual's model scores are rows of `scores` (see
`evolve.store.scores`), attached to every individual these methods return as
``scores = {scorer: {"total", "n_tokens", "mean"}}``.

One generation is written in one transaction, its model scores included: a crash or Ctrl-C
leaves either the whole generation or nothing of it, which is what makes resuming exact. After
each one the WAL is checkpointed (passively), so the database file alone holds it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from evolve.store.core import (
    RUN_STATUSES,
    StoreCore,
    StoreError,
    dumps,
    loads,
    now,
    prefix_id,
    put_texts,
    versions,
)
from evolve.store.process import process_state, this_process
from evolve.store.scores import insert_scores, scores_of_individuals


class _Keep:
    """The type of `KEEP`: a label that `set_labels` leaves as it is."""


KEEP = _Keep()


class RunsMixin(StoreCore):
    """Runs, generations and individuals (see module doc)."""

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self,
        prompt: str,
        seed: int,
        config: dict[str, Any],
        mlm: str,
        causal: str | None,
        fitness: str,
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        note: str | None = None,
    ) -> int:
        """Record a new run (status 'running', owned by this process) with its full config
        and the labels a researcher gave it (name, tags, note); returns its id."""
        pid, host, token = this_process()
        with self._transaction():
            if prompt:
                put_texts(self.db, [prompt])
            table = self.db.table("runs").insert(
                {
                    "created_at": now(),
                    "status": "running",
                    "prompt": prompt,
                    "prompt_id": prefix_id(prompt),
                    "seed": seed,
                    "mlm": mlm,
                    "causal": causal,
                    "fitness": fitness,
                    "config": dumps(config),
                    "versions": dumps(versions()),
                    "pid": pid,
                    "host": host,
                    "process": token,
                    "name": name,
                    "tags": dumps(_tag_list(tags)),
                    "note": note,
                }
            )
        assert table.last_rowid is not None
        return int(table.last_rowid)

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Set a run's status and error; 'running' clears finished_at, the others set it.

        'running' also makes this process the run's owner (resuming calls it), and is refused
        while the run is 'running' in another process that is still alive: two processes
        must not extend one run. A run left 'running' by a dead process is taken over.
        """
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        with self._transaction():
            self._require_run(run_id)
            runs = self.db.table("runs")
            if status != "running":
                runs.update(run_id, {"status": status, "error": error, "finished_at": now()})
                return
            pid, host, token = this_process()
            old = runs.get(run_id)
            ours = (old["pid"], old["host"]) == (pid, host) and old["process"] in (None, token)
            if (
                old["status"] == "running"
                and not ours
                and process_state(old["pid"], old["host"], old["process"]) == "alive"
            ):
                raise StoreError(
                    f"run {run_id} is still running in process {old['pid']} on {old['host']}; "
                    "wait for it to end or stop it (Ctrl-C) before resuming"
                )
            runs.update(
                run_id,
                {
                    "status": "running",
                    "error": error,
                    "finished_at": None,
                    "pid": pid,
                    "host": host,
                    "process": token,
                },
            )

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Mark a run done and point best_individual_id at its fittest individual."""
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        with self._transaction() as conn:
            self._require_run(run_id)
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, best_individual_id = ("
                "  SELECT id FROM individuals WHERE run_id = ? AND fitness IS NOT NULL"
                "  ORDER BY fitness DESC, id LIMIT 1"
                ") WHERE id = ?",
                (status, now(), run_id, run_id),
            )
        self.checkpoint()

    def run(self, run_id: int) -> dict[str, Any]:
        """One run with its config, versions and tags decoded; StoreError if there is none."""
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise StoreError(f"no run {run_id} in {self._where}")
        return _decoded(row)

    def runs(
        self,
        *,
        tags: Sequence[str] = (),
        name: str | None = None,
        statuses: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Runs, newest first, with best_fitness, n_generations, n_individuals and
        total_seconds (the generations' time, model loading excluded); only those
        carrying every tag in `tags`, whose name contains `name` (case-insensitive), and whose
        stored status is one of `statuses`, where given."""
        where, params = ["1"], []
        for tag in tags:
            where.append("EXISTS (SELECT 1 FROM json_each(r.tags) WHERE value = ?)")
            params.append(tag)
        if name is not None:
            where.append("instr(lower(COALESCE(r.name, '')), lower(?)) > 0")
            params.append(name)
        if statuses:
            where.append(f"r.status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        rows = self._rows(
            f"""
            SELECT r.*,
                   (SELECT MAX(fitness) FROM individuals WHERE run_id = r.id) AS best_fitness,
                   (SELECT COUNT(*) FROM generations WHERE run_id = r.id) AS n_generations,
                   (SELECT COUNT(*) FROM individuals WHERE run_id = r.id) AS n_individuals,
                   (SELECT SUM(seconds) FROM generations WHERE run_id = r.id) AS total_seconds
            FROM runs r WHERE {" AND ".join(where)} ORDER BY r.id DESC
            """,
            params,
        )
        return [_decoded(row) for row in rows]

    def set_labels(
        self,
        run_id: int,
        *,
        name: str | None | _Keep = KEEP,
        tags: Sequence[str] | _Keep = KEEP,
        note: str | None | _Keep = KEEP,
    ) -> dict[str, Any]:
        """Change a run's name, tags (the whole list) or note; what is not given is kept.
        Returns the run as `run` does."""
        change: dict[str, Any] = {}
        if not isinstance(name, _Keep):
            change["name"] = name
        if not isinstance(tags, _Keep):
            change["tags"] = dumps(_tag_list(tags))
        if not isinstance(note, _Keep):
            change["note"] = note
        with self._transaction():
            self._require_run(run_id)
            if change:
                self.db.table("runs").update(run_id, change)
        return self.run(run_id)

    def set_config(self, run_id: int, config: dict[str, Any]) -> None:
        """Replace a run's stored config (resuming it to more generations records the new
        count, so the record says what the run now is)."""
        with self._transaction():
            self._require_run(run_id)
            self.db.table("runs").update(run_id, {"config": dumps(config)})

    # -- generations ---------------------------------------------------------------------------

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

    # -- individuals ---------------------------------------------------------------------------

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


def _tag_list(tags: Sequence[str]) -> list[str]:
    """Tags without duplicates, in the order first given."""
    return list(dict.fromkeys(str(t) for t in tags))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["config"] = loads(row["config"], {})
    row["versions"] = loads(row["versions"], {})
    row["tags"] = loads(row.get("tags"), []) or []
    return row


def _fittest(rows: Sequence[Mapping[str, Any]], ids: Sequence[int]) -> int | None:
    """Id of the fittest individual written (the first of equals), None if none is scored."""
    best: tuple[float, int] | None = None
    for row, new_id in zip(rows, ids, strict=True):
        fitness = row.get("fitness")
        if fitness is not None and (best is None or fitness > best[0]):
            best = (fitness, new_id)
    return best[1] if best else None

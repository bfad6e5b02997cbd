"""Baselines and experiments: the outputs of `evolve.experiments` kept beside the runs.

A baseline is a continuation made by a decoding method (greedy, beam search, sampling) of a
prompt, optionally tied to a run; an experiment (a comparison, an amplification sweep) is a
config, a summary and ordered JSON rows. `COMPARE_SQL` rebuilds the model-score columns of
`evolve compare` from the database alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from evolve.store.core import StoreCore, StoreError, dumps, loads, now, put_texts, text_id


class ExperimentsMixin(StoreCore):
    """The `baselines` and `experiments` aggregates of `LogStore` (see module doc)."""

    # -- baselines -----------------------------------------------------------------------------

    def add_baseline(
        self,
        prompt: str,
        method: str,
        model: str,
        params: dict[str, Any],
        seed: int | None,
        text: str,
        run_id: int | None = None,
    ) -> int:
        """Record a continuation made by a baseline method (sampling, beam, ...); its id."""
        with self._transaction():
            if run_id is not None:
                self._require_run(run_id)
            prompt_id, tid = put_texts(self.db, [prompt, text])
            table = self.db.table("baselines").insert(
                {
                    "run_id": run_id,
                    "prompt_id": prompt_id,
                    "method": method,
                    "model": model,
                    "params": dumps(params),
                    "seed": seed,
                    "text_id": tid,
                    "created_at": now(),
                }
            )
        assert table.last_rowid is not None
        return int(table.last_rowid)

    def stored_or_new_baselines(
        self,
        prompt: str,
        method: str,
        model: str,
        params: dict[str, Any],
        seed: int,
        wanted: int,
        make: Callable[[], Sequence[str]],
        run_id: int | None = None,
    ) -> list[tuple[int, str, bool]]:
        """(id, text, reused) of the `wanted` baselines of exactly this run, prompt, method,
        model, params and seed: the stored ones first; where fewer are stored, `make()` writes
        the texts again and those past the stored ones are added. Asking again returns the
        stored texts (the same seed gives the same text, and a duplicate would count twice in a
        comparison); `make` must be deterministic, so that its first texts are the stored ones
        a call that stopped part-way left behind."""
        rows = self._rows(
            "SELECT b.id, b.params, t.text FROM baselines b JOIN texts t ON t.id = b.text_id "
            "WHERE b.prompt_id = ? AND b.run_id IS ? AND b.method = ? AND b.model = ? "
            "AND b.seed = ? ORDER BY b.id",
            [text_id(prompt), run_id, method, model, seed],
        )
        same = [b for b in rows if loads(b["params"], {}) == params]
        out = [(b["id"], b["text"], True) for b in same[:wanted]]
        if len(same) < wanted:
            for text in make()[len(same) :]:
                new_id = self.add_baseline(prompt, method, model, params, seed, text, run_id=run_id)
                out.append((new_id, text, False))
        return out

    def baselines(self, run_id: int | None = None, prompt: str | None = None) -> list[dict]:
        """Baselines, oldest first, optionally only those of a run and/or a prompt."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if run_id is not None:
            where.append("b.run_id = ?")
            params.append(run_id)
        if prompt is not None:
            where.append("b.prompt_id = ?")
            params.append(text_id(prompt))
        rows = self._rows(
            "SELECT b.id, b.run_id, p.text AS prompt, b.method, b.model, b.params, b.seed, "
            "t.text, b.created_at FROM baselines b JOIN texts p ON p.id = b.prompt_id "
            f"JOIN texts t ON t.id = b.text_id WHERE {' AND '.join(where)} ORDER BY b.id",
            params,
        )
        for row in rows:
            row["params"] = loads(row["params"], {})
        return rows

    # -- experiments ---------------------------------------------------------------------------

    def add_experiment(
        self,
        kind: str,
        config: dict[str, Any],
        summary: dict[str, Any],
        rows: list[dict[str, Any]],
        status: str = "finished",
    ) -> int:
        """Record an experiment (comparison, amplification sweep, ...) and its rows; its id."""
        with self._transaction():
            table = self.db.table("experiments").insert(
                {
                    "kind": kind,
                    "created_at": now(),
                    "status": status,
                    "config": dumps(config),
                    "summary": dumps(summary),
                }
            )
            assert table.last_rowid is not None
            experiment_id = int(table.last_rowid)
            if rows:
                self.db.table("experiment_rows").insert_all(
                    {"experiment_id": experiment_id, "idx": i, "data": dumps(row)}
                    for i, row in enumerate(rows)
                )
        return experiment_id

    def append_experiment_rows(self, experiment_id: int, rows: list[dict[str, Any]]) -> int:
        """Add rows after the experiment's last one (a long experiment writes as it goes, so
        that a kill keeps what it finished); the number of rows it now has."""
        with self._transaction():
            self._require_experiment(experiment_id)
            (n,) = self.db.conn.execute(
                "SELECT COUNT(*) FROM experiment_rows WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
            if rows:
                self.db.table("experiment_rows").insert_all(
                    {"experiment_id": experiment_id, "idx": n + i, "data": dumps(row)}
                    for i, row in enumerate(rows)
                )
        return int(n) + len(rows)

    def truncate_experiment_rows(self, experiment_id: int, keep: int) -> int:
        """Delete the rows after the first `keep` (a resumed experiment redoes them from its
        last checkpoint); how many were deleted."""
        with self._transaction():
            self._require_experiment(experiment_id)
            cursor = self.db.conn.execute(
                "DELETE FROM experiment_rows WHERE experiment_id = ? AND idx >= ?",
                (experiment_id, keep),
            )
        return int(cursor.rowcount)

    def update_experiment(
        self,
        experiment_id: int,
        *,
        status: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        """Set the status and/or the summary of a stored experiment."""
        values: dict[str, Any] = {}
        if status is not None:
            values["status"] = status
        if summary is not None:
            values["summary"] = dumps(summary)
        if not values:
            return
        with self._transaction():
            self._require_experiment(experiment_id)
            self.db.table("experiments").update(experiment_id, values)

    def _require_experiment(self, experiment_id: int) -> None:
        found = self.db.conn.execute("SELECT 1 FROM experiments WHERE id = ?", (experiment_id,))
        if not found.fetchone():
            raise StoreError(f"no experiment {experiment_id} in {self._where}")

    def experiment(self, experiment_id: int) -> dict[str, Any]:
        """One experiment with config, summary and rows decoded; StoreError if unknown."""
        row = self._one("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        if row is None:
            raise StoreError(f"no experiment {experiment_id} in {self._where}")
        row["config"] = loads(row["config"], {})
        row["summary"] = loads(row["summary"], {})
        row["rows"] = [
            loads(data, {})
            for (data,) in self.db.conn.execute(
                "SELECT data FROM experiment_rows WHERE experiment_id = ? ORDER BY idx",
                (experiment_id,),
            )
        ]
        return row

    def experiments(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Experiments newest first (without rows; n_rows counts them)."""
        rows = self._rows(
            "SELECT e.*, (SELECT COUNT(*) FROM experiment_rows WHERE experiment_id = e.id) "
            "AS n_rows FROM experiments e WHERE ? IS NULL OR kind = ? ORDER BY e.id DESC",
            (kind, kind),
        )
        for row in rows:
            row["config"] = loads(row["config"], {})
            row["summary"] = loads(row["summary"], {})
        return rows


# The model-score columns of `evolve.experiments.compare.compare_run`, from the database
# alone. Parameters: :run (run id), :causal (the judge's name, usually runs.causal) and
# :reference (NULL for none; the reference as compare stored it, leading space included).
# `settings` comes out as the stored JSON parameters of a baseline group. Scores are found by
# the prompt's text id: compare stores the prompt in `texts` when it stores the first score.
COMPARE_SQL = """
WITH run AS (
    SELECT r.id, r.mlm, p.id AS prompt_id
    FROM runs r JOIN texts p ON p.text = r.prompt
    WHERE r.id = :run
),
last_gen AS (
    SELECT MAX(generation) AS generation FROM individuals WHERE run_id = :run
),
members(ord, method, settings, text_id) AS (
    SELECT * FROM (
        SELECT -2, 'evolved best', NULL, text_id FROM individuals
        WHERE run_id = :run AND fitness IS NOT NULL
        ORDER BY fitness DESC, id LIMIT 1
    )
    UNION ALL
    SELECT -1, 'evolved population', NULL, i.text_id
    FROM individuals i, last_gen g
    WHERE i.run_id = :run AND i.generation = g.generation
    UNION ALL
    SELECT MIN(b.id) OVER (PARTITION BY b.method, b.model, b.params),
           b.method, b.params, b.text_id
    FROM baselines b WHERE b.run_id = :run
    UNION ALL
    SELECT 9e18, 'reference', NULL, t.id FROM texts t WHERE t.text = :reference
),
scored AS (
    SELECT m.*, po.total AS po_total, po.n_tokens AS po_n,
           pw.total AS pw_total, pw.n_tokens AS pw_n,
           c.total AS c_total, c.n_tokens AS c_n
    FROM members m CROSS JOIN run
    LEFT JOIN scores po ON po.text_id = m.text_id AND po.prefix_id = run.prompt_id
        AND po.scorer = 'pll/original/' || run.mlm
    LEFT JOIN scores pw ON pw.text_id = m.text_id AND pw.prefix_id = run.prompt_id
        AND pw.scorer = 'pll/word_l2r/' || run.mlm
    LEFT JOIN scores c ON c.text_id = m.text_id AND c.prefix_id = run.prompt_id
        AND c.scorer = 'causal/' || :causal
)
SELECT method, settings, COUNT(*) AS n,
       AVG(po_total / po_n) AS pll_tok, AVG(po_total) AS pll,
       AVG(pw_total / pw_n) AS pll_l2r_tok, AVG(pw_total) AS pll_l2r,
       AVG(c_total / c_n) AS causal_tok, AVG(c_total) AS causal,
       EXP(-AVG(c_total / c_n)) AS ppl,
       AVG(po_n) AS mlm_tokens, AVG(c_n) AS causal_tokens
FROM scored
GROUP BY ord, method, settings
ORDER BY ord
"""

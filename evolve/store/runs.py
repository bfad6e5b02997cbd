"""Runs: the `runs` aggregate of `LogStore` (a run's record, status, owner and labels).

A run is created with its prompt, config, models and versions, owned by the process that runs
it (`evolve.store.process`), and labelled with a name, tags and a note. Its generations and
individuals are in `evolve.store.generations` and `evolve.store.individuals`, the bases of
`RunsMixin`, so `LogStore` and every import of it stay as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evolve.store.core import (
    RUN_STATUSES,
    StoreError,
    dumps,
    loads,
    now,
    prefix_id,
    put_texts,
    versions,
)
from evolve.store.individuals import IndividualsMixin
from evolve.store.process import process_state, this_process


class _Keep:
    """The type of `KEEP`: a label that `set_labels` leaves as it is."""


KEEP = _Keep()


class RunsMixin(IndividualsMixin):
    """Runs, and through its bases their generations and individuals (see module doc)."""

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


def _tag_list(tags: Sequence[str]) -> list[str]:
    """Tags without duplicates, in the order first given."""
    return list(dict.fromkeys(str(t) for t in tags))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["config"] = loads(row["config"], {})
    row["versions"] = loads(row["versions"], {})
    row["tags"] = loads(row.get("tags"), []) or []
    return row

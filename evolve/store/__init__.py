"""The only SQLite code: the run log (`LogStore`), split by aggregate.

`db` (LogStore: opening, the facade), `schema` (DDL and migrations), `runs` (runs),
`generations` (writing a generation), `individuals` (reading them, lineage), `scores` (model
scores, `ScoreBook`), `experiments` (baselines, experiments), `sql` (read-only queries),
`web_queries` (the SQL of `evolve serve`), `process` (which process runs a run), `core`
(shared plumbing).
"""

from evolve.store.core import DatabaseError, StoreError, text_id
from evolve.store.db import LogStore, check_database
from evolve.store.process import (
    ProcessState,
    config_items,
    process_state,
    process_token,
    run_process_state,
    shown_status,
)
from evolve.store.schema import MIGRATIONS, SCHEMA_VERSION
from evolve.store.scores import ScoreBook, ScorerFactory, TextScorer

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DatabaseError",
    "LogStore",
    "ProcessState",
    "ScoreBook",
    "ScorerFactory",
    "StoreError",
    "TextScorer",
    "check_database",
    "config_items",
    "process_state",
    "process_token",
    "run_process_state",
    "shown_status",
    "text_id",
]

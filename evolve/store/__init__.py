"""The only SQLite code: the run log (`LogStore`), its schema and migrations."""

from evolve.store.logstore import *  # noqa: F403
from evolve.store.logstore import LogStore, StoreError

__all__ = ["LogStore", "StoreError"]

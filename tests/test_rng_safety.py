"""No code runs from a database file: random states are JSON, pickles are never loaded."""

from __future__ import annotations

import base64
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from evolve.api import RunInterrupted, resume_run, start_run
from evolve.ga.config import MutationConfig, RunConfig
from evolve.store import MIGRATIONS, LogStore
from evolve.store.legacy_rng import convert
from scoring.errors import UserError

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def _evil(marker: Path) -> str:
    return base64.b64encode(pickle.dumps({"python": _Payload(marker)})).decode()


def _interrupted_run(db: Path, bert: str) -> int:
    cfg = RunConfig(
        prompt=PROMPT,
        population=4,
        generations=3,
        init_len=4,
        min_len=3,
        max_len=6,
        mlm=bert,
        seed=3,
        mutation=MutationConfig(max_span=1, top_k=10),
    )

    def stop(report):
        if report.generation == 1:
            raise KeyboardInterrupt

    with LogStore(db) as store, pytest.raises(RunInterrupted) as info:
        start_run(cfg, store, stop)
    return info.value.run_id


def test_crafted_rng_state_is_refused_on_resume(tmp_path, tiny_bert_dir):
    db, marker = tmp_path / "r.db", tmp_path / "PWNED"
    run = _interrupted_run(db, str(tiny_bert_dir))
    with LogStore(db) as store:
        store.db.conn.execute(
            "UPDATE generations SET rng_state = ? WHERE run_id = ?", (_evil(marker), run)
        )
        store.db.conn.commit()
        with pytest.raises(UserError, match="random state is not valid"):
            resume_run(run, store)
    assert not marker.exists()


def test_legacy_pickled_states_convert_and_crafted_ones_are_dropped(tmp_path):
    marker = tmp_path / "PWNED"
    random.seed(4)
    np.random.seed(4)
    torch.manual_seed(4)
    legacy = base64.b64encode(
        pickle.dumps(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            }
        )
    ).decode()
    expected = random.random(), float(np.random.rand()), float(torch.rand(1))
    converted = convert(legacy)
    assert converted is not None and converted.startswith("{")
    from evolve.ga.seeding import set_rng_state

    set_rng_state(converted)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert convert(_evil(marker)) is None
    assert convert("not base64 at all") is None
    assert not marker.exists()


def test_migration_converts_a_version_4_database(tmp_path):
    """A database written before migration 5: its pickled states become JSON on open, a
    crafted one becomes NULL, and nothing in it runs."""
    import sqlite_utils

    db_path, marker = tmp_path / "old.db", tmp_path / "PWNED"
    with LogStore(db_path) as store:
        run = store.create_run(PROMPT, 1, {}, "tiny-bert", None, "pll")
        store.write_generation(run, 0, [], {"best": None}, "x", {})
        store.write_generation(run, 1, [], {"best": None}, "x", {})
    legacy = base64.b64encode(
        pickle.dumps(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            }
        )
    ).decode()
    with LogStore(db_path) as store:
        store.db.conn.execute(
            "UPDATE generations SET rng_state = ? WHERE generation = 0", (legacy,)
        )
        store.db.conn.execute(
            "UPDATE generations SET rng_state = ? WHERE generation = 1", (_evil(marker),)
        )
        store.db.conn.commit()
    # What migration 5 does to a database from before it (the states above are what such a
    # database holds).
    db = sqlite_utils.Database(db_path)
    MIGRATIONS[4](db)
    db.conn.commit()
    states = dict(db.conn.execute("SELECT generation, rng_state FROM generations").fetchall())
    db.conn.close()
    assert states[0].startswith("{") and states[1] is None
    assert not marker.exists()


def test_interrupted_run_still_resumes_exactly(tmp_path, tiny_bert_dir):
    run = _interrupted_run(tmp_path / "ok.db", str(tiny_bert_dir))
    with LogStore(tmp_path / "ok.db") as store:
        assert resume_run(run, store).status == "finished"

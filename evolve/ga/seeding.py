"""One seed for every random number generator the run touches (python, numpy, torch).

DEAP's selection and variation use the `random` module, numpy is used for statistics and
sampling helpers, and torch samples MLM fills. Capturing and restoring all three states is
what makes a resumed run continue exactly like an uninterrupted one.
"""

from __future__ import annotations

import base64
import pickle
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> str:
    """All three generator states, pickled and base64-encoded for a TEXT column."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    return base64.b64encode(pickle.dumps(state)).decode("ascii")


def set_rng_state(blob: str) -> None:
    state = pickle.loads(base64.b64decode(blob))  # only ever our own database's bytes
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])

"""One seed for the three random number generators: python's `random`, numpy's and torch's.

Lives in `scoring` so that decoding (`scoring.decoding`), which seeds each sampled text
itself, and the GA (`evolve.ga.seeding`, which re-exports it and adds capturing and restoring
the states) seed the same way.
"""

from __future__ import annotations

import random

import numpy as np
import torch

# Seeds are stored as SQLite INTEGERs and given to torch, both signed 64-bit: a larger seed
# overflows (the GA's config bounds its seed the same way).
SEED_MAX = 2**63 - 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

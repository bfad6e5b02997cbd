"""Metropolis-Hastings acceptance of a proposed move (Goyal et al. 2022)."""

from __future__ import annotations

import math
import random

from evolve.ga.operators.context import (
    _Random,
)

# -- Metropolis-Hastings -------------------------------------------------------------------


def mh_accept(
    old_energy: float,
    new_energy: float,
    log_q_forward: float | None,
    log_q_reverse: float | None,
    rng: _Random | None = None,
) -> bool:
    """Metropolis-Hastings acceptance of a proposed move (Goyal et al. 2022).

    Accept with probability ``min(1, exp(E_old - E_new) * q(old | new) / q(new | old))``,
    energies being e.g. ``-PLL``. ``None`` log-probabilities mean ``-inf`` (as stored in the
    lineage detail): a move that cannot be undone is rejected. A draw from ``rng`` (default:
    the global `random` module) is taken only when the ratio is below 1.
    """
    fwd = -math.inf if log_q_forward is None else float(log_q_forward)
    rev = -math.inf if log_q_reverse is None else float(log_q_reverse)
    if fwd == -math.inf or rev == -math.inf:
        return False  # undoable (rev) or impossible (fwd) moves never pass
    log_alpha = (float(old_energy) - float(new_energy)) + (rev - fwd)
    if math.isnan(log_alpha):
        return False
    if log_alpha >= 0:
        return True
    return (rng or random).random() < math.exp(log_alpha)

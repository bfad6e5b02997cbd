"""One seed for every random number generator a run touches (python, numpy, torch).

DEAP's selection and variation use the `random` module, numpy is used for statistics and
sampling helpers, and torch samples the proposers' fills. Capturing and restoring all three
states is what makes a resumed run continue exactly like an uninterrupted one.

States are plain data, never pickles: a state read back from a database could otherwise run
code (a shared database is untrusted input). `get_rng_state` writes JSON: the Python
Mersenne Twister tuple as integers, numpy's legacy MT19937 state as its 624 words and
counters, torch's CPU generator state as base64 of its byte tensor. `set_rng_state` checks
the shape and types of every part before it touches a generator.

`seed_everything` (defined in `scoring.rng`, where decoding seeds its samples with it) seeds
all three. `rng_scope` runs a block with all three generators seeded and gives the caller's
states back afterwards, so a notebook's own random numbers are not disturbed by a run.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from scoring.errors import UserError
from scoring.rng import seed_everything

FORMAT = "rng-json-1"  # tag of the data-only state format written by get_rng_state
_MT_WORDS = 624  # Mersenne Twister state size (python and numpy alike)


class RNGStateError(UserError):
    """A stored random state that is not one this version wrote (or was tampered with)."""


def get_rng_state() -> str:
    """The three generator states as a JSON string (data only)."""
    version, words, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return json.dumps(
        {
            "format": FORMAT,
            "python": {"version": version, "state": list(words), "gauss_next": gauss},
            "numpy": {
                "bit_generator": str(name),
                "key": [int(k) for k in key],
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        },
        separators=(",", ":"),
    )


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RNGStateError(f"stored random state is not valid ({what}); cannot resume exactly")


def _int_list(value: Any, n: int, bound: int) -> list[int]:
    _check(isinstance(value, list) and len(value) == n, f"expected {n} integers")
    _check(all(type(v) is int and 0 <= v < bound for v in value), "integers out of range")
    return value


def parse_rng_state(blob: str | bytes) -> dict[str, Any]:
    """Read and validate a state written by `get_rng_state`; RNGStateError otherwise."""
    try:
        state = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        state = None
    _check(isinstance(state, dict) and state.get("format") == FORMAT, "unknown format")
    py, npy = state.get("python"), state.get("numpy")
    _check(isinstance(py, dict) and isinstance(npy, dict), "missing parts")
    _check(py.get("version") == 3, "python state version")
    _int_list(py.get("state"), _MT_WORDS + 1, 2**32 + 1)
    gauss = py.get("gauss_next")
    _check(gauss is None or isinstance(gauss, float), "python gauss_next")
    _check(npy.get("bit_generator") == "MT19937", "numpy generator")
    _int_list(npy.get("key"), _MT_WORDS, 2**32)
    _check(type(npy.get("pos")) is int and 0 <= npy["pos"] <= _MT_WORDS, "numpy position")
    _check(npy.get("has_gauss") in (0, 1), "numpy has_gauss")
    _check(isinstance(npy.get("cached_gaussian"), float), "numpy cached_gaussian")
    raw = state.get("torch")
    _check(isinstance(raw, str), "torch state")
    try:
        torch_bytes = base64.b64decode(raw, validate=True)
    except ValueError:
        torch_bytes = b""
    _check(len(torch_bytes) == torch.get_rng_state().numel(), "torch state size")
    state["torch_bytes"] = torch_bytes
    return state


def set_rng_state(blob: str | bytes) -> None:
    """Restore the three generators from `get_rng_state` output (validated first)."""
    state = parse_rng_state(blob)
    py, npy = state["python"], state["numpy"]
    random.setstate((3, tuple(py["state"]), py["gauss_next"]))
    np.random.set_state(
        (
            "MT19937",
            np.array(npy["key"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch_bytes"]), dtype=torch.uint8))


@contextmanager
def rng_scope(seed: int | None = None) -> Iterator[None]:
    """Run a block with the generators seeded (when `seed` is given) and hand the caller's
    states back afterwards, whatever happens inside."""
    saved = get_rng_state()
    try:
        if seed is not None:
            seed_everything(seed)
        yield
    finally:
        set_rng_state(saved)

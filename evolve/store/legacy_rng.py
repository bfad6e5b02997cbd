"""Convert random states that versions before schema 5 stored as pickles into plain JSON.

Those versions wrote `generations.rng_state` as base64 of ``pickle.dumps({"python": ...,
"numpy": ..., "torch": ...})``. Unpickling such a column is how a crafted database could run
code, so this reader never calls `pickle.loads`: a restricted `Unpickler` resolves only the
few globals such a state needs (numpy's array reconstruction, torch's tensor rebuild) and
refuses every other one, the torch storage bytes are read by torch's own weights-only loader,
and the result is checked part by part (`evolve.ga.seeding.parse_rng_state`) before it is
written back as JSON. A state that does not pass is replaced by NULL: that run can no longer
be resumed, which `evolve resume` then says in one line.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import warnings
from typing import Any

import numpy as np
import torch

from evolve.ga.seeding import FORMAT, RNGStateError, parse_rng_state


def _load_storage(data: bytes) -> bytes:
    """The raw bytes of a pickled torch storage, read by torch's weights-only loader."""
    with (
        warnings.catch_warnings()
    ):  # torch warns that TypedStorage (what old pickles hold) is deprecated
        warnings.simplefilter("ignore", UserWarning)
        storage = torch.load(io.BytesIO(data), weights_only=True)
        untyped = storage.untyped() if isinstance(storage, torch.TypedStorage) else storage
        return bytes(untyped)


def _rebuild_tensor(data: bytes, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.as_strided(tuple(size), tuple(stride), offset)


class _StateUnpickler(pickle.Unpickler):
    """Resolves only what a pickled (python, numpy, torch) RNG state refers to."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def convert(blob: str | None) -> str | None:
    """The JSON form of a stored state: unchanged if it already is JSON, converted if it is a
    legacy pickle of the expected shape, None if it is neither."""
    if blob is None:
        return None
    try:
        parse_rng_state(blob)
        return blob
    except RNGStateError:
        pass
    try:
        raw = base64.b64decode(blob, validate=True)
        state = _StateUnpickler(io.BytesIO(raw)).load()
        version, words, gauss = state["python"]
        name, key, pos, has_gauss, cached = state["numpy"]
        torch_state = state["torch"]
        converted = json.dumps(
            {
                "format": FORMAT,
                "python": {"version": version, "state": list(words), "gauss_next": gauss},
                "numpy": {
                    "bit_generator": str(name),
                    "key": [int(k) for k in np.asarray(key)],
                    "pos": int(pos),
                    "has_gauss": int(has_gauss),
                    "cached_gaussian": float(cached),
                },
                "torch": base64.b64encode(torch_state.to(torch.uint8).numpy().tobytes()).decode(
                    "ascii"
                ),
            },
            separators=(",", ":"),
        )
        parse_rng_state(converted)
        return converted
    except Exception:  # anything unexpected in a legacy blob: drop it, never run it
        return None

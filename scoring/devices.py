"""Check a torch device name before anything is loaded onto it, with a one-line reason.

`torch` itself reports a missing or unknown device deep inside model loading, as a
RuntimeError or an AssertionError ("Torch not compiled with CUDA enabled") with a traceback,
after seconds of loading and, in a run, after the run row exists. Configs that name a device
(`RunConfig`, `BaselineConfig`) call `check_device` in their `validate()`, so a wrong
`--device` is a `UserError` (one line, exit 2) before any work starts.

``auto`` (the run default) is CUDA when this torch build sees a CUDA device, else the CPU;
`resolve_device` turns it into the device models are loaded onto. It is resolved where the
models load (in a worker process, on the worker's machine), so a config stays portable.
"""

from __future__ import annotations

import torch

from scoring.errors import UserError

KNOWN = ("cpu", "cuda", "mps", "xpu")  # device types whose availability torch can tell


class DeviceError(UserError):
    """A device that does not exist here, or that this torch build cannot use."""


def resolve_device(name: str) -> str:
    """The device ``auto`` stands for here (``cuda`` when available, else ``cpu``); any
    other name as it is."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> str:
    """Return `name` if models can be put on that device here; DeviceError otherwise.
    ``auto`` is always usable."""
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or xpu") from None
    kind = device.type
    if kind == "cpu":
        return name
    if kind not in KNOWN:
        raise DeviceError(f"device {name!r} cannot run models; use cpu, cuda, cuda:N, mps or xpu")
    if kind == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise DeviceError(
                f"torch {torch.__version__} has no CUDA; install a CUDA build of torch or use "
                "--device cpu"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elif kind == "mps":
        count = 1 if torch.backends.mps.is_available() else 0
    else:
        backend = getattr(torch, kind, None)
        count = backend.device_count() if backend is not None and backend.is_available() else 0
    if count == 0:
        raise DeviceError(f"no {kind} device is available here; use --device cpu")
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"device {name!r} does not exist: {count} {kind} device"
            f"{'s' if count > 1 else ''} here (numbered from 0)"
        )
    return name

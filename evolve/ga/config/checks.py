"""The config's plumbing: the error it raises, the checks every part uses, reading a stored
config back (`build`), and how much memory this machine has left (`available_memory`).

Nothing here knows a run option; `evolve.ga.config` and its parts call these.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from scoring.errors import UserError
from scoring.rng import SEED_MAX

# SQLite INTEGER and torch seeds are signed 64-bit: larger ints overflow
INT64_MAX = SEED_MAX


class ConfigError(UserError):
    """An option value that cannot make a valid run."""


_D = TypeVar("_D")


def build(cls: type[_D], data: dict[str, Any], prefix: str) -> _D:
    """`cls(**data)` with nested config dataclasses built from their dicts, tuples restored
    from JSON lists, and unknown keys refused."""
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    types = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise ConfigError(f"config has no {prefix + name!r}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        kind = types[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if isinstance(value, dict):
                value = build(kind, value, f"{prefix}{name}.")
            elif not isinstance(value, kind):
                raise ConfigError(f"config {prefix + name!r} is not a mapping")
        elif typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def available_memory() -> int | None:
    """Bytes of memory that can still be taken, or None if the system cannot tell.

    Linux: MemAvailable of /proc/meminfo, capped by the cgroup v2 limit of a container;
    elsewhere the free physical pages that `os.sysconf` reports.
    """
    found: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:
        group = Path("/sys/fs/cgroup")
        limit = (group / "memory.max").read_text().strip()
        if limit != "max":
            used = int((group / "memory.current").read_text())
            found = min(found, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return found if found > 0 else None


def size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_types(cfg: Any) -> None:
    """Every field holds a value of its annotated type, and every int fits in 64 bits, so no
    later step (SQLite, torch) meets one that overflows, and a stored config read back (from
    JSON, by `from_dict`) is checked as strictly as options are."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        kind, value = hints[f.name], getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value)
        elif kind is bool:
            require(isinstance(value, bool), f"{f.name} must be true or false (got {value!r})")
        elif kind is int:
            require(
                isinstance(value, int) and not isinstance(value, bool),
                f"{f.name} must be an integer (got {value!r})",
            )
            require(
                -INT64_MAX <= value <= INT64_MAX, f"{f.name} {value} is out of the 64-bit range"
            )
        elif kind is float:
            require(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"{f.name} must be a number (got {value!r})",
            )
        elif kind is str or typing.get_origin(kind) is Literal:
            require(isinstance(value, str), f"{f.name} must be a string (got {value!r})")
        elif typing.get_origin(kind) is tuple:
            require(
                isinstance(value, tuple) and all(isinstance(v, str) for v in value),
                f"{f.name} must be a list of strings",
            )


def at_most(name: str, value: int, bound: int) -> None:
    """A ConfigError unless `value` <= `bound`."""
    require(value <= bound, f"{name} must be at most {bound:,} (got {value:,})")


def get_dotted(obj: Any, path: str) -> Any:
    """``obj.a.b`` for the path ``"a.b"``."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def require(ok: bool, message: str) -> None:
    """A ConfigError with `message` unless `ok`."""
    if not ok:
        raise ConfigError(message)


def choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    """A ConfigError naming the choices unless `value` is one of them."""
    require(value in allowed, f"unknown {what} {value!r}; choose from {', '.join(allowed)}")

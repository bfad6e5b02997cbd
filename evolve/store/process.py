"""Which process runs a run: pid, host and a token that tells a reused pid apart.

A run records the process that runs it, so a run left 'running' by a process that died
(kill -9, power loss) can be told from a live one: `run_process_state` says which, and
`LogStore.set_status(run, "running")` (what resuming calls) refuses to take over a run whose
process is still alive. Linux tells most precisely (/proc: boot id, pid namespace, start
time); elsewhere a pid that exists counts as alive, and another host as unknown.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

ProcessState = Literal["alive", "dead", "unknown"]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of a local process, from /proc."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = data[data.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _machine_and_namespace() -> str | None:
    """'boot id/pid namespace' of this process: pids are only comparable within both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{namespace}"


def process_token(pid: int | None = None) -> str | None:
    """'boot id/pid namespace/start time' of a local process (default: this one).

    Unlike the pid alone it names one process instance: a pid reused after a crash or a
    reboot gets a different token. None where /proc cannot tell (not Linux).
    """
    where, stat = _machine_and_namespace(), _proc_stat(os.getpid() if pid is None else pid)
    return f"{where}/{stat[1]}" if where and stat else None


def process_state(pid: int | None, host: str | None, token: str | None) -> ProcessState:
    """Whether the process recorded as (pid, host, token) is still running.

    'unknown' where this machine cannot tell: no pid recorded (a run from before migration 3),
    another host name (another machine, or another container sharing the file), or another
    pid namespace.
    """
    if pid is None or host != socket.gethostname() or os.name != "posix":
        return "unknown"
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return "unknown"  # not a pid (a crafted or damaged file): os.kill(0, 0) asks the group
    here = _machine_and_namespace()
    if token and here and token.count("/") == 2:
        boot, namespace, started = token.split("/")
        here_boot, here_namespace = here.split("/")
        if boot != here_boot:
            return "dead"  # this machine has rebooted since: every process of then is gone
        if namespace != here_namespace:
            return "unknown"
        stat = _proc_stat(pid)
        alive = stat is not None and stat[1] == started and stat[0] not in ("Z", "X")
        return "alive" if alive else "dead"
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"  # exists, owned by another user
    except OSError:
        return "unknown"
    return "alive"


def run_process_state(run: Mapping[str, Any]) -> ProcessState | None:
    """For a run row whose status is 'running': whether its process is alive; else None."""
    if run.get("status") != "running":
        return None
    return process_state(run.get("pid"), run.get("host"), run.get("process"))


def shown_status(run: Mapping[str, Any]) -> str:
    """The stored status, except that a 'running' run whose process is gone reads 'dead'."""
    return "dead" if run_process_state(run) == "dead" else str(run["status"])


def config_items(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A stored config as (dotted key, value) pairs in the stored order, e.g.
    ('mutation.top_k', 20); a config that is not a mapping (a hand-edited database) is one
    pair."""
    if not isinstance(config, Mapping):
        return [(prefix.rstrip(".") or "(not a mapping)", config)]
    items: list[tuple[str, Any]] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            items.extend(config_items(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def this_process() -> tuple[int, str, str | None]:
    """(pid, host, token) of the calling process, as a run records it."""
    return os.getpid(), socket.gethostname(), process_token()

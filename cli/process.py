"""The `evolve` process: its entry point, and what Ctrl-C and SIGTERM do to it.

`main` is the console script. Importing torch and transformers takes seconds, and a Ctrl-C
then used to print a long import traceback (or abort inside torch's C++ code). While the
commands are imported, Ctrl-C and SIGTERM now end the process at once with one line (exit
130 or 143): nothing has been written yet.

SIGTERM (`kill PID`, `docker stop`, a SLURM time limit) takes the Ctrl-C path: the handler
raises `Terminated`, a `KeyboardInterrupt`, wherever the process is. A run then records
itself `interrupted` and prints how to resume it, as after Ctrl-C, and the process exits
143 (128 + SIGTERM) instead of 130. A second SIGTERM while the first one is being handled
is ignored, so that recording the interruption is not cut short (SIGKILL still ends it).

When the command is done, everything it wrote is committed; a Ctrl-C during interpreter
shutdown (atexit handlers of torch and threads) then ends the process at once instead of
printing an "Exception ignored in atexit callback" traceback.

This module imports nothing heavy, so that `main` can catch a Ctrl-C during the imports.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for a Ctrl-C
TERMINATED_EXIT = 143  # 128 + SIGTERM, what shells report for `kill PID`


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so it takes the same path."""


_state = {"terminated": False, "main": False}


def terminated() -> bool:
    """Whether the interruption being handled came from SIGTERM rather than Ctrl-C."""
    return _state["terminated"]


def whole_process() -> bool:
    """Whether the command runs as the `evolve` process itself (the console script), not
    inside another program (a test runner, a notebook): only then may it set process-wide
    limits such as SQLite's heap cap."""
    return _state["main"]


def interrupted_exit() -> int:
    """The exit code for the interruption being handled: 143 after SIGTERM, else 130."""
    return TERMINATED_EXIT if terminated() else INTERRUPTED_EXIT


def interruption() -> str:
    """The word that starts the message of the interruption being handled."""
    return "Terminated (SIGTERM)" if terminated() else "Interrupted"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _state["terminated"] = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the first one be handled to the end
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt). Outside the main
    thread (a test runner's worker) Python allows no signal handler: the block runs as is."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # ignored on purpose: keep it so
            yield
            return
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        yield
        return
    _state["terminated"] = False
    try:
        yield
    finally:
        if not terminated():  # after a SIGTERM, further ones stay ignored until the exit
            signal.signal(signal.SIGTERM, previous)


def _leave(code: int, message: str | None = None) -> None:
    """Exit now with `code`, after flushing what was printed; no cleanup can raise."""
    try:
        if message:
            sys.stderr.write(message + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    _leave(TERMINATED_EXIT if signum == signal.SIGTERM else INTERRUPTED_EXIT)


def _quiet_shutdown() -> None:
    """From here on a Ctrl-C or SIGTERM ends the process at once: the command has finished
    and committed; only interpreter cleanup (atexit handlers) is left, which must not print
    a traceback when cut short."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _exit_on_signal)


def _exit_while_starting(signum: int, frame: FrameType | None) -> None:
    _state["terminated"] = signum == signal.SIGTERM
    _leave(interrupted_exit(), f"\n{interruption()} while starting; nothing was written.")


def main() -> None:
    """The `evolve` console script."""
    # While the commands are imported, a Ctrl-C or SIGTERM ends the process at once: nothing
    # is written yet, and a KeyboardInterrupt raised inside torch's C++ import code can
    # abort the interpreter (pybind11's error_already_set) instead of unwinding.
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # keep what nohup or a shell ignores
            signal.signal(sig, _exit_while_starting)
    from cli.main import cli

    if signal.getsignal(signal.SIGINT) is _exit_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _state["main"] = True
    try:
        with sigterm_as_interrupt():
            cli(prog_name="evolve")  # click exits through SystemExit with the command's code
    finally:
        _quiet_shutdown()


if __name__ == "__main__":
    main()

"""Progress on stderr for long commands: a tqdm bar on a terminal, plain lines otherwise.

On a terminal the bar shows steps, ETA and the latest numbers. When stderr is not a
terminal (nohup, SLURM, CI) a bar would be one endless line of carriage returns, so a line
is written every ``every`` steps and at the end instead, as `evolve run` does per generation.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Callable ``(done, total, latest)``; ``close()`` when the work ends."""

    def __init__(self, unit: str = "step", every: int = 25, label: str = "") -> None:
        self.unit = unit
        self.every = max(1, every)
        self.label = label
        self.bar: Any = None
        self.began = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, latest: dict[str, Any] | None = None) -> None:
        shown = {k: f"{v:.4g}" for k, v in (latest or {}).items() if isinstance(v, int | float)}
        if not self.tty:
            if done % self.every == 0 or done == total:
                numbers = " ".join(f"{k} {v}" for k, v in shown.items())
                took = time.perf_counter() - self.began
                print(
                    f"{self.label}{self.unit} {done}/{total} {numbers} {took:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, initial=done - 1)
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

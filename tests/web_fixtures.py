"""A small run database for the web tests, written through LogStore as a run would write it.

Three generations: three initial texts; a one-point crossover child, a mutation child and an
elite copy; then a mutation of the crossover child (the best). Baselines with scores, and a
second run with the same prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolve.store import LogStore

PROMPT = "Mozzarella is white so you can see it at night.\nCheddar is"
INIT = [" yellow like the sun at noon", " orange and sharp on bread", " soft and mild"]
CROSS = " yellow like the sun on bread"  # parent 0's first words, parent 1's last two
MUTANT = " soft and very mild"  # "very" inserted into INIT[2]
BEST = " yellow like the moon on bread"  # "moon" replaces "sun" in CROSS


def _ind(text: str, fitness: float, op: str = "init", parents=(), span=None, detail=None) -> dict:
    return {
        "text": text,
        "token_ids": list(range(len(text.split()))),
        "fitness": fitness,
        "op": op,
        "parents": list(parents),
        "span": span,
        "detail": detail or {},
    }


def _stats(fits: list[float]) -> dict[str, Any]:
    return {
        "best": max(fits),
        "mean": sum(fits) / len(fits),
        "std": 0.1,
        "worst": min(fits),
        "n_evaluated": len(fits),
        "n_cache_hits": 0,
        "n_unique": len(fits),
        "best_individual_id": None,
        "seconds": 0.25,
    }


def write_generation(store: LogStore, run: int, gen: int, inds: list[dict]) -> list[int]:
    return store.write_generation(
        run, gen, inds, _stats([i["fitness"] for i in inds]), f"rng{gen}", {}
    )


def make_db(path: Path) -> dict[str, Any]:
    """Write the database; returns the ids the tests look up."""
    with LogStore(path) as s:
        run = s.create_run(PROMPT, 7, {"population": 3, "generations": 2}, "tiny-bert", None, "pll")
        fits0 = [-3.0, -3.5, -4.0]
        a, b, c = write_generation(
            s, run, 0, [_ind(t, f) for t, f in zip(INIT, fits0, strict=True)]
        )
        cross, mutant, elite = write_generation(
            s,
            run,
            1,
            [
                _ind(CROSS, -2.5, "cx_one_point", (a, b), (4, 6), {"cut_a": [4], "cut_b": [3]}),
                _ind(MUTANT, -3.75, "mut_span", (c,), (2, 3)),
                _ind(INIT[0], -3.0, "elite", (a,)),
            ],
        )
        best, kept = write_generation(
            s,
            run,
            2,
            [_ind(BEST, -2.0, "mut_span", (cross,), (3, 4)), _ind(CROSS, -2.5, "elite", (cross,))],
        )
        s.finish_run(run)
        for method, text, seed in (
            ("greedy", " yellow and white and yellow", None),
            ("sample", " a cheese from England", 0),
        ):
            s.add_baseline(
                PROMPT, method, "smollm2-135m", {"max_new_tokens": 5}, seed, text, run_id=run
            )
        s.put_scores(
            [
                {
                    "text": " yellow and white and yellow",
                    "prefix": PROMPT,
                    "scorer": "causal/smollm2-135m",
                    "total": -12.0,
                    "n_tokens": 6,
                    "per_token": [],
                },
                {
                    "text": BEST,
                    "prefix": PROMPT,
                    "scorer": "causal/smollm2-135m",
                    "total": -9.0,
                    "n_tokens": 6,
                    "per_token": [],
                },
            ]
        )
        other = s.create_run(PROMPT, 8, {"population": 3}, "tiny-bert", None, "pll")
    return {
        "path": path,
        "run": run,
        "other": other,
        "a": a,
        "b": b,
        "c": c,
        "cross": cross,
        "mutant": mutant,
        "elite": elite,
        "best": best,
        "kept": kept,
    }

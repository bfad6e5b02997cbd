"""Scale-out, side by side in one run: one generation in-process vs on 1 and 2 Ray workers.

    .venv/bin/python bench/scale.py                      # tiny-bert and a DistilRoBERTa-size MLM
    .venv/bin/python bench/scale.py --models tiny-bert   # only the packaged tiny BERT
    .venv/bin/python bench/scale.py --workers 1 2 4 --population 128

For each model: a run of population 64 (generation 0 and one generation of the `simple`
loop, PLL fitness, MLM proposer) in this process, then with ``--workers 1`` and
``--workers 2``, every worker and the in-process run with ONE torch thread. Reported per mode
is generation 1 (variation, PLL of the new individuals, selection, the SQLite write):

- seconds, and the speed-up over in-process;
- where the time went on the driver: `driver` (operators, selection, caches: the engine's
  own time outside worker calls), `write` (the recorder's SQLite transaction), and
  `transfer` (time waiting in worker calls beyond the busiest worker's compute:
  serialisation, scheduling, imbalance); `serial share` = (driver + write + transfer) / total,
  the part that more workers do not shorten, and what Amdahl's law projects from;
- the same texts: every mode must give the identical generation (worker-count invariance).

The DistilRoBERTa-size model is random weights of the real shape (6 layers, hidden 768,
vocab 50,265; `bench/pll_speed.py`), saved to a temporary folder so that workers load it
like any model folder; speed depends on the shapes, not the weights. On a shared machine
the load average is printed: workers on 2 cores compete with everything else running.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig, WorkersConfig  # noqa: E402
from evolve.ga.engine import Engine, Generation  # noqa: E402
from evolve.ga.seeding import rng_scope  # noqa: E402
from evolve.ga.workers import open_workers  # noqa: E402
from evolve.store import LogStore  # noqa: E402
from evolve.store.recorder import Recorder  # noqa: E402

PROMPT = "Mozzarella is white\nSo you can see it at night\nCheddar is"


def distilroberta_dir(root: Path) -> str:
    """The random DistilRoBERTa-size MLM of bench/pll_speed.py, saved as a model folder."""
    from pll_speed import random_model

    lm = random_model("distilroberta")
    folder = root / "distilroberta-size"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def config(mlm: str, population: int, workers: int) -> RunConfig:
    return RunConfig(
        prompt=PROMPT,
        population=population,
        generations=1,
        init_len=8,
        min_len=4,
        max_len=12,
        mlm=mlm,
        seed=0,
        device="cpu",
        mutation=MutationConfig(max_span=3),
        fitness=FitnessConfig(objective="pll"),
        workers=WorkersConfig(workers=workers, threads_per_worker=1),
    )


def one_mode(cfg: RunConfig) -> dict[str, Any]:
    """Run generation 0 and 1 of `cfg` into a fresh store; time generation 1."""
    torch.set_num_threads(1)
    store = LogStore(":memory:")
    write: list[float] = []
    with open_workers(cfg) as pool:
        engine = Engine.build(cfg, pool=pool)
        recorder = Recorder.create(store, cfg, engine.fitness_label)

        def record(gen: Generation) -> list[int]:
            started = time.perf_counter()
            ids = recorder(gen)
            write.append(time.perf_counter() - started)
            return ids

        gens: list[Generation] = []
        waits: list[tuple[float, float]] = []
        with rng_scope(cfg.seed):
            for gen in engine.run(record):
                gens.append(gen)
                if pool is not None:
                    waits.append((pool.wait_seconds, pool.critical_seconds))
    g1 = gens[1]
    wait = critical = 0.0
    if waits:
        wait = waits[1][0] - waits[0][0]
        critical = waits[1][1] - waits[0][1]
    total = g1.seconds + write[1]
    driver = g1.seconds - wait if waits else float("nan")
    transfer = wait - critical if waits else float("nan")
    return {
        "seconds": total,
        "driver": driver,
        "write": write[1],
        "transfer": transfer,
        "serial": (driver + write[1] + transfer) / total if waits else float("nan"),
        "texts": g1.texts,
        "n_evaluated": g1.stats.n_evaluated,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-bert", "distilroberta-size"])
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            mlm = distilroberta_dir(Path(tmp)) if name == "distilroberta-size" else name
            print(f"\n{name}: population {args.population}, generation 1")
            print(
                f"{'mode':>12} {'seconds':>8} {'speed-up':>8} {'driver':>7} {'write':>6} "
                f"{'transfer':>8} {'serial':>7} {'texts/s':>8}"
            )
            base: dict[str, Any] | None = None
            for workers in [0, *args.workers]:
                res = one_mode(config(mlm, args.population, workers))
                if base is None:
                    base = res
                same = "same texts" if res["texts"] == base["texts"] else "TEXTS DIFFER"
                mode = "in-process" if workers == 0 else f"{workers} worker{'s' * (workers > 1)}"
                print(
                    f"{mode:>12} {res['seconds']:8.2f} {base['seconds'] / res['seconds']:7.2f}x "
                    f"{res['driver']:7.3f} {res['write']:6.3f} {res['transfer']:8.3f} "
                    f"{res['serial']:7.1%} {res['n_evaluated'] / res['seconds']:8.1f}  {same}"
                )
            print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

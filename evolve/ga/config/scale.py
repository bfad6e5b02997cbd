"""Scale options: Ray workers (`WorkersConfig`, the same result on any number) and islands
(`IslandConfig`, which change the run)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkersConfig:
    """Where the model work of a run happens (`evolve.ga.workers`). None of it changes the
    run's result, so a run may be resumed with other values than it was started with."""

    workers: int = field(
        default=0,
        metadata={
            "help": "Ray workers that fill and score each generation's shards, each with its "
            "own copy of the models; 0 = everything in this process, without Ray."
        },
    )
    ray_address: str = field(
        default="",
        metadata={
            "help": "Join the Ray cluster at this address (auto: the one RAY_ADDRESS names) "
            "instead of starting a local Ray; needs `workers`."
        },
    )
    gpus_per_worker: float = field(
        default=0.0,
        metadata={"help": "GPUs Ray gives each worker (a fraction shares one); 0 = CPU workers."},
    )
    threads_per_worker: int = field(
        default=1,
        metadata={
            "help": "Torch threads (and Ray CPUs) of each worker; 1 lets workers use one core "
            "each without competing."
        },
    )


@dataclass(frozen=True)
class IslandConfig:
    """Island model (DEAP's ``migRing``): sub-populations evolved in step, exchanging their
    best individuals around a ring. Changes the run, unlike `WorkersConfig`."""

    islands: int = field(
        default=1,
        metadata={"help": "Sub-populations sharing `population` equally; 1 = one population."},
    )
    migration_interval: int = field(
        default=5,
        metadata={
            "help": "Generations between migrations; a few, so islands diverge before they mix."
        },
    )
    migrants: int = field(
        default=1,
        metadata={"help": "Best individuals each island sends to the next one per migration."},
    )

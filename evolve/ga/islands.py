"""Island populations: K sub-populations evolved in step, with ring migration between them.

A run with ``--islands K`` keeps one population list of ``population`` individuals whose
positions ``[k * n, (k + 1) * n)`` are island k (n = population / K): every step keeps each
island's size, so an individual's island is its position // n, and a resumed run reads its
islands back from the stored positions. Each generation every island makes its own step
(selection, variation, survivors among its own members) with its share of the population.

Every ``migration_interval`` generations, before the step, DEAP's ``tools.migRing`` moves
``migrants`` individuals around the ring 0 -> 1 -> ... -> K-1 -> 0: the best of each island
(by the objective's scalar, first position among equals) replace the worst of the next one.
The newcomer is a copy of the emigrant (op ``migrate``, the emigrant as its parent, the same
store id until its island records a child of it), so lineage crosses islands, and each move
is returned as a `Migration` for the record of the run. Migration uses no randomness, so a
resumed run migrates exactly as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deap import tools

from evolve.ga.individual import Individual
from evolve.ga.population import Factory, copy_of


@dataclass(frozen=True)
class Migration:
    """One individual copied from one island into the next, before a generation's step."""

    individual_id: int | None  # the emigrant's store id
    from_island: int
    to_island: int


def split(pop: Sequence[Individual], islands: int) -> list[list[Individual]]:
    """The population's islands: contiguous equal parts, in order."""
    n = len(pop) // islands
    return [list(pop[k * n : (k + 1) * n]) for k in range(islands)]


def island_of(positions: int, islands: int) -> list[int]:
    """The island of each position of a population of `positions` individuals."""
    n = positions // islands
    return [p // n for p in range(positions)]


def migrate(
    demes: list[list[Individual]], k: int, scalar: Callable[[Individual], float], make: Factory
) -> list[Migration]:
    """Ring migration in place (see the module docstring); returns the moves made."""
    if len(demes) < 2 or k <= 0:
        return []
    # migRing finds the individuals to replace with `list.index`, i.e. by equality, and two
    # individuals with the same tokens are equal: it works on (island, position) keys, which
    # are unique, and the individuals are moved afterwards.
    keys = [[(d, i) for i in range(len(deme))] for d, deme in enumerate(demes)]

    def fitness(key: tuple[int, int]) -> float:
        return scalar(demes[key[0]][key[1]])

    def best(deme: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
        return sorted(deme, key=lambda key: (-fitness(key), key[1]))[:n]

    def worst(deme: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
        return sorted(deme, key=lambda key: (fitness(key), key[1]))[:n]

    tools.migRing(keys, k, best, replacement=worst)
    moves: list[Migration] = []
    new = []
    for to, deme_keys in enumerate(keys):
        members = []
        for d, i in deme_keys:
            ind = demes[d][i]
            if d != to:
                moves.append(Migration(ind.db_id, d, to))
                ind = copy_of(ind, "migrate", make)
                ind.origin.detail = {"from_island": d, "to_island": to}
            members.append(ind)
        new.append(members)
    demes[:] = new
    return moves

"""Variation operators (DEAP contract: modify in place, return a tuple; see `context`)."""

from evolve.ga.operators.context import OperatorContext
from evolve.ga.operators.crossover import crossover_batch, cx_span, plan_crossover
from evolve.ga.operators.metropolis import mh_accept
from evolve.ga.operators.mutation import (
    mut_delete,
    mut_insert,
    mut_span,
    mutate_batch,
    plan_mutation,
)

__all__ = [
    "OperatorContext", "crossover_batch", "cx_span", "mh_accept", "mut_delete", "mut_insert",
    "mut_span", "mutate_batch", "plan_crossover",  "plan_mutation",
]

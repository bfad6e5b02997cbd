"""One generation of each loop: `simple`, `mu_plus_lambda` and NSGA-II.

- `simple` (eaSimple with elitism): select by tournament, clone, cross and mutate (DEAP's
  varAnd, every edit of the generation in one proposer batch), keep the elites unchanged.
- `mu_plus_lambda`: each child is a crossover, a mutation or a copy (DEAP's varOr); the
  survivors are the best mu of parents + offspring, preferring distinct texts.
- NSGA-II (`evolve.ga.pareto`): crowded tournaments, variation as in `simple`, survivors by
  ``selNSGA2`` from parents + offspring with diversity measured in that pool.

Each step evaluates only the invalid individuals, in one batch (`Evaluator.evaluate`), and
with Metropolis-Hastings (`--mh`) accepts or undoes each pure mutation. Randomness comes from
the global `random` module (as in DEAP) and torch's generator (the proposers' sampling).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deap import tools

from evolve.ga.config import RunConfig
from evolve.ga.evaluate import EvalStats, Evaluator
from evolve.ga.individual import Individual
from evolve.ga.operators import OperatorContext, crossover_batch, mh_accept, mutate_batch
from evolve.ga.pareto import crowded_tournament, select_survivors, set_diversity
from evolve.ga.population import Factory, best_distinct, copy_of, dedupe


@dataclass(frozen=True)
class Parts:
    """What a step works with: the config, the operators' context, the evaluator, and the
    factory of this run's individuals (single- or multi-objective)."""

    cfg: RunConfig
    ctx: OperatorContext
    evaluator: Evaluator
    make: Factory


StepResult = tuple[list[Individual], EvalStats]
Step = Callable[[Parts, list[Individual]], StepResult]


def vary(p: Parts, offspring: list[Individual]) -> None:
    """DEAP's varAnd: cross neighbouring pairs with cxpb, then mutate each with mutpb;
    every crossover and every mutation of the generation goes in one batch."""
    pairs = [
        (offspring[i - 1], offspring[i])
        for i in range(1, len(offspring), 2)
        if random.random() < p.cfg.cxpb
    ]
    if pairs:
        crossover_batch(pairs, ctx=p.ctx)
    mutants = [ind for ind in offspring if random.random() < p.cfg.mutpb]
    if mutants:
        mutate_batch(mutants, ctx=p.ctx)


def metropolis_hastings(p: Parts, pop: list[Individual], parents: Sequence[Individual]) -> None:
    """Accept or undo each pure mutation by the MH rule on the objective's energy (minus the
    total log-likelihood the fitness is made of; -PLL by default)."""
    by_id = {ind.db_id: ind for ind in parents}
    for i, ind in enumerate(pop):
        detail = ind.origin.detail
        if "log_q_forward" not in detail or len(ind.origin.parents) != 1:
            continue
        parent = by_id.get(ind.origin.parents[0])
        if parent is None:
            continue
        accepted = mh_accept(
            old_energy=p.evaluator.energy(parent),
            new_energy=p.evaluator.energy(ind),
            log_q_forward=detail["log_q_forward"],
            log_q_reverse=detail["log_q_reverse"],
        )
        detail["mh_accepted"] = accepted
        if not accepted:
            undone = copy_of(parent, "mh_reject", p.make)
            undone.origin.detail = dict(detail, rejected_op=ind.origin.op, rejected_ids=list(ind))
            pop[i] = undone


def _kept_or_copied(pop: Sequence[Individual], survivors: Sequence[Individual], p: Parts) -> list:
    """Survivors, with those from the old population recorded as copies of themselves."""
    old = {id(ind) for ind in pop}
    return [copy_of(ind, "copy", p.make) if id(ind) in old else ind for ind in survivors]


def step_simple(p: Parts, pop: list[Individual]) -> StepResult:
    cfg = p.cfg
    elites = [copy_of(ind, "elite", p.make) for ind in tools.selBest(pop, cfg.elites)]
    chosen = tools.selTournament(pop, len(pop) - len(elites), tournsize=cfg.tournament)
    offspring = [copy_of(ind, "copy", p.make) for ind in chosen]
    vary(p, offspring)
    new_pop = elites + offspring
    if cfg.dedupe:
        dedupe(new_pop, p.ctx)
    stats = p.evaluator.evaluate(new_pop)
    if cfg.mh:
        metropolis_hastings(p, new_pop, pop)
    return new_pop, stats


def step_mu_plus_lambda(p: Parts, pop: list[Individual]) -> StepResult:
    cfg = p.cfg
    offspring: list[Individual] = []
    pairs: list[tuple[Individual, Individual]] = []
    mutants: list[Individual] = []
    for _ in range(cfg.n_offspring):  # DEAP's varOr: each child is cx, mut or a copy
        op = random.random()
        if op < cfg.cxpb:
            a, b = (copy_of(ind, "copy", p.make) for ind in random.sample(pop, 2))
            pairs.append((a, b))
            offspring.append(a)
        elif op < cfg.cxpb + cfg.mutpb:
            child = copy_of(random.choice(pop), "copy", p.make)
            mutants.append(child)
            offspring.append(child)
        else:
            offspring.append(copy_of(random.choice(pop), "copy", p.make))
    if pairs:
        crossover_batch(pairs, ctx=p.ctx)
    if mutants:
        mutate_batch(mutants, ctx=p.ctx)
    if cfg.dedupe:
        dedupe(offspring, p.ctx, others=pop)
    stats = p.evaluator.evaluate(offspring)
    if cfg.mh:
        metropolis_hastings(p, offspring, pop)
    survivors = best_distinct(pop + offspring, cfg.population)
    return _kept_or_copied(pop, survivors, p), stats


def step_nsga2(p: Parts, pop: list[Individual]) -> StepResult:
    cfg = p.cfg
    chosen = crowded_tournament(pop, cfg.n_offspring)
    offspring = [copy_of(ind, "copy", p.make) for ind in chosen]
    vary(p, offspring)
    if cfg.dedupe:
        dedupe(offspring, p.ctx, others=pop)
    stats = p.evaluator.evaluate(offspring)
    pool = pop + offspring
    set_diversity(pool)
    survivors = select_survivors(pool, cfg.population)
    return _kept_or_copied(pop, survivors, p), stats


def step_for(cfg: RunConfig) -> Step:
    """The step function a config asks for."""
    if cfg.fitness.kind.pareto:
        return step_nsga2
    return step_simple if cfg.algorithm == "simple" else step_mu_plus_lambda

"""Fitness kinds (evolve.ga.fitness): one registry that the config, the CLI and the engine read."""

from __future__ import annotations

import dataclasses

import pytest

from cli.run_cmds import RUN_OPTIONS
from evolve.ga.config import OBJECTIVES, ConfigError, FitnessConfig, RunConfig
from evolve.ga.fitness import CAUSAL, KIND_NAMES, KINDS, PLL, ROLES, TYPICAL, build_objective
from evolve.ga.objectives import Pareto, RepetitionPenalty, WeightedSum
from scoring.results import TokenScores

NAMES = {PLL: "pll/x", CAUSAL: "causal/y", TYPICAL: "typical/z"}


def test_the_registry_is_the_configs_and_the_clis_choices() -> None:
    assert OBJECTIVES == KIND_NAMES == ("pll", "causal", "sum", "nsga2", "typical")
    option = next(o for o in RUN_OPTIONS.options if o.path == "fitness.objective")
    assert tuple(option.attrs["type"].choices) == KIND_NAMES
    for kind in KINDS.values():
        assert f"{kind.name} ({kind.summary.split(',')[0]}" in option.attrs["help"]


@pytest.mark.parametrize("name", KIND_NAMES)
@pytest.mark.parametrize("typical_weight", [0.0, 1.0])
def test_each_kind_reads_what_it_declares(name: str, typical_weight: float) -> None:
    f = FitnessConfig(objective=name, typical_weight=typical_weight)
    reads = f.reads
    assert reads and set(reads) <= set(ROLES)
    # the objective only asks for the scorers of the roles it declared
    objective = build_objective(f, {role: NAMES[role] for role in reads})
    assert set(objective.scorers) == {NAMES[role] for role in reads}
    scores = {NAMES[r]: TokenScores.from_logprobs((-1.0, -2.0)) for r in reads}
    values = objective.values(scores, " a b")
    assert len(values) == objective.n_values
    assert (len(values) > 1) == f.kind.pareto
    assert f.uses_pll == (PLL in reads or (TYPICAL in reads and f.typical_model == "mlm"))


def test_the_repetition_penalty_wraps_any_kind() -> None:
    f = FitnessConfig(objective="sum", rep_penalty=1.0)
    objective = build_objective(f, NAMES)
    assert isinstance(objective, RepetitionPenalty) and isinstance(objective.inner, WeightedSum)
    assert isinstance(build_objective(FitnessConfig(objective="nsga2"), NAMES), Pareto)


def test_a_kinds_own_check_runs_in_validate() -> None:
    f = FitnessConfig(objective="sum", pll_weight=0.0, causal_weight=0.0)
    with pytest.raises(ConfigError, match="fitness sum needs a positive"):
        RunConfig(prompt="x", fitness=f).validate(here=False)
    pareto = dataclasses.replace(RunConfig(prompt="x"), mh=True)
    pareto = dataclasses.replace(pareto, fitness=FitnessConfig(objective="nsga2"))
    with pytest.raises(ConfigError, match="single fitness, not nsga2"):
        pareto.validate(here=False)


def test_an_unknown_kind_is_a_config_error_not_a_key_error() -> None:
    with pytest.raises(ConfigError, match="unknown fitness objective 'nope'"):
        FitnessConfig(objective="nope").kind  # noqa: B018

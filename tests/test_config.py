"""RunConfig (evolve.ga.config): help on every field, choices written once, the dict round trip."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from evolve.ga import config as config_module
from evolve.ga.config import (
    ConfigError,
    CrossoverConfig,
    FitnessConfig,
    MutationConfig,
    RunConfig,
)

CLASSES = [RunConfig, MutationConfig, CrossoverConfig, FitnessConfig]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_help(cls: type) -> None:
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help", "")
        assert text.strip() and text.strip()[-1] == ".", f"{cls.__name__}.{f.name}: {text!r}"


@pytest.mark.parametrize(
    "choices, path",
    [
        ("ALGORITHMS", "algorithm"),
        ("PROPOSERS", "proposer"),
        ("INITS", "init"),
        ("FILL_ORDERS", "mutation.order"),
        ("CX_POINTS", "crossover.points"),
        ("OBJECTIVES", "fitness.objective"),
        ("PLL_VARIANTS", "fitness.variant"),
        ("NORMALISATIONS", "fitness.normalise"),
    ],
)
def test_choice_tuples_are_the_literal_types_of_the_fields(choices: str, path: str) -> None:
    cls: type = RunConfig
    *parents, name = path.split(".")
    for parent in parents:
        cls = typing.get_type_hints(cls)[parent]
    kind = typing.get_type_hints(cls)[name]
    assert typing.get_origin(kind) is typing.Literal
    assert getattr(config_module, choices) == typing.get_args(kind)
    default = getattr(cls(), name) if cls is not RunConfig else getattr(RunConfig("x"), name)
    assert default in getattr(config_module, choices)


def test_inits_include_the_baseline_inits() -> None:
    assert set(config_module.BASELINE_INITS) < set(config_module.INITS)
    assert config_module.INITS == ("auto", "seed", "mlm", "beam", "greedy", "sample")


def test_to_dict_from_dict_round_trip_through_json() -> None:
    cfg = RunConfig(
        prompt="Cheddar is",
        seed_texts=("yellow", "sharp"),
        population=6,
        dedupe=False,
        mutation=MutationConfig(order="parallel", top_k=0),
        crossover=CrossoverConfig(points="two", seam=0),
        fitness=FitnessConfig(objective="sum", causal_weight=0.5, bf16=True),
    )
    stored = json.loads(json.dumps(cfg.to_dict()))  # what the store keeps
    assert RunConfig.from_dict(stored) == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(RunConfig.from_dict(stored).seed_texts, tuple)


def test_missing_keys_take_their_defaults() -> None:
    partial = {"prompt": "Brie is", "mutation": {"top_k": 5}}
    cfg = RunConfig.from_dict(partial)
    assert cfg == RunConfig(prompt="Brie is", mutation=MutationConfig(top_k=5))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"prompt": "x", "populaton": 8}, "unknown config key 'populaton'"),
        ({"prompt": "x", "mutation": {"top_p": 0.9}}, "unknown config key 'mutation.top_p'"),
        ({"prompt": "x", "fitness": {"objective": "pll", "x": 1}}, "'fitness.x'"),
        ({"population": 8}, "config has no 'prompt'"),
        ({"prompt": "x", "crossover": 2}, "config 'crossover' is not a mapping"),
        ([], "a run config must be a mapping"),
    ],
)
def test_from_dict_refuses_what_it_does_not_know(data: typing.Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(data)
    assert str(caught.value) == message or message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_from_dict_takes_built_nested_configs() -> None:
    cfg = RunConfig.from_dict({"prompt": "x", "fitness": FitnessConfig(objective="causal")})
    assert cfg.fitness.objective == "causal" and cfg.uses_causal


def test_validate_still_checks_choices() -> None:
    bad = RunConfig.from_dict({"prompt": "x", "mutation": {"order": "r2l"}})
    with pytest.raises(ConfigError, match="unknown fill order 'r2l'; choose from l2r, parallel"):
        bad.validate()
    assert RunConfig(prompt="x").validate() == RunConfig(prompt="x")


def test_proposer_dtype_bf16_needs_the_causal_proposer():
    cfg = RunConfig(prompt="p", mutation=MutationConfig(proposer_dtype="bf16"))
    with pytest.raises(ConfigError, match="applies to the causal proposer"):
        cfg.validate(here=False)
    with pytest.raises(ConfigError, match="proposer dtype"):
        RunConfig(
            prompt="p", proposer="causal", mutation=MutationConfig(proposer_dtype="fp16")  # type: ignore[arg-type]
        ).validate(here=False)

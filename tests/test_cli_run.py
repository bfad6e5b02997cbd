"""`evolve run` options are generated from RunConfig (cli/options.py): help, defaults, names.

The options must keep today's names and short flags, show each field's help and default,
and map back onto exactly the config that the same values make in Python.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import Result
from helpers_proc import PROMPT

from cli.options import ConfigOptions, config_fields
from cli.run_cmds import RUN_OPTIONS, run
from evolve.ga.config import (
    CrossoverConfig,
    FitnessConfig,
    IslandConfig,
    MutationConfig,
    RunConfig,
    WorkersConfig,
)
from evolve.store import LogStore

Invoke = Callable[..., Result]

# The option names `evolve run` had before they were generated; scripts rely on them.
NAMES_BEFORE = [
    "--prompt",
    "--prompt-file",
    "--seed-text",
    "-p",
    "--population",
    "-g",
    "--generations",
    "--algorithm",
    "--offspring",
    "--cxpb",
    "--mutpb",
    "--tournament",
    "--elites",
    "--patience",
    "--init-len",
    "--min-len",
    "--max-len",
    "--max-span",
    "--indel-prob",
    "--temperature",
    "--top-k",
    "--fill-order",
    "--proposer",
    "--candidates",
    "--init",
    "--cx-points",
    "--seam",
    "--fitness",
    "--pll-weight",
    "--causal-weight",
    "--variant",
    "--normalise",
    "--length-bonus",
    "--bf16",
    "--mh",
    "--no-dedupe",
    "--mlm",
    "--causal",
    "--seed",
    "--device",
    "-q",
    "--quiet",
    "--db",
]


def _context() -> click.Context:
    return click.Context(run, info_name="run")


def test_every_run_option_has_help() -> None:
    ctx = _context()
    for param in run.get_params(ctx):
        record = param.get_help_record(ctx)
        assert record is not None, param.name
        text = re.sub(r"\s*\[default: .*\]$", "", record[1])
        assert text.strip(), f"{record[0]} has no help"


def test_shown_defaults_are_the_dataclass_defaults() -> None:
    ctx = _context()
    params = {p.name: p for p in run.params}
    for option in RUN_OPTIONS.options:
        param = params[option.param]
        assert param.get_default(ctx) == option.default, option.path
        record = param.get_help_record(ctx)
        assert record is not None
        if isinstance(param, click.Option) and (param.is_flag or param.multiple):
            assert "[default:" not in record[1]
        else:
            shown = '""' if option.default == "" else option.default  # click quotes ""
            assert record[1].endswith(f"[default: {shown}]"), record


def test_today_names_and_short_flags_keep_working() -> None:
    names = {name for p in run.params for name in (*p.opts, *p.secondary_opts)}
    assert set(NAMES_BEFORE) <= names, set(NAMES_BEFORE) - names
    scale = {
        "--workers",
        "--ray-address",
        "--gpus-per-worker",
        "--threads-per-worker",
        "--islands",
        "--migration-interval",
        "--migrants",
    }  # issue 11
    new = {"--min-tol", *scale}  # new field options
    new |= {"--config", "--from", "--name", "--tag", "--note", "--log-json"}  # issue 12
    new |= {"--no-repeat-ngram", "--ban-token", "--typical-weight", "--typical-model"}
    new |= {"--rep-penalty", "--rep-n"}  # issue 14
    new |= {"--proposer-dtype"}  # issue 16
    assert new == names - set(NAMES_BEFORE) - {"--help"}


def test_every_config_field_but_the_prompt_is_an_option() -> None:
    paths = {path for path, _, _ in config_fields(RunConfig)}
    assert {o.path for o in RUN_OPTIONS.options} == paths - {"prompt", "seed_texts"}


def _parse(*args: str) -> RunConfig:
    ctx = run.make_context("run", ["--prompt", "x", *args])
    data = RUN_OPTIONS.values(ctx.params)
    return RunConfig.from_dict({**data, "prompt": "x"})


def test_no_options_make_the_default_config() -> None:
    assert _parse() == RunConfig(prompt="x")


def test_every_option_reaches_its_field() -> None:
    changed = RunConfig(
        prompt="x",
        population=5,
        generations=2,
        algorithm="mu_plus_lambda",
        offspring=7,
        cxpb=0.25,
        mutpb=0.5,
        tournament=2,
        elites=0,
        patience=3,
        min_tol=0.01,
        dedupe=False,
        init_len=5,
        min_len=2,
        max_len=9,
        mlm="some-mlm",
        causal="some-causal",
        proposer="causal",
        init="beam",
        seed=11,
        mh=True,
        device="meta",
        mutation=MutationConfig(
            max_span=2,
            indel_prob=0.1,
            temperature=0.7,
            top_k=9,
            order="parallel",
            candidates=3,
            proposer_dtype="bf16",
            no_repeat_ngram=3,
            ban_tokens=("the", "and"),
        ),
        crossover=CrossoverConfig(points="two", seam=2),
        fitness=FitnessConfig(
            objective="sum",
            variant="word_l2r",
            normalise="total",
            length_bonus=0.5,
            bf16=True,
            pll_weight=0.5,
            causal_weight=2.0,
            typical_weight=0.25,
            typical_model="causal",
            rep_penalty=0.5,
            rep_n=3,
        ),
        workers=WorkersConfig(
            workers=2, ray_address="auto", gpus_per_worker=0.5, threads_per_worker=2
        ),
        island=IslandConfig(islands=2, migration_interval=3, migrants=2),
    )
    args: list[str] = []
    for option in RUN_OPTIONS.options:
        value: Any = changed.to_dict()
        for part in option.path.split("."):
            value = value[part]
        assert value != option.default, f"the test leaves {option.path} at its default"
        if isinstance(value, bool):
            args.append(option.long)
        elif isinstance(value, tuple):  # a repeatable option
            for item in value:
                args += [option.long, item]
        else:
            args += [option.long, str(value)]
    assert _parse(*args) == changed


def test_a_field_without_help_cannot_become_an_option() -> None:
    @dataclasses.dataclass(frozen=True)
    class Bare:
        size: int = 3

    with pytest.raises(TypeError, match="size has no help"):
        ConfigOptions(Bare)


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = dataclasses.field(default=1, metadata={"help": "Inner size."})


@dataclasses.dataclass(frozen=True)
class Outer:  # its annotations name Inner, so both live at module level
    size: int = dataclasses.field(default=2, metadata={"help": "Outer size."})
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_two_fields_with_one_option_name_are_refused() -> None:
    with pytest.raises(TypeError, match="two fields make the option --size"):
        ConfigOptions(Outer)
    renamed = ConfigOptions(Outer, names={"inner.size": "--inner-size"})
    assert [o.long for o in renamed.options] == ["--size", "--inner-size"]
    assert renamed.values({"size": 3, "inner__size": 4}) == {"size": 3, "inner": {"size": 4}}


def test_renames_must_name_fields() -> None:
    with pytest.raises(TypeError, match="has no field 'mutation.typo'"):
        ConfigOptions(RunConfig, names={"mutation.typo": "--x"}, skip=("prompt",))


def test_a_bad_choice_is_clicks_usage_error(invoke: Invoke) -> None:
    result = invoke("run", "--prompt", "x", "--fill-order", "r2l")
    assert result.exit_code == 2
    assert "Invalid value for '--fill-order': 'r2l' is not one of 'l2r', 'parallel'." in (
        result.stderr
    )


def test_run_stores_the_config_its_options_make(
    tmp_path: Path, tiny_bert_dir: Path, invoke: Invoke
) -> None:
    db = tmp_path / "cli.db"
    args = ["-p", "4", "-g", "1", "--init-len", "5", "--min-len", "3", "--max-len", "8"]
    more = ["--no-dedupe", "--fill-order", "parallel", "--cx-points", "one", "--top-k", "20"]
    result = invoke(
        "run", "--prompt", PROMPT, "--mlm", tiny_bert_dir, *args, *more, "-q", "--db", db
    )
    assert result.exit_code == 0, result.output
    with LogStore(db, readonly=True) as store:
        (record,) = store.runs()
        config = record["config"]
        stored = RunConfig.from_dict(json.loads(config) if isinstance(config, str) else config)
    assert stored == RunConfig(
        prompt=PROMPT,
        population=4,
        generations=1,
        init_len=5,
        min_len=3,
        max_len=8,
        dedupe=False,
        mlm=str(tiny_bert_dir),
        mutation=MutationConfig(order="parallel", top_k=20),
        crossover=CrossoverConfig(points="one"),
    )
    assert f"Run {record['id']} finished: 1 generations." in result.output


def test_resume_refuses_a_stored_config_with_an_unknown_key(tmp_path: Path, invoke: Invoke) -> None:
    db = tmp_path / "odd.db"
    with LogStore(db) as store:
        run_id = store.create_run(
            PROMPT, 2, {"prompt": PROMPT, "warp": 9}, "tiny-bert", None, "pll"
        )
    result = invoke("resume", str(run_id), "--db", db)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "Error: unknown config key 'warp'"


def test_field_types_are_the_option_types() -> None:
    hints = {path: kind for path, _, kind in config_fields(RunConfig)}
    params = {p.name: p for p in run.params}
    for option in RUN_OPTIONS.options:
        kind, param = hints[option.path], params[option.param]
        if typing.get_origin(kind) is typing.Literal:
            assert isinstance(param.type, click.Choice)
            assert tuple(param.type.choices) == typing.get_args(kind)
        elif kind is bool:
            assert isinstance(param, click.Option) and param.is_flag
        elif typing.get_origin(kind) is tuple:  # tuple[str, ...]: a repeatable text option
            assert isinstance(param, click.Option) and param.multiple
            assert param.type.name == "text"
        else:
            assert param.type.name == {int: "integer", float: "float", str: "text"}[kind]

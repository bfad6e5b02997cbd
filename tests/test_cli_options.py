"""`evolve stunt`, `evolve amplify` and `evolve baseline` options come from their configs
(cli/options.py).

Each config field with help becomes an option whose help and default are the field's; the
option names, short flags, defaults and choices are the ones the commands had when the
options were written by hand (scripts rely on them). A bad value is one line, exit 2. Also
the generator's parts that these commands brought: `--x/--no-x` pairs, `X | None` fields,
comma-separated number tuples and a click type of a field's own.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
import pytest
from click.testing import Result

from cli.amplify_cmds import AMPLIFY_OPTIONS, amplify
from cli.baseline_cmds import BASELINE_OPTIONS, baseline
from cli.common import COUNT
from cli.options import ConfigOptions, NumberList
from cli.stunt_cmds import STUNT_OPTIONS, stunt
from evolve.experiments.amplify import AmplifyConfig
from evolve.experiments.baselines import METHODS, BaselineConfig
from evolve.experiments.stunting import StuntConfig

Invoke = Callable[..., Result]
RANGE = "0<=x<=9223372036854775807"  # COUNT's range, shown after the default

# (option names, shown default) of each config option before they were generated, from
# `evolve stunt --help` and `evolve amplify --help`; None where no default was shown.
STUNT_BEFORE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "variant": (("--variant",), "none"),
    "alpha": (("--alpha",), "0.5"),
    "steps": (("--steps",), None),
    "epochs": (("--epochs",), None),
    "lr": (("--lr",), "0.0001"),
    "seq_len": (("--seq-len",), "32"),
    "batch_tokens": (("--batch-tokens",), "64"),
    "beams": (("--beams", "-B"), "4"),
    "depth": (("--depth", "-D"), "2"),
    "eval_every": (("--eval-every",), "10"),
    "dev_positions": (("--dev-positions",), "128"),
    "dev_stride": (("--dev-stride",), "1"),
    "balance_cap": (("--balance-cap",), "10.0"),
    "unwrap": (("--unwrap", "--no-unwrap"), "no-unwrap"),
    "model": (("--model",), "smollm2-135m"),
    "seed": (("--seed",), "0"),
}
AMPLIFY_BEFORE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "causal": (("--causal",), "smollm2-135m"),
    "beams": (("--beams", "-B"), f"4; {RANGE}"),
    "depth": (("--depth", "-D"), f"3; {RANGE}"),
    "lambdas": (("--lambdas",), "0,0.01,0.02,0.05,0.1,0.2,0.3,0.5,0.7,1"),
    "epsilon": (("--epsilon",), "0.01"),
    "length_norm": (("--length-norm", "--no-length-norm"), "no-length-norm"),
    "max_positions": (("--max-positions",), f"200; {RANGE}"),
    "stride": (("--stride",), f"1; {RANGE}"),
    "start": (("--start",), f"1; {RANGE}"),
    "unwrap": (("--unwrap", "--no-unwrap"), "no-unwrap"),
    "batch_tokens": (("--batch-tokens",), f"64; {RANGE}"),
}
# Options added since (issue 23: particle lookahead, v4/v5 stunting), checked the same way.
STUNT_ADDED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "particles": (("--particles",), "8"),
    "beta": (("--beta",), "2.0"),
    "retrain_every": (("--retrain-every",), "50"),
    "amplifier_windows": (("--amplifier-windows",), "16"),
    "amplifier_steps": (("--amplifier-steps",), "200"),
    "tree_tokens": (("--tree-tokens",), "1024"),
}
AMPLIFY_ADDED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "lookahead": (("--lookahead",), "beam"),
    "particles": (("--particles",), f"16; {RANGE}"),
    "beta": (("--beta",), "2.0"),
    "batched": (("--batched",), None),
    "seed": (("--seed",), f"0; {RANGE}"),
}
COMMANDS = [
    pytest.param(stunt, STUNT_OPTIONS, StuntConfig, STUNT_BEFORE | STUNT_ADDED, id="stunt"),
    pytest.param(
        amplify, AMPLIFY_OPTIONS, AmplifyConfig, AMPLIFY_BEFORE | AMPLIFY_ADDED, id="amplify"
    ),
]


def _shown_default(help_text: str) -> str | None:
    found = re.search(r"\[default: (.*)\]$", help_text)
    return found.group(1) if found else None


@pytest.mark.parametrize("command,options,config,before", COMMANDS)
def test_names_defaults_and_choices_are_as_before(
    command: click.Command, options: ConfigOptions, config: type, before: dict
) -> None:
    ctx = click.Context(command, info_name=command.name)
    params = {p.name: p for p in command.params}
    assert {o.param for o in options.options} == set(before)
    for name, (names, shown) in before.items():
        param = params[name]
        assert set(param.opts) | set(param.secondary_opts) == set(names), name
        record = param.get_help_record(ctx)
        assert record is not None
        assert _shown_default(record[1]) == shown, (name, record)
    assert params["beams"].type.name == params["depth"].type.name  # both counts, or both ints
    if command is stunt:
        variant = params["variant"].type
        assert isinstance(variant, click.Choice)
        assert tuple(variant.choices)[:4] == ("none", "skip", "penalty", "balance")
        assert tuple(variant.choices)[4:] == ("particle", "adversarial")  # issue 23


@pytest.mark.parametrize("command,options,config,before", COMMANDS)
def test_every_field_with_help_is_in_the_help(
    command: click.Command, options: ConfigOptions, config: type, before: dict, invoke: Invoke
) -> None:
    result = invoke(command.name, "--help", terminal_width=200, max_content_width=200)
    assert result.exit_code == 0, result.output
    shown = re.sub(r"\s+", " ", result.stdout)
    with_help = [f for f in dataclasses.fields(config) if f.metadata.get("help")]
    without = {f.name for f in dataclasses.fields(config)} - {f.name for f in with_help}
    assert without == {"device"}  # the one field that is no option
    by_path = {o.path: o for o in options.options}
    for f in with_help:
        option = by_path[f.name]
        assert f" {option.long} " in shown, f"{option.long} is not in `{command.name} --help`"
        start = " ".join(f.metadata["help"].split()[:3])  # before any `field` -> --option
        pattern = re.escape(option.long) + r" .{0,40}?" + re.escape(start)  # name, metavar, help
        assert re.search(pattern, shown), f"{option.long} is not shown with its field's help"


@pytest.mark.parametrize("command,options,config,before", COMMANDS)
def test_no_options_make_the_default_config(
    command: click.Command, options: ConfigOptions, config: type, before: dict
) -> None:
    ctx = command.make_context(command.name, [])
    assert config(**options.values(ctx.params)) == config()


def test_stunt_options_reach_their_fields() -> None:
    args = ["--variant", "balance", "--alpha", "0.25", "--epochs", "1.5", "--lr", "0.001"]
    args += ["--seq-len", "16", "--batch-tokens", "48", "-B", "3", "-D", "4"]
    args += ["--eval-every", "5", "--dev-positions", "20", "--dev-stride", "2"]
    args += ["--balance-cap", "3", "--unwrap", "--model", "m", "--seed", "9"]
    ctx = stunt.make_context("stunt", args)
    want = StuntConfig(
        variant="balance",
        alpha=0.25,
        epochs=1.5,
        lr=1e-3,
        seq_len=16,
        batch_tokens=48,
        beams=3,
        depth=4,
        eval_every=5,
        dev_positions=20,
        dev_stride=2,
        balance_cap=3.0,
        unwrap=True,
        model="m",
        seed=9,
    )
    assert StuntConfig(**STUNT_OPTIONS.values(ctx.params)) == want
    steps = stunt.make_context("stunt", ["--steps", "7", "--no-unwrap"]).params
    assert STUNT_OPTIONS.values(steps)["steps"] == 7 and not STUNT_OPTIONS.values(steps)["unwrap"]


def test_amplify_options_reach_their_fields() -> None:
    args = ["-B", "2", "-D", "5", "--lambdas", " 0, 0.5 ,1 ", "--epsilon", "0.1"]
    args += ["--length-norm", "--max-positions", "9", "--stride", "3", "--start", "0"]
    args += ["--unwrap", "--causal", "m", "--batch-tokens", "8"]
    ctx = amplify.make_context("amplify", args)
    want = AmplifyConfig(
        beams=2,
        depth=5,
        lambdas=(0.0, 0.5, 1.0),
        epsilon=0.1,
        length_norm=True,
        max_positions=9,
        stride=3,
        start=0,
        unwrap=True,
        causal="m",
        batch_tokens=8,
    )
    assert AmplifyConfig(**AMPLIFY_OPTIONS.values(ctx.params)) == want


def _files(tmp_path: Path) -> list[str]:
    for name in ("train.txt", "dev.txt"):
        (tmp_path / name).write_text("Some text.", encoding="utf-8")
    return ["--train", str(tmp_path / "train.txt"), "--dev", str(tmp_path / "dev.txt")]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--variant", "odd"], "Invalid value for '--variant': 'odd' is not one of"),
        (["--steps", "x"], "Invalid value for '--steps': 'x' is not a valid integer."),
        (["-B", "1.5"], "Invalid value for '-B' / '--beams': '1.5' is not a valid integer."),
        (["--alpha", "nan"], "alpha must be a number, got nan"),
        (["--dev-stride", "0"], "dev-stride must be at least 1, got 0"),
        (["--seq-len", "65"], "batch-tokens (64) must be at least seq-len (65)"),
        (["--unwrap=yes"], "Option '--unwrap' does not take a value."),
    ],
)
def test_stunt_bad_value_is_one_line_exit_2(
    tmp_path: Path, invoke: Invoke, extra: list[str], message: str
) -> None:
    db = tmp_path / "s.db"
    result = invoke("stunt", *_files(tmp_path), "--db", db, *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {message}"), result.stderr
    assert not db.exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lambdas", "a,b"], "Invalid value for '--lambdas': must be comma-separated numbers"),
        (["--lambdas", ","], "Invalid value for '--lambdas': no numbers in ','"),
        (["--lambdas", "0,1.5"], "every lambda must lie in [0, 1], got 1.5"),
        (["--beams", "-1"], "Invalid value for '-B' / '--beams': -1 is not in the range"),
        (["--start", str(2**63)], "Invalid value for '--start'"),
        (["--epsilon", "zero"], "Invalid value for '--epsilon': 'zero' is not a valid float."),
        (["--batch-tokens", "0"], "batch-tokens must be at least 1, got 0"),
    ],
)
def test_amplify_bad_value_is_one_line_exit_2(
    tmp_path: Path, invoke: Invoke, extra: list[str], message: str
) -> None:
    db = tmp_path / "a.db"
    result = invoke("amplify", "Some text.", "--db", db, *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {message}"), result.stderr
    assert not db.exists()


# -- the generator's parts these commands brought ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Knobs:
    shout: bool = dataclasses.field(default=True, metadata={"help": "Shout the `level`."})
    level: int | None = dataclasses.field(default=None, metadata={"help": "Level, if any."})
    weights: tuple[float, ...] = dataclasses.field(
        default=(0.0, 0.5), metadata={"help": "Weights."}
    )
    counts: tuple[int, ...] = dataclasses.field(default=(1,), metadata={"help": "Counts."})
    size: int = dataclasses.field(default=3, metadata={"help": "Size."})
    mode: Literal["a", "b"] = dataclasses.field(default="a", metadata={"help": "Mode."})


KNOBS = ConfigOptions(Knobs, toggles=("shout",), types={"size": COUNT})


@click.command()
@KNOBS
def knobs(**opts: Any) -> None:
    """Echo the config the options make."""
    click.echo(repr(Knobs(**KNOBS.values(opts))))


def _knobs(*args: str) -> Knobs:
    return Knobs(**KNOBS.values(knobs.make_context("knobs", list(args)).params))


def test_a_toggle_is_an_on_off_pair_named_after_the_field() -> None:
    shout = KNOBS.options[0]
    assert shout.decls == ("--shout/--no-shout",) and shout.long == "--shout"
    assert _knobs().shout and not _knobs("--no-shout").shout and _knobs("--shout").shout
    ctx = click.Context(knobs, info_name="knobs")
    record = knobs.params[0].get_help_record(ctx)
    assert record == ("--shout / --no-shout", "Shout the --level.  [default: shout]")


def test_optional_number_and_number_tuple_fields() -> None:
    assert _knobs() == Knobs()
    got = _knobs("--level", "4", "--weights", "1,2.5", "--counts", "3, 4,")
    assert got == Knobs(level=4, weights=(1.0, 2.5), counts=(3, 4))
    assert isinstance(got.weights[0], float) and isinstance(got.counts[0], int)
    with pytest.raises(click.BadParameter, match="comma-separated integers, got '1.5'"):
        _knobs("--counts", "1.5")
    assert NumberList.format((0.0, 0.01, 1.0)) == "0,0.01,1"
    exact = (0.1234567891, 1e-9, 3)
    assert NumberList(float).convert(NumberList.format(exact), None, None) == exact


def test_a_field_may_have_its_own_click_type() -> None:
    assert _knobs("--size", "5").size == 5
    with pytest.raises(click.BadParameter, match="not in the range"):
        _knobs("--size", "-1")


def test_toggles_and_types_must_fit_their_fields() -> None:
    with pytest.raises(TypeError, match="size is no bool"):
        ConfigOptions(Knobs, toggles=("size",))
    with pytest.raises(TypeError, match="shout is a flag"):
        ConfigOptions(Knobs, types={"shout": COUNT})
    with pytest.raises(TypeError, match="has no field 'loud'"):
        ConfigOptions(Knobs, toggles=("loud",))


# `evolve baseline --help` before its options were generated (issue 24), the particle,
# learned and amplifier options of issue 23 included: (option names, shown default).
BASELINE_BEFORE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "run_id": (("--run",), None),
    "methods": (("--method",), None),
    "causal": (("--causal",), None),
    "new_tokens": (("--new-tokens",), None),
    "num_beams": (("--num-beams",), f"4; {RANGE}"),
    "length_penalty": (("--length-penalty",), "1.0"),
    "no_repeat_ngram_size": (("--no-repeat-ngram-size",), f"0; {RANGE}"),
    "num_return_sequences": (("--num-return-sequences",), f"1; {RANGE}"),
    "temperature": (("--temperature",), "1.0"),
    "top_k": (("--top-k",), f"0; {RANGE}"),
    "top_p": (("--top-p",), "0.9"),
    "typical_p": (("--typical-p",), "1.0"),
    "samples": (("--samples",), f"5; {RANGE}"),
    "amp_depth": (("--amp-depth",), f"3; {RANGE}"),
    "amp_lambda": (("--amp-lambda",), "0.5"),
    "particles": (("--particles",), f"16; {RANGE}"),
    "beta": (("--beta",), "2.0"),
    "amplifier": (("--amplifier",), None),
    "seed": (("--seed",), f"0; {RANGE}"),
    "device": (("--device",), "cpu"),
}


def _click_default(help_text: str) -> str | None:
    """The default click appends to an option's help (not one the help text itself names)."""
    found = re.search(r"(?:^|  )\[default: ([^\]]*)\]$", help_text)
    return found.group(1) if found else None


COUNTS = ("run_id", "new_tokens", "num_beams", "no_repeat_ngram_size", "num_return_sequences")
COUNTS += ("top_k", "samples", "amp_depth", "particles", "seed")


def test_baseline_names_defaults_and_types_are_as_before(invoke: Invoke) -> None:
    ctx = click.Context(baseline, info_name="baseline")
    params = {p.name: p for p in baseline.params}
    assert {o.param for o in BASELINE_OPTIONS.options} == set(BASELINE_BEFORE)
    assert set(params) == {*BASELINE_BEFORE, "prompt", "db_path"}
    for name, (names, shown) in BASELINE_BEFORE.items():
        param = params[name]
        assert set(param.opts) | set(param.secondary_opts) == set(names), name
        record = param.get_help_record(ctx)
        assert record is not None
        assert _click_default(record[1]) == shown, (name, record)
    for name in COUNTS:
        assert isinstance(params[name].type, click.IntRange), name
    method = params["methods"]
    assert method.multiple and isinstance(method.type, click.Choice)
    assert tuple(method.type.choices) == METHODS
    result = invoke("baseline", "--help", terminal_width=200, max_content_width=200)
    shown = re.sub(r"\s+", " ", result.stdout)
    for f in dataclasses.fields(BaselineConfig):
        start = " ".join(f.metadata["help"].split()[:3])
        assert start in shown, f"{f.name}'s help is not in `evolve baseline --help`"


def test_baseline_options_reach_their_fields() -> None:
    assert BaselineConfig(**BASELINE_OPTIONS.values(baseline.make_context("b", []).params)) == (
        BaselineConfig()
    )
    args = ["--run", "3", "--method", "beam", "--method", "particle", "--causal", "m"]
    args += ["--new-tokens", "7", "--num-beams", "6", "--length-penalty", "0.5"]
    args += ["--no-repeat-ngram-size", "2", "--num-return-sequences", "3", "--temperature", "0.7"]
    args += ["--top-k", "9", "--top-p", "0.8", "--typical-p", "0.95", "--samples", "2"]
    args += ["--amp-depth", "4", "--amp-lambda", "0.25", "--particles", "8", "--beta", "3"]
    args += ["--amplifier", "amp", "--seed", "11", "--device", "cuda"]
    values = BASELINE_OPTIONS.values(baseline.make_context("baseline", args).params)
    assert BaselineConfig(**values) == BaselineConfig(
        run_id=3,
        methods=("beam", "particle"),
        causal="m",
        new_tokens=7,
        num_beams=6,
        length_penalty=0.5,
        no_repeat_ngram_size=2,
        num_return_sequences=3,
        temperature=0.7,
        top_k=9,
        top_p=0.8,
        typical_p=0.95,
        samples=2,
        amp_depth=4,
        amp_lambda=0.25,
        particles=8,
        beta=3.0,
        amplifier="amp",
        seed=11,
        device="cuda",
    )


def test_baseline_bad_value_is_one_line_exit_2(invoke: Invoke) -> None:
    result = invoke("baseline", "--prompt", "Hi", "--method", "odd")
    assert result.exit_code == 2
    assert "Invalid value for '--method': 'odd' is not one of" in result.output
    result = invoke("baseline", "--prompt", "Hi", "--num-beams", "-1")
    assert result.exit_code == 2 and "Invalid value for '--num-beams'" in result.output

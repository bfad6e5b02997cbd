"""Bad input through the real CLI: one clear line, exit code 2, no traceback, nothing lost.

Every case goes through `cli.main.cli` (the `evolve` command) with the conftest `invoke`
fixture (click's CliRunner), against a
database that already holds a finished run, which must come out unchanged; a few cases run
`evolve` as a child process to show that stderr holds that one line and no traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers_proc import PROMPT, run_evolve

from evolve.store import LogStore

Invoke = Callable[..., Result]


@pytest.fixture(scope="module")
def models(
    tiny_bert_dir: Path, tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny model folders, and broken ones made from them."""
    root = tmp_path_factory.mktemp("broken-models")
    config_only = root / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", config_only)
    no_weights = root / "no-weights"  # config and tokenizer, but no weights file
    shutil.copytree(tiny_bert_dir, no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    no_mask = root / "no-mask"  # a BERT whose tokenizer has no mask token
    shutil.copytree(tiny_bert_dir, no_mask)
    tok_config = no_mask / "tokenizer_config.json"
    settings = json.loads(tok_config.read_text())
    settings.pop("mask_token", None)
    tok_config.write_text(json.dumps(settings))
    empty = root / "empty-folder"
    empty.mkdir()
    latin1 = root / "prompt-latin1.txt"
    latin1.write_bytes("Brie is caf\xe9 au lait".encode("latin-1"))
    return {
        "bert": tiny_bert_dir,
        "gpt2": tiny_gpt2_dir,
        "config_only": config_only,
        "no_weights": no_weights,
        "no_mask": no_mask,
        "empty": empty,
        "latin1": latin1,
    }


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database holding one finished run of one generation, which no bad input may touch."""
    path = tmp_path / "runs.db"
    with LogStore(path) as s:
        run = s.create_run(PROMPT, 1, {}, "tiny-bert", None, "pll")
        row = {"text": " old", "token_ids": [5, 6], "fitness": -1.0, "scores": {}, "op": "init"}
        s.write_generation(run, 0, [row], {"best": -1.0}, "rng", {})
        s.finish_run(run)
    return path


def contents(db: Path) -> list[Any]:
    with LogStore(db, readonly=True) as s:
        return [s.query(f"SELECT * FROM {t}")[1] for t in ("runs", "individuals", "generations")]


def with_db(args: list[str], db: Path) -> list[str]:
    """`args` with `--db DB` for the commands that take it (all but `score`)."""
    return args if args[0] == "score" else [*args, "--db", str(db)]


def run_cmd(m: dict[str, Path], *extra: str, mlm: str | None = None) -> list[str]:
    small = ["-p", "4", "-g", "2", "--init-len", "6", "--min-len", "3", "--max-len", "10", "-q"]
    return ["run", "--mlm", mlm or str(m["bert"]), *small, *extra]


# Each case: the arguments (given the model folders) and a fragment of the one error line.
CASES: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str]] = {
    "empty prompt": (lambda m: run_cmd(m, "--prompt", ""), "the prompt is empty"),
    "blank prompt": (lambda m: run_cmd(m, "--prompt", "  \\n "), "the prompt is empty"),
    "prompt longer than the window": (
        lambda m: run_cmd(m, "--prompt", "cheese " * 80),
        "exceeds the model window of 64",
    ),
    "population 1": (
        lambda m: run_cmd(m, "--prompt", PROMPT, "-p", "1"),
        "population must be at least 2 (got 1)",
    ),
    "generations 0": (
        lambda m: run_cmd(m, "--prompt", PROMPT, "-g", "0"),
        "generations must be at least 1 (got 0)",
    ),
    "span longer than the continuation": (
        lambda m: run_cmd(m, "--prompt", PROMPT, "--max-span", "11"),
        "max_span 11 is larger than the longest continuation (10)",
    ),
    "bf16 proposer with the MLM proposer": (
        lambda m: run_cmd(m, "--prompt", PROMPT, "--proposer-dtype", "bf16"),
        "proposer_dtype bf16 applies to the causal proposer",
    ),
    "unknown model name": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm="no-such-org/no-such-model"),
        "cannot load 'no-such-org/no-such-model' as a masked LM",
    ),
    "folder without config.json": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm=str(m["empty"])),
        "has no config.json, so it is not a transformers model folder",
    ),
    "folder with only config.json": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm=str(m["config_only"])),
        "as a masked LM",
    ),
    "folder without a weights file": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm=str(m["no_weights"])),
        "no file named model.safetensors",
    ),
    "MLM without a mask token": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm=str(m["no_mask"])),
        "has no mask token, so it cannot be used as a masked LM",
    ),
    "causal folder as MLM": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm=str(m["gpt2"])),
        "its architecture has no masked LM head (is it a causal LM?)",
    ),
    "causal preset as MLM": (
        lambda m: run_cmd(m, "--prompt", PROMPT, mlm="smollm2-135m"),
        "preset 'smollm2-135m' is a causal LM, not a masked LM",
    ),
    "causal folder as MLM for score": (
        lambda m: ["score", "--mlm", str(m["gpt2"]), "some text"],
        "its architecture has no masked LM head",
    ),
    "MLM folder as causal": (
        lambda m: ["baseline", "--prompt", PROMPT, "--causal", str(m["bert"]), "--samples", "1"],
        "is a masked LM (BertForMaskedLM), not a causal LM",
    ),
    "MLM preset as causal": (
        lambda m: ["baseline", "--prompt", PROMPT, "--causal", "tiny-bert", "--samples", "1"],
        "preset 'tiny-bert' is a masked LM, not a causal LM",
    ),
    "non-UTF-8 prompt file": (
        lambda m: run_cmd(m, "--prompt-file", str(m["latin1"])),
        "prompt-latin1.txt is not UTF-8 text (invalid continuation byte at byte 11)",
    ),
    "unknown run id: resume": (lambda m: ["resume", "99"], "no run 99 in"),
    "unknown run id: show": (lambda m: ["show", "99"], "no run 99 in"),
    "unknown individual id: lineage": (lambda m: ["lineage", "999"], "no individual 999 in"),
    "unknown run id: compare": (lambda m: ["compare", "99"], "no run 99 in"),
    "unknown run id: plot": (lambda m: ["plot", "99"], "no run 99 in"),
    "unknown run id: baseline --run": (lambda m: ["baseline", "--run", "99"], "no run 99 in"),
}


def assert_one_error_line(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_exit_2(
    case: str, models: dict[str, Path], db: Path, invoke: Invoke
) -> None:
    build, fragment = CASES[case]
    before = contents(db)
    result = invoke(*with_db(build(models), db))
    assert_one_error_line(result, fragment)
    assert contents(db) == before  # no run added, nothing changed


def test_missing_prompt_file_is_clicks_usage_error(
    models: dict[str, Path], db: Path, invoke: Invoke
) -> None:
    result = invoke(*run_cmd(models, "--prompt-file", "nowhere.txt"), "--db", db)
    assert result.exit_code == 2
    assert "Error: Invalid value for '--prompt-file': File 'nowhere.txt' does not exist." in (
        result.stderr
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", ["empty prompt", "causal folder as MLM"])
def test_bad_input_in_a_real_process_has_no_traceback(
    case: str, models: dict[str, Path], db: Path
) -> None:
    build, fragment = CASES[case]
    before = contents(db)
    done = run_evolve(with_db(build(models), db), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines
    assert contents(db) == before


def test_check_kind_refuses_the_wrong_kind_without_loading(models: dict[str, Path]) -> None:
    from scoring.models import ModelLoadError, check_kind

    check_kind(str(models["bert"]), "mlm")
    check_kind(str(models["gpt2"]), "causal")
    check_kind("some-org/some-model", "causal")  # a hub id: loading will tell
    check_kind(str(models["no_weights"]), "mlm")  # config only: loading will tell
    with pytest.raises(ModelLoadError, match="is a masked LM \\(BertForMaskedLM\\), not a causal"):
        check_kind(str(models["bert"]), "causal")
    with pytest.raises(ModelLoadError, match="is a causal LM \\(GPT2LMHeadModel\\), not a masked"):
        check_kind(str(models["gpt2"]), "mlm")
    with pytest.raises(ModelLoadError, match="preset 'tiny-bert' is a masked LM, not a causal"):
        check_kind("tiny-bert", "causal")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        check_kind(str(models["empty"]), "causal")


def test_run_refuses_a_masked_lm_as_its_judge(
    models: dict[str, Path], db: Path, invoke: Invoke
) -> None:
    args = run_cmd(models, "--prompt", PROMPT, "--causal", str(models["bert"]))
    before = contents(db)
    result = invoke(*with_db(args, db))
    assert contents(db) == before
    assert_one_error_line(result, "is a masked LM (BertForMaskedLM), not a causal LM")

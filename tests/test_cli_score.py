"""`evolve score` and `evolve models` through click's CliRunner (cli.scoring_cmds)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from cli.common import ErrorTranslatingGroup
from cli.scoring_cmds import COMMANDS
from scoring.models import load_model
from scoring.pll import PLLScorer


@pytest.fixture(scope="module")
def cli() -> click.Group:
    """A group with only this module's commands, so other command modules cannot break it."""
    group = ErrorTranslatingGroup(name="evolve")
    for command in COMMANDS:
        group.add_command(command)
    return group


def _run(cli: click.Group, *args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_score_table(cli, tiny_bert_dir):
    result = _run(cli, "score", "--mlm", str(tiny_bert_dir), "The cat.", "Mozzarella is white.")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["#", "text", "total", "mean", "tokens"]
    assert "The cat." in lines[2] and "Mozzarella is white." in lines[3]
    expected = PLLScorer(load_model(str(tiny_bert_dir), "mlm")).score(["The cat."])[0]
    assert f"{expected.total:.3f}" in lines[2]
    assert "PLL original" in result.output


def test_score_json_per_token_and_prefix(cli, tiny_roberta_dir):
    args = ["score", "--mlm", str(tiny_roberta_dir), "--json", "--per-token"]
    result = _run(cli, *args, "--prefix", "The capital of", "France is", "Paris.")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["variant"] == "original" and out["dtype"] == "fp32"
    assert out["prefix"] == "The capital of"
    lm = load_model(str(tiny_roberta_dir), "mlm")
    scorer = PLLScorer(lm)
    # the text continues the prefix after a space (byte-level BPE spells " France" apart)
    expected = scorer.score([" France is", " Paris."], "The capital of")
    for row, text, exp in zip(out["results"], ["France is", "Paris."], expected, strict=True):
        assert row["text"] == text
        assert row["n_tokens"] == exp.n_tokens == len(row["tokens"])
        assert row["total"] == pytest.approx(exp.total, abs=1e-5)
        assert row["mean"] == pytest.approx(exp.mean, abs=1e-5)
        assert row["token_logprobs"] == pytest.approx(list(exp.token_logprobs), abs=1e-5)
    assert out["results"][0]["tokens"][0].startswith("Ġ")


def test_score_variant_bf16_and_per_token_table(cli, tiny_bert_dir):
    args = ["score", "--mlm", str(tiny_bert_dir), "--variant", "word_l2r", "--bf16"]
    result = _run(cli, *args, "--per-token", "cheesemongers")
    assert result.exit_code == 0, result.output
    assert "token" in result.output and "logprob" in result.output
    assert "##" in result.output  # the word's pieces are listed
    assert "PLL word_l2r" in result.output and "bf16: approximate" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "  "], "text 1 is empty"),
        (["score", "--variant", "nope", "x"], "Invalid value for '--variant'"),
    ],
)
def test_score_bad_input(cli, tiny_bert_dir, args, message):
    result = _run(cli, *args[:1], "--mlm", str(tiny_bert_dir), *args[1:])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_score_too_long_and_bad_model(cli, tiny_bert_dir, tmp_path):
    long_text = " ".join(["cheese"] * 80)
    result = _run(cli, "score", "--mlm", str(tiny_bert_dir), long_text)
    assert result.exit_code == 2
    assert "at most 64" in result.output
    result = _run(cli, "score", "--mlm", str(tmp_path), "hello")
    assert result.exit_code == 2
    assert "no config.json" in result.output


def test_models_lists_presets(cli):
    result = _run(cli, "models")
    assert result.exit_code == 0, result.output
    assert "tiny-bert" in result.output and "smollm2-135m" in result.output
    assert "mlm" in result.output and "causal" in result.output


@pytest.mark.real
def test_score_default_preset(cli):
    result = _run(cli, "score", "--json", "The capital of France is Paris.")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["model"] == "tiny-bert"
    assert out["results"][0]["n_tokens"] == 7
    assert -20 < out["results"][0]["mean"] < 0

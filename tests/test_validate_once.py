"""A run's config is validated once however many layers it passes (CLI, API, engine)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from evolve.ga.config import ConfigError, RunConfig


@pytest.fixture
def count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    inner = RunConfig.validate

    def counted(self: RunConfig, *, here: bool = True) -> RunConfig:
        calls.append(1)
        return inner(self, here=here)

    monkeypatch.setattr(RunConfig, "validate", counted)
    return calls


def test_a_cli_run_validates_its_config_once(
    invoke: Callable, tiny_bert_dir: Path, tmp_path: Path, count: list[int]
) -> None:
    result = invoke(
        "run", "--prompt", "Cheddar is", "--mlm", tiny_bert_dir, "-p", "4", "-g", "1",
        "--init-len", "4", "--device", "cpu", "-q", "--db", tmp_path / "runs.db",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(count) == 1


def test_validated_checks_a_new_or_changed_config(count: list[int]) -> None:
    cfg = RunConfig(prompt="x", device="cpu")
    assert cfg.validated() is cfg and cfg.validated() is cfg
    assert len(count) == 1
    bad = dataclasses.replace(cfg, population=1)
    with pytest.raises(ConfigError, match="population must be at least 2"):
        bad.validated()
    assert cfg == RunConfig(prompt="x", device="cpu") and "_checked_here" not in cfg.to_dict()

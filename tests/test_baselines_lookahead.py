"""`evolve baseline --method particle` and `--method learned` (issue 23) on the tiny GPT-2.

The particle sampler draws from (1-λ)p + λ q_particle; the learned one from a learned
amplifier's r, loaded from its safetensors + JSON checkpoint. Both are seeded baselines
stored with their parameters; a missing or broken amplifier is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evolve.experiments.amplifier import new_amplifier, save_amplifier
from evolve.experiments.baselines import BaselineConfig, generate_baselines
from evolve.experiments.stunting import StuntConfig
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import load_model

PROMPT = "Mozzarella is white so you can see it at night.\nCheddar is"


@pytest.fixture
def amplifier_dir(tiny_gpt2_dir: Path, tmp_path: Path) -> Path:
    lm = load_model(str(tiny_gpt2_dir), "causal")
    amp = new_amplifier(StuntConfig(particles=4).amplifier_spec(lm), seed=0)
    with torch.no_grad():
        amp.out.weight.normal_(0.0, 1.0)  # a non-trivial r, so that it differs from p
    save_amplifier(amp, tmp_path / "amp")
    return tmp_path / "amp"


def _config(causal: Path, **over: object) -> BaselineConfig:
    return BaselineConfig(
        prompt=PROMPT, causal=str(causal), new_tokens=5, samples=2, seed=3, **over
    )  # type: ignore[arg-type]


def test_particle_and_learned_samples_are_seeded_stored_baselines(
    tmp_path: Path, tiny_gpt2_dir: Path, amplifier_dir: Path
) -> None:
    cfg = _config(
        tiny_gpt2_dir,
        methods=("particle", "learned"),
        particles=4,
        amp_depth=2,
        amplifier=str(amplifier_dir),
    )
    made = generate_baselines(cfg, LogStore(tmp_path / "a.db"))
    assert [(b.method, b.seed) for b in made] == [
        ("particle", 3),
        ("particle", 4),
        ("learned", 3),
        ("learned", 4),
    ]
    assert all(b.text for b in made)
    assert made[0].params == {
        "new_tokens": 5,
        "particles": 4,
        "beta": 2.0,
        "depth": 2,
        "lam": 0.5,
        "temperature": 1.0,
    }
    assert made[2].params == {"new_tokens": 5, "amplifier": str(amplifier_dir), "temperature": 1.0}
    again = generate_baselines(cfg, LogStore(tmp_path / "b.db"))
    assert [b.text for b in again] == [b.text for b in made]


def test_learned_needs_a_readable_amplifier(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs --amplifier"):
        _config(tiny_gpt2_dir, methods=("learned",)).validate()
    with pytest.raises(UserError, match="no amplifier checkpoint"):
        _config(tiny_gpt2_dir, methods=("learned",), amplifier=str(tmp_path / "nope")).validate()
    with pytest.raises(UserError, match="beta"):
        _config(tiny_gpt2_dir, methods=("particle",), beta=0.0).validate()
    with pytest.raises(UserError, match="particles"):
        _config(tiny_gpt2_dir, methods=("particle",), particles=0).validate()


def test_cli_learned_and_its_bad_input(
    invoke,
    tmp_path: Path,
    tiny_gpt2_dir: Path,
    amplifier_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    db = tmp_path / "cli.db"
    base = ["baseline", "--prompt", "Cheddar is", "--causal", str(tiny_gpt2_dir), "--db", str(db)]
    ok = invoke(*base, "--method", "learned", "--amplifier", str(amplifier_dir), "--samples", "1")
    assert ok.exit_code == 0, ok.output
    assert "learned" in ok.output and "1 baseline texts" in ok.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "amplifier.json").write_text("{not json")
    (broken / "amplifier.safetensors").write_bytes(b"")
    cases = [
        (["--method", "learned"], "needs --amplifier"),
        (["--method", "learned", "--amplifier", str(tmp_path / "missing")], "no amplifier"),
        (["--method", "learned", "--amplifier", str(broken)], "not valid JSON"),
        (["--method", "particle", "--beta", "-1"], "beta must be a number greater than 0"),
    ]
    for extra, message in cases:
        result = invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1

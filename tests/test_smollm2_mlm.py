"""The shipped smollm2-mlm preset end to end: the adapter in the package on the packaged
SmolLM2 weights, offline, as a masked LM for PLL, fills and a GA run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evolve.ga.proposers.mlm import MLMProposer
from scoring.decoder_mlm import SPEC_FILE, DecoderMLM
from scoring.models import load_mlm
from scoring.pll import PLLScorer
from scoring.presets import PRESETS, package_dir

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def mlm():
    return load_mlm("smollm2-mlm")


def test_adapter_ships_small_and_named_offline() -> None:
    pkg = package_dir("scoring")
    assert pkg is not None
    folder = pkg / PRESETS["smollm2-mlm"].subdir
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 25 * 2**20
    spec = json.loads((folder / SPEC_FILE).read_text())
    assert spec["base"] == "smollm2-135m"
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == "smollm2-135m"  # no path of one machine


def test_it_is_a_masked_lm_that_knows_english(mlm) -> None:
    assert isinstance(mlm.model, DecoderMLM)
    assert mlm.tokenizer.mask_token == "<filename>"
    prompt = "The capital of France is"
    scores = PLLScorer(mlm).score([" Paris.", " purple."], prefix=prompt)
    assert scores[0].total > scores[1].total + 2.0
    # a masked word is predicted from both sides
    ids = mlm.tokenizer("The cat sat on the mat and purred.")["input_ids"]
    masked = list(ids)
    at = ids.index(mlm.tokenizer.convert_tokens_to_ids("Ġmat"))
    masked[at] = mlm.tokenizer.mask_token_id
    with torch.inference_mode():
        logits = mlm.model(input_ids=torch.tensor([masked])).logits[0, at]
    top = mlm.tokenizer.convert_ids_to_tokens(logits.topk(20).indices.tolist())
    assert any(t.strip("Ġ").lower() in {"mat", "floor", "couch", "bed", "rug", "sofa"} for t in top)


def test_proposer_bans_every_added_special_token(mlm) -> None:
    banned = MLMProposer(mlm).policy.banned_ids
    added = {i for i, t in mlm.tokenizer.added_tokens_decoder.items() if t.special}
    assert {3, 5, 11} <= added <= banned  # <repo_name>, <file_sep>, <jupyter_start> ...


def test_a_run_on_the_prefix_preset(invoke, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    result = invoke(
        "run",
        "--db",
        db,
        "--mlm",
        "smollm2-mlm-prefix",
        "--prompt",
        "Cheddar is",
        "-p",
        "4",
        "-g",
        "1",
        "--init-len",
        "6",
        "--seed",
        "0",
        "-q",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(
        invoke("sql", "--db", db, "--json", "SELECT text, fitness FROM individual_texts").output
    )
    assert len(rows) >= 4
    assert all(r["fitness"] < 0 and r["text"].strip() for r in rows)

"""Same seed and config, same run: a fresh run equals the one the code made before a change.

`tests/data/same_run.json` holds stored runs (every individual's text, fitness, operator,
parents, span and model scores, generation by generation) that the code made on a tiny
random BERT and GPT-2 built from configs, for several fitness kinds: the default PLL, PLL word_l2r with
a repetition penalty, the causal log-likelihood (through text: another tokenizer), a
weighted sum with a typicality term, and NSGA-II. A refactoring of the GA must reproduce
them: texts, operators and lineage exactly, numbers within float noise.

The models are conftest.py's, except that their tokenizers are read from
`tests/data/same_run/`: the tokenizers library's trainers break ties differently in each
process, so conftest's retrained tokenizers would give other texts in every session. The
weights come from a fixed torch seed, which repeats.

Regenerate the fixture only for a change that is meant to change runs: run
``SAME_RUN_WRITE=1 python -m pytest tests/test_same_run.py`` and say why in the commit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from evolve.api import run_ga
from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "same_run.json"
WRITE = os.environ.get("SAME_RUN_WRITE") == "1"

# name -> (fitness, extra RunConfig fields); the models are the tiny BERT and GPT-2.
CASES: dict[str, tuple[FitnessConfig, dict[str, Any]]] = {
    "pll": (FitnessConfig(), {}),
    "pll-word-rep": (
        FitnessConfig(variant="word_l2r", rep_penalty=0.5, normalise="total", length_bonus=0.3),
        {"algorithm": "mu_plus_lambda", "cxpb": 0.2},
    ),
    "causal": (FitnessConfig(objective="causal"), {}),
    "sum-typical": (
        FitnessConfig(objective="sum", causal_weight=0.5, typical_weight=1.0),
        {"mutation": MutationConfig(no_repeat_ngram=2)},
    ),
    "typical-causal": (FitnessConfig(objective="typical", typical_model="causal"), {}),
    "nsga2": (FitnessConfig(objective="nsga2"), {}),
}


def _config(name: str, mlm: Path, causal: Path) -> RunConfig:
    fitness, extra = CASES[name]
    return RunConfig(
        prompt="Cheddar is",
        population=6,
        generations=3,
        init_len=6,
        max_len=12,
        mlm=str(mlm),
        causal=str(causal),
        device="cpu",
        seed=7,
        fitness=fitness,
        **extra,
    )


def _record(cfg: RunConfig) -> list[dict[str, Any]]:
    """Every stored individual; scorer names without the models' folders (the test
    machine's temporary paths)."""
    run = run_ga(cfg)
    out = []
    for row in run.store.individuals(run.id):
        scores = row.pop("scores")
        row["scores"] = {_named(k, cfg): s["total"] for k, s in sorted(scores.items())}
        out.append(row)
    return out


def _named(scorer: str, cfg: RunConfig) -> str:
    return scorer.replace(cfg.mlm, "MLM").replace(cfg.causal, "CLM")


NUMBERS = ("fitness", "objectives", "scores")  # compared within float noise


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny BERT MLM and GPT-2 of conftest.py on the stored tokenizers."""
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("same-run")
    bert, gpt2 = root / "bert", root / "gpt2"
    shutil.copytree(DATA / "same_run" / "bert", bert)
    shutil.copytree(DATA / "same_run" / "gpt2", gpt2)
    torch.manual_seed(0)
    BertForMaskedLM(
        BertConfig(
            vocab_size=180,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    ).eval().save_pretrained(bert)
    torch.manual_seed(2)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    ).eval().save_pretrained(gpt2)
    return bert, gpt2


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    if WRITE:
        return {}
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_a_fresh_run_is_the_stored_run(
    name: str, stored: dict[str, Any], models: tuple[Path, Path]
) -> None:
    fresh = _record(_config(name, *models))
    if WRITE:
        data = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
        data[name] = fresh
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    old = stored[name]
    assert len(fresh) == len(old)
    for new, was in zip(fresh, old, strict=True):
        assert set(new) == set(was)
        exact = {k: v for k, v in was.items() if k not in NUMBERS}
        assert {k: new[k] for k in exact} == exact, (name, was["id"])
        for key in NUMBERS:
            expected = was[key] if was[key] is None else pytest.approx(was[key], rel=1e-5, abs=1e-5)
            assert new[key] == expected, (name, was["id"], key)

"""evolve.experiments.baselines and `evolve baseline` on the tiny random GPT-2 (no hub)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli import baseline_cmds
from cli.common import ErrorTranslatingGroup
from evolve.experiments.baselines import (
    BaselineConfig,
    generate_baselines,
    run_length,
    settings_label,
)
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import load_causal

PROMPT = "Mozzarella is white so you can see it at night.\nCheddar is"


def _group() -> click.Group:
    @click.group(cls=ErrorTranslatingGroup)
    def evolve() -> None:
        pass

    for command in baseline_cmds.COMMANDS:
        evolve.add_command(command)
    return evolve


def invoke(*args: str) -> Result:
    return CliRunner().invoke(_group(), list(args))


def config(causal: Path, **over: object) -> BaselineConfig:
    base = BaselineConfig(prompt=PROMPT, causal=str(causal), new_tokens=6, samples=3, seed=11)
    return dataclasses.replace(base, **over)


def a_run(store: LogStore, best_text: str, causal: str = "some-causal") -> int:
    run_id = store.create_run(PROMPT, 0, {}, "some-mlm", causal, "pll")
    rows = [
        {"text": best_text, "token_ids": [1, 2], "fitness": -1.0, "op": "init", "parents": []},
        {"text": " worse", "token_ids": [3], "fitness": -5.0, "op": "init", "parents": []},
    ]
    store.write_generation(run_id, 0, rows, {"best": -1.0}, rng_state="", state={})
    return run_id


def test_every_method_is_stored_with_params_and_seed(tmp_path, tiny_gpt2_dir) -> None:
    store = LogStore(tmp_path / "b.db")
    cfg = config(tiny_gpt2_dir, num_beams=3, num_return_sequences=2, no_repeat_ngram_size=2)
    made = generate_baselines(cfg, store)
    assert [b.method for b in made] == ["greedy", "beam", "beam", "sample", "sample", "sample"]
    assert [b.seed for b in made if b.method == "sample"] == [11, 12, 13]
    assert not any(b.reused for b in made)
    stored = store.baselines(prompt=PROMPT)
    assert [b["id"] for b in stored] == [b.id for b in made]
    beam = stored[1]
    assert beam["model"] == str(tiny_gpt2_dir) and beam["run_id"] is None
    assert beam["params"] == {
        "new_tokens": 6,
        "num_beams": 3,
        "length_penalty": 1.0,
        "no_repeat_ngram_size": 2,
        "num_return_sequences": 2,
    }
    assert stored[3]["params"] == {
        "new_tokens": 6,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 0.9,
        "typical_p": 1.0,
    }
    assert [b["text"] for b in stored] == [b.text for b in made]
    assert settings_label(beam["params"]) == "beams=3 lp=1 no_repeat=2 returns=2"
    # Forced length: the (deterministic) greedy text is exactly new_tokens tokens long.
    lm = load_causal(str(tiny_gpt2_dir))
    assert len(lm.tokenizer(made[0].text, add_special_tokens=False)["input_ids"]) == 6


def test_same_seed_same_sample_and_stored_texts_are_reused(tmp_path, tiny_gpt2_dir) -> None:
    cfg = config(tiny_gpt2_dir, methods=("sample",), samples=2)
    a = generate_baselines(cfg, LogStore(tmp_path / "a.db"))
    b = generate_baselines(cfg, LogStore(tmp_path / "b.db"))
    assert [x.text for x in a] == [x.text for x in b]
    assert a[0].text != a[1].text  # different seeds, different samples
    other = generate_baselines(dataclasses.replace(cfg, seed=12), LogStore(tmp_path / "b.db"))
    assert other[0].reused and other[0].text == b[1].text  # seed 12 was the second sample
    assert not other[1].reused  # seed 13 is new
    store = LogStore(tmp_path / "a.db")
    again = generate_baselines(cfg, store)
    assert all(x.reused for x in again) and [x.id for x in again] == [x.id for x in a]
    assert len(store.baselines()) == 2


def test_amplified_sampling_is_a_seeded_stored_baseline(tmp_path, tiny_gpt2_dir) -> None:
    cfg = config(tiny_gpt2_dir, methods=("amplified",), samples=2, num_beams=3, amp_depth=2)
    store = LogStore(tmp_path / "amp.db")
    made = generate_baselines(cfg, store)
    assert [(b.method, b.seed) for b in made] == [("amplified", 11), ("amplified", 12)]
    assert all(b.text for b in made)
    assert store.baselines()[0]["params"] == {
        "new_tokens": 6,
        "num_beams": 3,
        "depth": 2,
        "lam": 0.5,
        "temperature": 1.0,
    }
    again = generate_baselines(cfg, LogStore(tmp_path / "other.db"))
    assert [b.text for b in again] == [b.text for b in made]  # the seed reproduces the text
    with pytest.raises(UserError, match="amp_lambda"):
        config(tiny_gpt2_dir, amp_lambda=1.5).validate()


def test_beam_returns_num_return_sequences(tmp_path, tiny_gpt2_dir) -> None:
    cfg = config(tiny_gpt2_dir, methods=("beam",), num_beams=4, num_return_sequences=4)
    made = generate_baselines(cfg, LogStore(tmp_path / "b.db"))
    assert len(made) == 4 and all(b.method == "beam" for b in made)
    assert len({b.text for b in made}) == 4  # distinct beams


def test_prompt_cache_gives_the_texts_of_a_plain_generate(tmp_path, tiny_gpt2_dir) -> None:
    """generate() on the shared prompt cache (one copy per beam) writes what it writes from
    the whole prompt; the prompt runs once for all methods and calls."""
    import torch
    from transformers import GenerationConfig

    from scoring.causal import prefix_cache_of

    lm = load_causal(str(tiny_gpt2_dir))
    cfg = config(tiny_gpt2_dir, num_beams=3, num_return_sequences=3, samples=2)
    prefix_cache_of(lm).clear()
    before = dataclasses.replace(prefix_cache_of(lm).stats)
    made = generate_baselines(cfg, LogStore(tmp_path / "c.db"), lm=lm)
    after = prefix_cache_of(lm).stats
    assert after.computed == before.computed + 1  # greedy ran the prompt, once
    assert after.reused == before.reused + 3  # beam and two samples reused it
    ids = torch.tensor([lm.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    eos = lm.tokenizer.eos_token_id
    common = {"max_new_tokens": 6, "min_new_tokens": 6, "pad_token_id": eos, "eos_token_id": [eos]}
    plain = {
        "greedy": {"do_sample": False, "num_beams": 1},
        "beam": {"do_sample": False, "num_beams": 3, "num_return_sequences": 3},
    }
    for method, options in plain.items():
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=GenerationConfig(**common, **options),
            )
        texts = [b.text for b in made if b.method == method]
        full = lm.tokenizer.batch_decode(out, skip_special_tokens=True)
        assert [PROMPT + t for t in texts] == full


def test_run_gives_prompt_and_length(tmp_path, tiny_gpt2_dir) -> None:
    store = LogStore(tmp_path / "r.db")
    best = " is yellow and sharp when old."
    run_id = a_run(store, best, causal=str(tiny_gpt2_dir))
    lm = load_causal(str(tiny_gpt2_dir))
    n = len(lm.tokenizer(best, add_special_tokens=False)["input_ids"])
    assert run_length(store, run_id, lm) == n
    cfg = BaselineConfig(run_id=run_id, methods=("greedy",))  # the run's causal LM
    made = generate_baselines(cfg, store)
    assert made[0].params == {"new_tokens": n} and made[0].model == str(tiny_gpt2_dir)
    (row,) = store.baselines(run_id=run_id)
    assert row["prompt"] == PROMPT and row["run_id"] == run_id
    assert made[0].text.startswith(" ")  # the leading space after the prompt is kept
    with pytest.raises(UserError, match="differs from run"):
        generate_baselines(dataclasses.replace(cfg, prompt="Other prompt"), store)
    with pytest.raises(UserError, match="no run 99"):
        generate_baselines(dataclasses.replace(cfg, run_id=99), store)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"num_beams": 0}, "num_beams must be at least 1"),
        ({"num_return_sequences": 5}, "num_return_sequences"),
        ({"methods": ("nucleus",)}, "unknown decoding method"),
        ({"methods": ()}, "no decoding method"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"top_k": -1}, "top_k"),
        ({"new_tokens": 0}, "new_tokens"),
        ({"samples": 0}, "samples"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ],
)
def test_config_is_validated_in_one_place(over: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        dataclasses.replace(BaselineConfig(prompt=PROMPT), **over).validate()


def test_too_long_for_the_window(tmp_path, tiny_gpt2_dir) -> None:
    with pytest.raises(UserError, match="window"):
        generate_baselines(config(tiny_gpt2_dir, new_tokens=500), LogStore(tmp_path / "w.db"))


def test_cli_baseline(tmp_path, tiny_gpt2_dir) -> None:
    db = tmp_path / "cli.db"
    result = invoke(
        "baseline",
        "--prompt",
        r"Mozzarella is white\nCheddar is",
        "--causal",
        str(tiny_gpt2_dir),
        "--method",
        "greedy",
        "--method",
        "sample",
        "--samples",
        "2",
        "--new-tokens",
        "5",
        "--db",
        str(db),
    )
    assert result.exit_code == 0, result.output
    assert "greedy" in result.output and "sample" in result.output
    assert "3 baseline texts of 5" in result.output
    stored = LogStore(db).baselines()
    assert {b["prompt"] for b in stored} == {"Mozzarella is white\nCheddar is"}  # \n unescaped
    assert [b["seed"] for b in stored] == [0, 0, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "Cheddar is", "--num-beams", "0"], "num_beams must be at least 1"),
        (["--run", "7"], "no run 7"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, tiny_gpt2_dir, args, message) -> None:
    db = tmp_path / "bad.db"
    LogStore(db).close()
    result = invoke("baseline", *args, "--causal", str(tiny_gpt2_dir), "--db", str(db))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1

"""Run management through the CLI (issue 12): config files and reruns, extending a run,
per-generation log lines, the algorithm's own rates, `score --causal`, `models --json`, and
the GGUF conversion cache keyed by content."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers_proc import PROMPT

from cli.config_files import to_toml
from evolve.ga.config import ALGORITHM_RATES, MutationConfig, RunConfig
from evolve.store import LogStore

Invoke = Callable[..., Result]
SMALL = ["-p", "4", "--init-len", "5", "--min-len", "3", "--max-len", "8"]


def _stored(db: Path, run_id: int) -> RunConfig:
    with LogStore(db, readonly=True) as store:
        return RunConfig.from_dict(store.run(run_id)["config"])


def _history(db: Path, run_id: int) -> list[tuple[Any, ...]]:
    """Every individual of a run as (generation, position, text, fitness, op, span)."""
    with LogStore(db, readonly=True) as store:
        return [
            (r["generation"], r["position"], r["text"], r["fitness"], r["op"], r["span_start"])
            for r in store.individuals(run_id)
        ]


def _one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_mu_plus_lambda_works_with_default_options(
    tmp_path: Path, tiny_bert_dir: Path, invoke: Invoke
) -> None:
    db = tmp_path / "mpl.db"
    args = ["run", "--prompt", PROMPT, "--mlm", tiny_bert_dir, *SMALL, "-g", "1", "-q"]
    result = invoke(*args, "--algorithm", "mu_plus_lambda", "--db", db)
    assert result.exit_code == 0, result.output
    cfg = _stored(db, 1)
    assert (cfg.cxpb, cfg.mutpb) == ALGORITHM_RATES["mu_plus_lambda"]
    assert cfg.cxpb + cfg.mutpb <= 1
    # the user's own rates are kept, and refused with one line when they cannot work
    _one_line_error(
        invoke(*args, "--algorithm", "mu_plus_lambda", "--cxpb", "0.5", "--db", db),
        "cxpb + mutpb <= 1 (got 0.5 + 0.8",
    )
    # the simple algorithm keeps the field defaults
    assert RunConfig.for_algorithm({"prompt": "x"}) == {"prompt": "x", "cxpb": 0.5, "mutpb": 0.8}
    assert RunConfig.for_algorithm({"algorithm": "mu_plus_lambda", "cxpb": 0.1}, {"cxpb"}) == {
        "algorithm": "mu_plus_lambda",
        "cxpb": 0.1,
        "mutpb": 0.8,
    }


def test_toml_written_reads_back_to_the_same_config() -> None:
    cfg = RunConfig(
        prompt='Say "cheese":\n\tnow \\ \x7f é',
        seed_texts=("a", "b"),
        min_tol=1e-9,
        mutation=MutationConfig(temperature=0.7),
    )
    assert RunConfig.from_dict(tomllib.loads(to_toml(cfg.to_dict(), "a\nheader"))) == cfg


def test_config_file_from_run_and_overrides(
    tmp_path: Path, tiny_bert_dir: Path, invoke: Invoke
) -> None:
    db = tmp_path / "cfg.db"
    first = invoke(
        "run", "--prompt", PROMPT, "--mlm", tiny_bert_dir, *SMALL, "-g", "1", "--top-k", "20",
        "-q", "--db", db,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    printed = invoke("config", "1", "--db", db)
    assert printed.exit_code == 0, printed.output
    assert tomllib.loads(printed.output) == json.loads(json.dumps(_stored(db, 1).to_dict()))
    path = tmp_path / "run.toml"
    path.write_text(printed.output)

    # --config: the file's values, the typed options over them (not the options' defaults)
    again = invoke("run", "--config", path, "--temperature", "0.7", "-q", "--db", db)
    assert again.exit_code == 0, again.output
    assert _stored(db, 2) == RunConfig.from_dict(
        {**_stored(db, 1).to_dict(), "mutation": {"top_k": 20, "temperature": 0.7}}
    )
    # --from: the stored config, with overrides
    rerun = invoke("run", "--from", "1", "--seed", "5", "-q", "--db", db)
    assert rerun.exit_code == 0, rerun.output
    assert _stored(db, 3).seed == 5 and _stored(db, 3).mutation.top_k == 20
    assert _stored(db, 3).prompt == PROMPT

    bad = tmp_path / "bad.toml"
    bad.write_text(printed.output.replace("[mutation]", "[mutation]\ntop_kk = 3"))
    _one_line_error(
        invoke("run", "--config", bad, "--db", db), "unknown config key 'mutation.top_kk'"
    )
    bad.write_text(printed.output.replace("population = 4", 'population = "many"'))
    _one_line_error(invoke("run", "--config", bad, "--db", db), "population must be an integer")
    bad.write_text("population = [")
    _one_line_error(invoke("run", "--config", bad, "--db", db), "is not valid TOML")
    bad.write_text("population = 4\n")
    no_prompt = invoke("run", "--config", bad, "--db", db)  # a usage error: with the usage
    assert no_prompt.exit_code == 2 and "Error: give --prompt or --prompt-file" in no_prompt.stderr
    _one_line_error(invoke("config", "9", "--db", db), "no run 9 in")


def test_resume_extends_a_finished_run_exactly(
    tmp_path: Path, tiny_bert_dir: Path, invoke: Invoke
) -> None:
    """A run of 2 generations extended to 4 equals a run started with 4."""
    db = tmp_path / "extend.db"
    base = ["run", "--prompt", PROMPT, "--mlm", tiny_bert_dir, *SMALL, "--seed", "3", "-q"]
    assert invoke(*base, "-g", "2", "--db", db).exit_code == 0
    _one_line_error(invoke("resume", "1", "-q", "--db", db), "already finished")
    _one_line_error(invoke("resume", "1", "-g", "1", "-q", "--db", db), "already has 2 generations")
    extended = invoke("resume", "1", "-g", "4", "-q", "--db", db)
    assert extended.exit_code == 0, extended.output
    assert "Run 1 finished: 4 generations." in extended.output
    assert invoke(*base, "-g", "4", "--db", db).exit_code == 0
    assert _history(db, 1) == _history(db, 2)
    assert len(_history(db, 1)) == 5 * 4
    assert _stored(db, 1) == _stored(db, 2)  # the stored config records the new count
    with LogStore(db, readonly=True) as store:
        assert store.run(1)["status"] == "finished"


def test_log_lines_when_stderr_is_not_a_terminal(
    tmp_path: Path, tiny_bert_dir: Path, invoke: Invoke
) -> None:
    db = tmp_path / "log.db"
    args = ["run", "--prompt", PROMPT, "--mlm", tiny_bert_dir, *SMALL, "-g", "2", "--db", db]
    plain = invoke(*args)
    assert plain.exit_code == 0, plain.output
    lines = plain.stderr.splitlines()
    assert [line.split(" best ")[0] for line in lines] == [
        "run 1 gen 0/2", "run 1 gen 1/2", "run 1 gen 2/2"
    ]  # fmt: skip
    assert " new 4 cached " in lines[0] and lines[0].endswith("s")
    as_json = invoke(*args, "--log-json", "--name", "json")
    assert as_json.exit_code == 0, as_json.output
    records = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert [r["generation"] for r in records] == [0, 1, 2]
    assert set(records[0]) == {
        "run_id", "generation", "generations", "best", "mean", "new", "cache_hits", "seconds",
        "best_text",
    }  # fmt: skip
    with LogStore(db, readonly=True) as store:
        stats = store.generation_stats(2)
    assert [r["best"] for r in records] == [s["best"] for s in stats]
    assert invoke(*args, "-q").stderr == ""


def test_score_causal(tiny_gpt2_dir: Path, invoke: Invoke) -> None:
    from scoring.causal import CausalScorer
    from scoring.models import load_causal

    result = invoke("score", "the cat", "a dog", "--causal", tiny_gpt2_dir, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["kind"] == "causal" and out["variant"] is None
    expected = CausalScorer(load_causal(str(tiny_gpt2_dir))).score(["the cat", "a dog"])
    assert [r["total"] for r in out["results"]] == pytest.approx([e.total for e in expected])
    table = invoke("score", "the cat", f"--causal={tiny_gpt2_dir}")
    assert table.exit_code == 0 and "causal log p(text | prefix)" in table.output
    _one_line_error(
        invoke("score", "the cat", "--bf16", "--causal", tiny_gpt2_dir), "--bf16 is for PLL"
    )


def test_models_json(invoke: Invoke) -> None:
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["tiny-bert", "smollm2-135m", "smollm2-mlm", "smollm2-mlm-prefix"]
    for row in rows:
        assert set(row) == {"name", "kind", "status", "installed", "path", "converted", "about"}


def test_gguf_cache_is_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring import presets

    monkeypatch.setenv("MLM_EVOLVE_CACHE", str(tmp_path / "cache"))
    preset = presets.PRESETS["smollm2-135m"]
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    for folder, data in ((one, b"weights"), (two, b"weights"), (other, b"other weights")):
        folder.mkdir()
        (folder / preset.gguf_file).write_bytes(data)
    assert presets.converted_dir(preset, one) == presets.converted_dir(preset, two)
    assert presets.converted_dir(preset, one) != presets.converted_dir(preset, other)
    assert presets.converted_dir(preset, one).name.startswith("smollm2-135m-")
    book = json.loads((tmp_path / "cache" / presets.HASHES_FILE).read_text())
    assert len(book) == 3  # each file hashed once, then remembered
    (one / preset.gguf_file).write_bytes(b"new weights!")  # content changes: a new key
    assert presets.converted_dir(preset, one) != presets.converted_dir(preset, two)

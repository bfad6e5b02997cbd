"""`evolve stunt-study` (evolve.experiments.stunt_study) on a fake corpus root and a tiny GPT-2.

The corpus is a folder of small fortune files shaped like the Debian package's (the
MLM_EVOLVE_CORPUS_ROOT approach of test_adapt.py): one training topic, the dev topic
(`wisdom`) and a test topic (`literature`), each with sentences of its own, so that the
tests can see which split reached the training windows. A study is run in-process through
the CLI, and in child processes killed with SIGKILL part-way and started again: the resumed
study's rows equal those of a study that was never killed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from helpers_proc import run_evolve, start_evolve

from evolve.experiments import corpus
from evolve.experiments.stunt_study import StudyConfig, load_study_data
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import load_model

TRAIN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Cheddar is yellow and tastes sharp when it is old.",
    "I went to the store to buy some milk and bread.",
    "A genetic algorithm selects the fittest individuals and recombines their spans.",
    "Evolution keeps a population of texts and mutates them with a masked language model.",
]
DEV_TEXTS = [
    "Mozzarella is white so you can see it at night.",
    "The capital of France is Paris, a city on the Seine.",
    "Unbelievably, the cheesemongers were reorganising their warehouses yesterday.",
]
TEST_TEXTS = ["The lazy dog sleeps."]


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    fortunes = root / "usr/share/games/fortunes"
    fortunes.mkdir(parents=True)
    for topic, texts in (
        ("cookie", TRAIN_TEXTS * 3),
        ("wisdom", DEV_TEXTS * 2),
        ("literature", TEST_TEXTS),
    ):
        (fortunes / topic).write_text("\n%\n".join(texts) + "\n%\n")
    monkeypatch.setenv(corpus.ROOT_ENV, str(root))
    return root


def _args(model: Path, db: Path, folder: Path, *extra: str) -> list[str]:
    return [
        "stunt-study", "--model", str(model), "--db", str(db), "--dir", str(folder),
        "--source", "fortunes", "--seq-len", "8", "--batch-tokens", "16", "-B", "3", "-D", "2",
        "--particles", "4", "--dev-positions", "10", "--retrain-every", "2",
        "--amplifier-windows", "2", "--amplifier-steps", "5", "--tree-tokens", "256",
        *extra,
    ]  # fmt: skip


def test_study_data_keeps_held_out_files_out_of_training(
    fake_root: Path, tiny_gpt2_dir: Path
) -> None:
    lm = load_model(str(tiny_gpt2_dir), "causal")
    data = load_study_data(lm, StudyConfig(sources=("fortunes",), seq_len=8, batch_tokens=16))
    trained = lm.tokenizer.decode(data.windows.reshape(-1).tolist())
    assert "Cheddar" in trained
    for held_out in (*DEV_TEXTS, *TEST_TEXTS):
        assert held_out[:20] not in trained
    assert {d.text for d in data.dev} == set(DEV_TEXTS)
    assert data.description["train_documents"] == 15 and not data.description["test_split_read"]


def test_study_runs_every_variant_and_seed(
    invoke,
    fake_root: Path,
    tiny_gpt2_dir: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    db, folder = tmp_path / "s.db", tmp_path / "ckpt"
    variants = ["none", "skip", "particle", "adversarial"]
    args = _args(tiny_gpt2_dir, db, folder, "--seeds", "0,1", "--train-tokens", "32")
    args += ["--eval-every", "1", *[a for v in variants for a in ("--variant", v)]]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "changes from step 0" in result.stdout and "Δ monitor gain .1" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1].isalpha()}
    for variant in variants:
        assert lines[variant].split()[1] == "2"  # two seeds finished
    with LogStore(db) as store:
        (study,) = store.experiments(kind="stunt-study")
        runs = [store.experiment(e["id"]) for e in reversed(store.experiments(kind="stunt"))]
        study = store.experiment(study["id"])
    assert study["status"] == "finished"
    assert [(r["config"]["variant"], r["config"]["seed"]) for r in runs] == [
        (v, s) for s in (0, 1) for v in variants
    ]
    firsts = [r["rows"][0] for r in runs]
    for run, first in zip(runs, firsts, strict=True):
        assert run["status"] == "finished" and run["summary"]["steps_done"] == 2
        assert [r["step"] for r in run["rows"] if r["kind"] == "eval"] == [0, 1, 2]
        assert first["dev_ll"] == firsts[0]["dev_ll"]  # the shared step-0 evaluation
        assert first["monitor"] == run["summary"]["monitor"]
        run_dir = folder / f"{run['config']['variant']}-seed{run['config']['seed']}"
        assert not list(run_dir.glob("step-*")) and not (run_dir / "latest.json").exists()
    assert (folder / "adversarial-seed0" / "amplifier" / "amplifier.json").is_file()
    assert (tmp_path / "stunt-study.png").stat().st_size > 1000
    summary = study["summary"]
    assert summary["none"]["seeds"] == 2 and summary["none"]["dev_ll_change_se"] is not None
    # The report reads the stored study alone; the same name with other settings is refused.
    report = invoke("stunt-study", "--report", "--db", str(db), "--json")
    assert report.exit_code == 0 and json.loads(report.stdout)["runs"] == 8
    other = invoke(*_args(tiny_gpt2_dir, db, folder, "--seeds", "0", "--train-tokens", "32"))
    assert other.exit_code == 2 and "other settings" in other.output


def _stunt_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM experiment_rows r JOIN experiments e "
                "ON e.id = r.experiment_id WHERE e.kind = 'stunt'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(n)


def _runs(db: Path) -> list[dict]:
    with LogStore(db) as store:
        return [store.experiment(e["id"]) for e in reversed(store.experiments(kind="stunt"))]


def test_a_killed_study_resumes_to_the_rows_of_an_unkilled_one(
    fake_root: Path, tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL (no cleanup at all) part-way through the second run; the same command again
    finishes the study, and every run's rows equal those of a study never killed."""
    common = ["--seeds", "0", "--train-tokens", "96", "--eval-every", "2"]
    common += ["--variant", "particle", "--variant", "adversarial"]
    ref = run_evolve(_args(tiny_gpt2_dir, tmp_path / "ref.db", tmp_path / "ref", *common), 300)
    assert ref.returncode == 0, ref.stderr
    db = tmp_path / "k.db"
    args = _args(tiny_gpt2_dir, db, tmp_path / "k", *common)
    proc = start_evolve(args)
    first_run_rows = len(_runs(tmp_path / "ref.db")[0]["rows"])
    deadline = time.monotonic() + 240
    while _stunt_rows(db) < first_run_rows + 5:  # into the second run, past a checkpoint
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the study did not get far enough"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed = _runs(db)
    assert killed[1]["status"] == "running"  # nothing ran after the kill
    done = run_evolve(args, 300)
    assert done.returncode == 0, done.stderr
    resumed, reference = _runs(db), _runs(tmp_path / "ref.db")
    assert [r["id"] for r in resumed] == [r["id"] for r in killed]  # no run was started anew
    assert [r["rows"] for r in resumed] == [r["rows"] for r in reference]
    assert [r["status"] for r in resumed] == ["finished", "finished"]


def test_bad_study_input_is_one_line(
    invoke,
    fake_root: Path,
    tiny_gpt2_dir: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    db = tmp_path / "s.db"
    base = _args(tiny_gpt2_dir, db, tmp_path / "c")
    cases = [
        (["--beta", "0"], "beta must be a number greater than 0"),
        (["--particles", "0"], "particles must be at least 1"),
        (["--variant", "sideways"], "sideways"),
        (["--seeds", "1,1"], "distinct seeds"),
        (["--train-tokens", "8"], "train-tokens"),
        (["--source", "wordnet"], "apt-get install wordnet-base"),
    ]
    for extra, message in cases:
        result = invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "c").exists()
    missing = invoke("stunt-study", "--report", "--db", str(tmp_path / "none.db"))
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    with pytest.raises(UserError, match="'/'"):
        StudyConfig(name="a/b").validate()


def test_store_appends_truncates_and_updates_experiments(tmp_path: Path) -> None:
    from evolve.store import StoreError

    with LogStore(tmp_path / "e.db") as store:
        exp = store.add_experiment("stunt", {"a": 1}, {}, [{"i": 0}], status="running")
        assert store.append_experiment_rows(exp, [{"i": 1}, {"i": 2}]) == 3
        assert store.append_experiment_rows(exp, []) == 3
        assert store.truncate_experiment_rows(exp, 2) == 1
        store.append_experiment_rows(exp, [{"i": 9}])
        store.update_experiment(exp, status="finished", summary={"done": True})
        got = store.experiment(exp)
        assert [r["i"] for r in got["rows"]] == [0, 1, 9]
        assert got["status"] == "finished" and got["summary"] == {"done": True}
        for call in (
            lambda: store.append_experiment_rows(exp + 1, [{}]),
            lambda: store.truncate_experiment_rows(exp + 1, 0),
            lambda: store.update_experiment(exp + 1, status="x"),
        ):
            with pytest.raises(StoreError, match="no experiment"):
                call()

"""Bounded inputs, devices, signals and read commands that write nothing (issue 15, items 6-9).

- Every run option has an upper bound and a type, checked by `RunConfig.validate()` before a
  run row exists, with a memory estimate of the population against the memory available;
  ids and counts of the other commands are 64-bit ranges, refused by click with one line.
- A device that does not exist here is one line (`scoring.devices`), not a traceback.
- Ctrl-C while the program imports torch, and a second one while it shuts down, leave no
  traceback; SIGTERM takes the Ctrl-C path and exits 143 (`cli.process`).
- `evolve runs` lists a run whose stored config this version cannot use with a marker.
- Read commands create no database; local model folders are stored as absolute paths.

Signals and files are tried on real child processes (tests/helpers_proc.py).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import Result
from helpers_proc import (
    PROMPT,
    ROOT,
    child_env,
    run_args,
    start_evolve,
    wait_for_generations,
)

import evolve.ga.config as config_module
import scoring.devices
from evolve.ga.config import (
    INT64_MAX,
    MAX_GENERATIONS,
    MAX_LEN,
    MAX_POPULATION,
    ConfigError,
    MutationConfig,
    RunConfig,
    available_memory,
)
from evolve.store import LogStore
from scoring.devices import DeviceError, check_device

Invoke = Callable[..., Result]
BIG = str(2**64)  # overflows a signed 64-bit integer (SQLite INTEGER, torch seeds)


def one_error_line(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


# -- item 6: bounded, finite, typed options ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"population": 10**9}, f"population must be at most {MAX_POPULATION:,}"),
        ({"offspring": 10**9}, f"offspring must be at most {MAX_POPULATION:,}"),
        ({"generations": 10**12}, f"generations must be at most {MAX_GENERATIONS:,}"),
        ({"max_len": 10**6}, f"max_len must be at most {MAX_LEN:,}"),
        ({"seed": 2**64}, "seed 18446744073709551616 is out of the 64-bit range"),
        ({"seed": -1}, "seed must be within [0, 2**63-1] (got -1)"),
        ({"patience": -(2**70)}, "patience"),
        ({"min_tol": math.nan}, "min_tol must be a finite number >= 0"),
        ({"population": "16"}, "population must be an integer (got '16')"),
        ({"population": True}, "population must be an integer (got True)"),
        ({"dedupe": "yes"}, "dedupe must be true or false"),
        ({"mlm": 7}, "mlm must be a string"),
        ({"mutation": MutationConfig(candidates=10**6)}, "candidates must be at most 1,024"),
        ({"mutation": MutationConfig(top_k=2**70)}, "top_k 1180591620717411303424 is out of"),
    ],
)
def test_out_of_range_options_are_refused_with_one_line(
    changes: dict[str, Any], fragment: str
) -> None:
    cfg = RunConfig(prompt=PROMPT, **changes)
    with pytest.raises(ConfigError) as caught:
        cfg.validate()
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("temperature", [1e300, 1e-30, math.inf, math.nan, -1.0, 1e-3, 101.0])
def test_extreme_temperatures_are_refused(temperature: float) -> None:
    cfg = RunConfig(prompt=PROMPT, mutation=MutationConfig(temperature=temperature))
    with pytest.raises(ConfigError, match="temperature must be 0 \\(greedy\\) or within"):
        cfg.validate()


@pytest.mark.parametrize("temperature", [0.0, 0.01, 1.0, 100.0])
def test_sane_temperatures_pass(temperature: float) -> None:
    RunConfig(prompt=PROMPT, mutation=MutationConfig(temperature=temperature)).validate()


def test_the_biggest_seed_sqlite_can_store_passes() -> None:
    RunConfig(prompt=PROMPT, seed=INT64_MAX).validate()


def test_a_stored_config_is_checked_as_strictly_as_options() -> None:
    data = RunConfig(prompt=PROMPT).to_dict()
    data["mutation"]["max_span"] = "3"  # JSON edited by hand, or written by another program
    with pytest.raises(ConfigError, match="max_span must be an integer"):
        RunConfig.from_dict(data).validate()


def test_the_population_must_fit_in_the_memory_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = RunConfig(prompt=PROMPT, population=50_000, max_len=4096, init_len=12)
    need = cfg.memory_estimate()
    assert need == 2 * (50_000 + 50_000) * (1_400 + 72 * 4096)
    monkeypatch.setattr(config_module, "available_memory", lambda: 2 * need - 1)
    with pytest.raises(ConfigError) as caught:
        cfg.validate()
    assert str(caught.value) == (
        "population 50000 + offspring 50000 of up to 4096 tokens need about 55.2 GiB, more "
        "than half of the 110.4 GiB of memory available; lower --population or --max-len"
    )
    monkeypatch.setattr(config_module, "available_memory", lambda: 2 * need)
    cfg.validate()
    monkeypatch.setattr(config_module, "available_memory", lambda: None)  # cannot tell: bounds
    cfg.validate()
    cfg.validate(here=False)  # and `evolve runs` does not ask at all


def test_available_memory_is_read_from_this_machine() -> None:
    found = available_memory()
    if not Path("/proc/meminfo").exists():
        assert found is None or found > 0
        return
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert found is not None and 0 < found <= total


def test_a_population_estimate_is_not_below_what_individuals_take() -> None:
    """The per-individual constants against tracemalloc of real individuals (with scores)."""
    import random
    import tracemalloc

    from evolve.ga.individual import Individual, record_edit
    from scoring.results import TokenScores

    length, n = 64, 2000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for i in range(n):
            ind = Individual([random.randrange(1000, 30000) for _ in range(length)])
            record_edit(ind, "mut_span", [i, i + 1], (0, 2))
            ind.fitness.values = (random.random(),)
            scores = tuple(random.random() for _ in range(length))
            ind.scores = {"pll": TokenScores(sum(scores), scores, length)}
            kept.append(ind)
        per_individual = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    estimate = config_module.INDIVIDUAL_BYTES + config_module.TOKEN_BYTES * length
    assert 0.7 * estimate <= per_individual <= 1.3 * estimate, (per_individual, estimate)


# -- item 7: devices ---------------------------------------------------------------------------


def test_devices_that_cannot_run_models_are_refused() -> None:
    assert check_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="unknown device 'gpu0'; use cpu, cuda"):
        check_device("gpu0")
    with pytest.raises(DeviceError, match="device 'meta' cannot run models"):
        check_device("meta")


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch")
def test_a_torch_without_cuda_says_so() -> None:
    with pytest.raises(DeviceError) as caught:
        check_device("cuda")
    assert str(caught.value) == (
        f"torch {torch.__version__} has no CUDA; install a CUDA build of torch or use --device cpu"
    )


def test_missing_cuda_devices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build on a machine with one GPU, or none (faked: this test runs anywhere)."""
    monkeypatch.setattr(scoring.devices.torch.version, "cuda", "12.8")
    monkeypatch.setattr(scoring.devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(scoring.devices.torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceError, match="device 'cuda:3' does not exist: 1 cuda device here"):
        check_device("cuda:3")
    monkeypatch.setattr(scoring.devices.torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no cuda device is available here; use --device cpu"):
        check_device("cuda")


# -- the CLI: one line, exit 2, before any file or run row exists -------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["show", BIG], "Invalid value for 'RUN_ID': 18446744073709551616 is not in the range"),
        (["show", "1", "-n", BIG], "Invalid value for '-n'"),
        (["lineage", BIG], "Invalid value for 'INDIVIDUAL_ID'"),
        (["lineage", "1", "--max-depth", BIG], "Invalid value for '--max-depth'"),
        (["resume", BIG], "Invalid value for 'RUN_ID'"),
        (["compare", BIG], "Invalid value for 'RUN_ID'"),
        (["plot", BIG], "Invalid value for 'RUN_ID'"),
        (["baseline", "--run", BIG], "Invalid value for '--run'"),
        (["baseline", "--prompt", "x", "--seed", BIG], "Invalid value for '--seed'"),
        (["baseline", "--prompt", "x", "--samples", BIG], "Invalid value for '--samples'"),
        (["run", "--prompt", PROMPT, "--seed", BIG], "seed 18446744073709551616 is out of"),
        (["run", "--prompt", PROMPT, "-p", "1000000000"], "population must be at most 100,000"),
        (["run", "--prompt", PROMPT, "--temperature", "1e300"], "temperature must be 0"),
        (["run", "--prompt", PROMPT, "--device", "gpu0"], "unknown device 'gpu0'"),
        (["baseline", "--prompt", "x", "--device", "gpu0"], "unknown device 'gpu0'"),
        (["baseline", "--prompt", "x", "--temperature", "1e-30"], "temperature must lie within"),
        (["baseline", "--prompt", "x", "--num-beams", "1000000000"], "num_beams must be at most"),
        (["baseline", "--prompt", "x", "--samples", "1000000"], "samples must be at most 10000"),
    ],
)
def test_bad_numbers_and_devices_are_one_line_and_create_nothing(
    args: list[str], fragment: str, tmp_path: Path, invoke: Invoke
) -> None:
    db = tmp_path / "none.db"
    result = invoke(*args, "--db", db)
    one_error_line(result, fragment)
    assert not db.exists()


def test_bad_numbers_leave_an_existing_database_unchanged(tmp_path: Path, invoke: Invoke) -> None:
    db = tmp_path / "runs.db"
    with LogStore(db) as s:
        s.create_run(PROMPT, 1, {}, "tiny-bert", None, "pll")
    before = db.read_bytes()
    one_error_line(invoke("run", "--prompt", PROMPT, "-p", "1000000000", "--db", db), "at most")
    one_error_line(invoke("show", "1", "-n", BIG, "--db", db), "Invalid value for '-n'")
    assert db.read_bytes() == before
    with LogStore(db, readonly=True) as s:
        assert len(s.runs()) == 1


# -- item 7: plot --out, an invalid stored config ----------------------------------------------


def test_plot_into_an_unwritable_folder_is_one_line_before_any_scoring(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cli.baseline_cmds

    db = tmp_path / "runs.db"
    with LogStore(db) as s:
        s.create_run(PROMPT, 1, {}, "tiny-bert", None, "pll")

    def no_scoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored before the output folder was checked")

    monkeypatch.setattr(cli.baseline_cmds, "compare_run", no_scoring)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    result = invoke("plot", "1", "--out", a_file / "plots", "--db", db)
    one_error_line(result, f"cannot write plots to {a_file / 'plots'}: Not a directory")
    if os.geteuid() != 0:  # root may write anywhere, so only others can try a read-only folder
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = invoke("plot", "1", "--out", locked, "--db", db)
        one_error_line(result, f"cannot write plots to {locked}: Permission denied")


def test_a_run_with_a_config_this_version_cannot_use_does_not_hide_the_others(
    tmp_path: Path, invoke: Invoke
) -> None:
    db = tmp_path / "runs.db"
    good = RunConfig(prompt=PROMPT).to_dict()
    newer = RunConfig(prompt=PROMPT).to_dict() | {"sparkle": 3}  # a key from a newer version
    with LogStore(db) as s:
        s.create_run(PROMPT, 0, good, "tiny-bert", None, "pll")
        s.create_run(PROMPT, 0, newer, "tiny-bert", None, "pll")
        s.create_run(PROMPT, 0, {}, "tiny-bert", None, "pll")  # from before configs were stored
    listing = invoke("runs", "--db", db)
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:5]}
    assert sorted(rows) == ["1", "2", "3"]
    assert "running!" in rows["2"] and "!" not in rows["1"] and "!" not in rows["3"]
    assert listing.stdout.strip().splitlines()[-1] == (
        "! run 2: its stored config is not valid for this version (unknown config key "
        "'sparkle'); `evolve show 2` prints it, `evolve resume` cannot use it."
    )
    shown = invoke("show", "2", "--db", db)
    assert shown.exit_code == 0, shown.output
    assert "note:     its stored config is not valid for this version (unknown config key" in (
        shown.stdout
    )
    assert "  sparkle = 3" in shown.stdout
    one_error_line(invoke("resume", "2", "--db", db), "unknown config key 'sparkle'")


# -- item 8: read commands create no files; absolute paths -------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["resume", "1"],
        ["runs"],
        ["show", "1"],
        ["lineage", "1"],
        ["sql", "SELECT 1"],
        ["compare", "1"],
        ["plot", "1"],
        ["baseline", "--run", "1"],
    ],
)
def test_read_commands_in_a_folder_without_a_database_create_nothing(
    args: list[str], tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLM_EVOLVE_DB", raising=False)
    result = invoke(*args)
    one_error_line(result, "no database at runs/evolve.db")
    assert list(tmp_path.iterdir()) == []


def test_resume_in_the_wrong_folder_creates_nothing_in_a_child_process(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "evolve.db"
    done = subprocess.run(
        [sys.executable, "-c", "from cli.process import main; main()", "resume", "1"]
        + ["--db", str(missing)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"Error: no database at {missing}; `evolve run` creates one"
    assert list(tmp_path.iterdir()) == []


def test_a_local_model_folder_is_stored_as_an_absolute_path(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch, tiny_bert_dir: Path
) -> None:
    import cli.run_cmds
    from evolve.api import RunSummary

    seen: list[RunConfig] = []

    def record(cfg: RunConfig, store: LogStore, progress: object = None, **_: object) -> RunSummary:
        seen.append(cfg)
        return RunSummary(1, "finished", 0, [])

    monkeypatch.setattr(cli.run_cmds, "start_run", record)
    (tmp_path / "model").symlink_to(tiny_bert_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "run", "--prompt", PROMPT, "--mlm", "./model", "--causal", "hub-org/a-model", "-q"
    )
    assert result.exit_code == 0, result.output
    assert seen[0].mlm == str(tmp_path / "model")  # absolute, as given (links not resolved)
    assert seen[0].causal == "hub-org/a-model"  # no such folder: a hub id, kept


# -- Ctrl-C and SIGTERM in real processes --------------------------------------------------------

# Sends SIGINT to itself the moment torch starts to be imported: a Ctrl-C in the first second.
_CTRL_C_WHILE_IMPORTING = """
import builtins, os, signal, sys
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "torch" and "torch" not in sys.modules:
        builtins.__import__ = real_import
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
from cli.process import main
main()
"""

# A cleanup at exit that is cut short by Ctrl-C, as torch's and threads' atexit handlers were.
_CTRL_C_WHILE_SHUTTING_DOWN = """
import atexit, os, signal, time
def slow_cleanup():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
atexit.register(slow_cleanup)
from cli.process import main
main()
"""


def _child(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_while_importing_torch_is_one_line_and_exit_130(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    done = _child(_CTRL_C_WHILE_IMPORTING, "runs", "--db", str(db))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == "Interrupted while starting; nothing was written."
    assert not db.exists()


def test_a_ctrl_c_during_shutdown_prints_no_traceback(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with LogStore(db) as s:
        s.create_run(PROMPT, 1, {}, "tiny-bert", None, "pll")
    done = _child(_CTRL_C_WHILE_SHUTTING_DOWN, "runs", "--db", str(db))
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.stderr == ""
    assert done.returncode == 130  # cut short by the user, after the command's output
    assert "No runs" not in done.stdout and PROMPT[:20] in done.stdout


def test_sigterm_during_a_run_records_interrupted_and_exits_143(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    db = tmp_path / "term.db"
    relative = os.path.relpath(db, ROOT)  # the child runs in ROOT; the hint must be absolute
    proc = start_evolve(run_args(Path(relative), tiny_bert_dir, 60))
    try:
        wait_for_generations(db, 2, [proc])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Terminated (SIGTERM): run 1 is saved through generation "), last
    assert last.endswith(f"Resume with: evolve resume 1 --db {db}"), last
    saved = int(last.split("generation ")[1].split(".")[0])
    with LogStore(db, readonly=True) as s:
        run = s.run(1)
        assert run["status"] == "interrupted"
        assert s.last_generation(1)["generation"] == saved
        assert run["config"]["mlm"] == str(tiny_bert_dir)


def test_sigterm_before_the_run_exists_is_one_line_and_exit_143(tmp_path: Path) -> None:
    """SIGTERM as soon as transformers is imported (model loading, or the imports)."""
    code = _CTRL_C_WHILE_IMPORTING.replace('"torch"', '"transformers"').replace(
        "signal.SIGINT)", "signal.SIGTERM)"
    )
    db = tmp_path / "early.db"
    done = _child(code, "run", "--prompt", PROMPT, "--db", str(db), "-q")
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Terminated (SIGTERM)"), lines
    assert not db.exists() or LogStore(db, readonly=True).runs() == []


# Sends SIGTERM to itself while the third position is scored.
_SIGTERM_DURING_AMPLIFY = """
import os, signal
import evolve.experiments.amplify as amplify
real_score = amplify._score_position
calls = []
def score(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_score(*args, **kwargs)
amplify._score_position = score
from cli.process import main
main()
"""


def test_sigterm_during_amplify_keeps_the_positions_scored_and_exits_143(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    db = tmp_path / "amp.db"
    text = "Cheddar is a hard cheese from England and it tastes sharp when it is old."
    done = _child(
        _SIGTERM_DURING_AMPLIFY,
        *["amplify", text, "--causal", str(tiny_gpt2_dir), "-B", "2", "-D", "1"],
        *["--batch-tokens", "2", "--json", "--db", str(db)],
    )
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "Terminated (SIGTERM): 2 positions kept"
    with LogStore(db, readonly=True) as s:
        (exp,) = s.experiments(kind="amplify")
        assert exp["status"] == "interrupted"


# SIGTERM while `evolve runs` reads, and a second one while the first is being reported.
_TWO_SIGTERMS = """
import os, signal
import cli.common
from evolve.store import LogStore
real_word, real_runs = cli.common.interruption, LogStore.runs
def word():
    os.kill(os.getpid(), signal.SIGTERM)
    return real_word()
def runs(self):
    os.kill(os.getpid(), signal.SIGTERM)
    return real_runs(self)
cli.common.interruption, LogStore.runs = word, runs
from cli.process import main
main()
"""


def test_a_second_sigterm_while_the_first_is_handled_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with LogStore(db) as s:
        s.create_run(PROMPT, 1, {}, "tiny-bert", None, "pll")
    done = _child(_TWO_SIGTERMS, "runs", "--db", str(db))
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "Terminated (SIGTERM): everything written before SIGTERM is kept "
        "(`evolve runs` lists runs; `evolve resume ID` continues one)."
    ]


def test_a_run_stopped_before_its_first_generation_says_so(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cli.run_cmds
    from evolve.api import RunInterrupted

    def stopped(*args: object, **kwargs: object) -> None:
        raise RunInterrupted(1, -1)  # what the driver raises when no generation was stored

    monkeypatch.setattr(cli.run_cmds, "start_run", stopped)
    db = tmp_path / "early.db"
    result = invoke("run", "--prompt", PROMPT, "--db", db, "-q")
    assert result.exit_code == 130
    assert result.stderr.strip() == (
        "Interrupted: run 1 was stopped before its first generation. "
        f"Resume with: evolve resume 1 --db {db}"
    )

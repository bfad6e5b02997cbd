"""evolve.experiments.compare, evolve.experiments.plots and the compare and plot commands on a small run of tiny models.

The run is evolved once per module by `evolve.ga.engine.start_run` with the tiny random BERT
as its MLM and the tiny random GPT-2 as causal judge and baseline generator; each test works
on its own copy of that database.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from matplotlib.figure import Figure

from cli import baseline_cmds
from cli.common import ErrorTranslatingGroup
from evolve.api import start_run
from evolve.experiments.baselines import BaselineConfig, generate_baselines
from evolve.experiments.compare import (
    COLUMNS,
    COMPARE_SQL,
    TextScorer,
    compare_run,
    default_scorer,
    normalise_reference,
)
from evolve.experiments.plots import plot_run, save_figures
from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.results import TokenScores

PROMPT = "Mozzarella is white so you can see it at night.\nCheddar is"
REFERENCE = "yellow and sharp when it is old."


@dataclasses.dataclass
class RunDB:
    path: Path
    run_id: int
    mlm: str
    causal: str


@pytest.fixture(scope="module")
def run_db(tmp_path_factory, tiny_bert_dir, tiny_gpt2_dir) -> RunDB:
    path = tmp_path_factory.mktemp("compare") / "run.db"
    cfg = RunConfig(
        prompt=PROMPT,
        population=6,
        generations=3,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=str(tiny_bert_dir),
        causal=str(tiny_gpt2_dir),
        seed=7,
        mutation=MutationConfig(max_span=2, top_k=20),
    )
    with LogStore(path) as store:
        run_id = start_run(cfg, store).run_id
        generate_baselines(
            BaselineConfig(
                run_id=run_id,
                causal=str(tiny_gpt2_dir),
                num_beams=3,
                num_return_sequences=2,
                samples=3,
            ),
            store,
        )
    return RunDB(path, run_id, str(tiny_bert_dir), str(tiny_gpt2_dir))


@pytest.fixture
def db(run_db: RunDB, tmp_path: Path) -> RunDB:
    """A private copy of the module's run database."""
    copy = tmp_path / "run.db"
    shutil.copy(run_db.path, copy)
    return dataclasses.replace(run_db, path=copy)


class Counting:
    """A scorer factory that counts what each scorer is asked to score."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.texts: dict[str, int] = {}

    def __call__(self, name: str) -> TextScorer:
        inner = default_scorer(name)
        outer = self

        class Wrapped:
            def score(self, texts: Sequence[str], prefix: str = "") -> Sequence[TokenScores]:
                outer.calls[name] = outer.calls.get(name, 0) + 1
                outer.texts[name] = outer.texts.get(name, 0) + len(texts)
                return inner.score(texts, prefix)

        return Wrapped()


def _group() -> click.Group:
    @click.group(cls=ErrorTranslatingGroup)
    def evolve() -> None:
        pass

    for command in baseline_cmds.COMMANDS:
        evolve.add_command(command)
    return evolve


def invoke(*args: str) -> Result:
    return CliRunner().invoke(_group(), list(args))


def test_table_has_a_row_per_method_and_every_cell_filled(db: RunDB) -> None:
    with LogStore(db.path) as store:
        cmp = compare_run(store, db.run_id, reference=REFERENCE)
        population = store.population(db.run_id, 3)
    assert [(r.method, r.n) for r in cmp.rows] == [
        ("evolved best", 1),
        ("evolved population", 6),
        ("greedy", 1),
        ("beam", 2),
        ("sample", 3),
        ("reference", 1),
    ]
    assert cmp.rows[1].texts == tuple(r["text"] for r in population)
    assert cmp.rows[3].settings == "beams=3 lp=1 no_repeat=0 returns=2"
    assert cmp.rows[-1].texts == (" " + REFERENCE,)
    for row in cmp.rows:
        for column, value in zip(COLUMNS, row.cells(), strict=True):
            if column.key == "self_bleu" and row.n == 1:
                assert value is None  # undefined for a single text
            elif column.key == "settings" and row.method == "reference":
                assert value == ""
            else:
                assert value is not None, (row.method, column.key)
    assert cmp.notes == ()
    assert cmp.scorers == (
        f"pll/original/{db.mlm}",
        f"pll/word_l2r/{db.mlm}",
        f"causal/{db.causal}",
    )
    best = cmp.rows[0]
    assert best.ppl == pytest.approx(2.718281828459045 ** (-best.causal_tok))
    assert best.pll_tok == pytest.approx(best.pll / best.mlm_tokens)


def test_scores_are_stored_and_reused(db: RunDB) -> None:
    first = Counting()
    with LogStore(db.path) as store:
        a = compare_run(store, db.run_id, reference=REFERENCE, factory=first)
    n_texts = len({t for r in a.rows for t in r.texts})
    evolved = {t for r in a.rows if r.method.startswith("evolved") for t in r.texts}
    run_scorer, l2r, judge = a.scorers  # the run's own fitness is pll/original/<mlm>
    assert set(first.calls.values()) == {1}  # one batched call per scorer
    # The run stored the PLL of every text it evolved: only the others are scored.
    # The judge also scores the baselines and reference after the round trip through the
    # MLM's tokenizer (the n- columns), in the same call.
    every = {t for r in a.rows for t in r.texts}
    n_norm = len(set(a.normalised.values()) - every)
    expected = {run_scorer: n_texts - len(evolved), l2r: n_texts, judge: n_texts + n_norm}
    assert first.texts == expected and a.computed == expected
    second = Counting()
    with LogStore(db.path) as store:
        b = compare_run(store, db.run_id, reference=REFERENCE, factory=second)
        ((count,),) = store.query("SELECT COUNT(*) FROM scores WHERE scorer != ?", (run_scorer,))[1]
    assert second.calls == {} and b.computed == {name: 0 for name in b.scorers}
    assert b.table_rows() == a.table_rows()
    assert count == 2 * n_texts + n_norm
    # A new text is the only one scored (and its round-tripped form, where it differs).
    third = Counting()
    with LogStore(db.path) as store:
        c = compare_run(store, db.run_id, reference="Blue.", factory=third)
    assert c.normalised[" Blue."] == " blue."
    assert third.texts == {run_scorer: 1, l2r: 1, judge: 2}


def test_compare_right_after_a_run_scores_none_of_its_texts_again(
    tmp_path: Path, tiny_bert_dir: Path, tiny_gpt2_dir: Path
) -> None:
    cfg = RunConfig(
        prompt=PROMPT,
        population=4,
        generations=2,
        init_len=4,
        min_len=3,
        max_len=6,
        mlm=str(tiny_bert_dir),
        causal=str(tiny_gpt2_dir),
        seed=3,
        mutation=MutationConfig(max_span=2, top_k=20),
        fitness=FitnessConfig(objective="sum"),  # the run scores with both models
    )
    counting = Counting()
    with LogStore(tmp_path / "sum.db") as store:
        run_id = start_run(cfg, store).run_id
        cmp = compare_run(store, run_id, factory=counting)
        best = store.best(run_id, 1)[0]
    run_pll, l2r, judge = cmp.scorers
    n_evolved = len({t for r in cmp.rows for t in r.texts})
    assert cmp.computed == {run_pll: 0, l2r: n_evolved, judge: 0}
    assert counting.texts == {l2r: n_evolved}  # no model loaded for the run's own scorers
    # What the run stored is the score compare would have computed for the text.
    fresh = default_scorer(judge).score([best["text"]], PROMPT)[0]
    assert best["scores"][judge]["total"] == pytest.approx(fresh.total, abs=1e-4)
    assert best["scores"][judge]["n_tokens"] == fresh.n_tokens


def test_sql_reproduces_the_table(db: RunDB) -> None:
    with LogStore(db.path) as store:
        cmp = compare_run(store, db.run_id, reference=REFERENCE)
        columns, rows = store.query(COMPARE_SQL, cmp.sql_params())
    assert len(rows) == len(cmp.rows)
    numeric = [c for c in columns if c not in ("method", "settings")]
    for sql_row, row in zip(rows, cmp.rows, strict=True):
        got = dict(zip(columns, sql_row, strict=True))
        assert got["method"] == row.method
        assert (json.loads(got["settings"]) if got["settings"] else None) == row.params
        for key in numeric:
            assert got[key] == pytest.approx(getattr(row, key), rel=1e-9), key
    # Without a reference the SQL has no reference row.
    params = dict(cmp.sql_params(), reference=None)
    with LogStore(db.path) as store:
        assert len(store.query(COMPARE_SQL, params)[1]) == len(cmp.rows) - 1


def test_no_baselines_is_a_note_not_an_error(tmp_path: Path, db: RunDB) -> None:
    with LogStore(db.path) as store:
        run = store.run(db.run_id)
        lonely = store.create_run(PROMPT, 1, run["config"], db.mlm, db.causal, run["fitness"])
        rows = [
            {"text": r["text"], "token_ids": r["token_ids"], "fitness": r["fitness"], "op": "init"}
            for r in store.population(db.run_id, 0)
        ]
        store.write_generation(lonely, 0, rows, {"best": 0.0}, rng_state="", state={})
        cmp = compare_run(store, lonely)
    assert [r.method for r in cmp.rows] == ["evolved best", "evolved population"]
    assert cmp.notes and f"evolve baseline --run {lonely}" in cmp.notes[0]


def test_reference_gets_its_leading_space() -> None:
    assert normalise_reference("Cheddar is", "yellow") == " yellow"
    assert normalise_reference("Cheddar is", "\nyellow") == "\nyellow"
    assert normalise_reference("Cheddar is ", "yellow") == "yellow"
    with pytest.raises(UserError, match="empty"):
        normalise_reference("Cheddar is", "  ")


def test_plot_writes_three_pngs(db: RunDB, tmp_path: Path) -> None:
    with LogStore(db.path) as store:
        cmp = compare_run(store, db.run_id, reference=REFERENCE)
        figures = plot_run(store, db.run_id, cmp)
    assert all(isinstance(f, Figure) for f in figures.values())
    paths = save_figures(figures, tmp_path / "plots")
    assert [p.name for p in paths] == ["fitness.png", "compare.png", "lineage.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_cli_compare_table_json_and_plot(db: RunDB, tmp_path: Path) -> None:
    result = invoke("compare", str(db.run_id), "--reference", REFERENCE, "--db", str(db.path))
    assert result.exit_code == 0, result.output
    for header in ("pll/tok", "clm/tok", "ppl", "rep-2", "dist-2", "s-BLEU", "evolved best"):
        assert header in result.output
    assert "Scored and stored" in result.output
    again = invoke("compare", str(db.run_id), "--reference", REFERENCE, "--db", str(db.path))
    assert "Scored and stored" not in again.output  # all read back from the store
    as_json = invoke("compare", str(db.run_id), "--json", "--db", str(db.path))
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert [r["method"] for r in data["rows"]] == [
        "evolved best",
        "evolved population",
        "greedy",
        "beam",
        "sample",
    ]
    assert data["rows"][3]["params"]["num_beams"] == 3 and len(data["rows"][4]["texts"]) == 3
    out = tmp_path / "pngs"
    plotted = invoke("plot", str(db.run_id), "--out", str(out), "--db", str(db.path))
    assert plotted.exit_code == 0, plotted.output
    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "fitness.png", "lineage.png"]


def test_cli_plot_default_folder(db: RunDB, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("plot", str(db.run_id), "--db", str(db.path))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "plots" / f"run-{db.run_id}"
    assert len(list(folder.glob("*.png"))) == 3


@pytest.mark.parametrize("command", ["compare", "plot"])
def test_cli_unknown_run_is_one_line_exit_2(db: RunDB, command: str) -> None:
    result = invoke(command, "99", "--db", str(db.path))
    assert result.exit_code == 2, result.output
    assert "no run 99" in result.output and "Traceback" not in result.output


def test_cli_missing_database(tmp_path: Path) -> None:
    result = invoke("compare", "1", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 2 and "no database" in result.output
    assert not (tmp_path / "none.db").exists()


def test_commands_are_registered_in_the_main_group() -> None:
    from cli.main import cli

    assert {"baseline", "compare", "plot"} <= set(cli.commands)


def test_normalised_columns_judge_baselines_as_the_mlm_writes_them(db: RunDB) -> None:
    reference = "Yellow and\nSharp when old."
    with LogStore(db.path) as store:
        cmp = compare_run(store, db.run_id, reference=reference)
    judge = default_scorer(f"causal/{db.causal}")
    ref = cmp.rows[-1]
    assert cmp.normalised[" " + reference] == " yellow and sharp when old."
    want = judge.score([" yellow and sharp when old."], PROMPT)[0]
    assert ref.norm_causal_tok == pytest.approx(want.mean, abs=1e-5)
    assert ref.norm_ppl == pytest.approx(math.exp(-want.mean))
    assert ref.causal_tok != pytest.approx(ref.norm_causal_tok)  # the as-written one differs
    for row in cmp.rows[:2]:  # evolved texts are judged as they are
        assert row.norm_causal_tok == pytest.approx(row.causal_tok)
    assert "lower-cased" in cmp.normalisation and "newlines dropped" in cmp.normalisation
    assert cmp.to_dict()["normalisation"] == cmp.normalisation
    result = invoke("compare", str(db.run_id), "--reference", reference, "--db", str(db.path))
    assert result.exit_code == 0, result.output
    assert "N- columns: every text judged after a round trip" in result.output

"""Pluggable fitness (evolve.ga.evaluate) and the causal-LM run options, on tiny random models.

Causal fitness equals CausalScorer's log-probability (in the representation's own tokens or
through text), sum weights combine the two per-token scores, caches warm from stored scores,
a run seeded from beam search starts from the beam outputs, a run with causal fitness
resumes exactly, and bad option combinations are refused.
"""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from cli.main import cli
from evolve.api import RunInterrupted, resume_run, start_run
from evolve.ga.config import ConfigError, FitnessConfig, MutationConfig, RunConfig
from evolve.ga.evaluate import Evaluator
from evolve.ga.individual import Individual
from evolve.ga.objectives import build_objective
from evolve.ga.representation import Representation
from evolve.store import LogStore
from scoring.causal import CausalScorer
from scoring.models import LoadedModel, load_model
from scoring.pll import PLLScorer

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"
CONTS = [" yellow and tastes sharp when it is old.", " a city on the Seine.", " yellow"]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


@pytest.fixture(scope="module")
def bert(tiny_bert_dir) -> LoadedModel:
    return load_model(str(tiny_bert_dir), "mlm")


def individuals(rep: Representation, texts: list[str] = CONTS) -> list[Individual]:
    return [Individual(rep.encode(t)) for t in texts]


def causal_config(bert_dir, gpt2_dir, **over) -> RunConfig:
    base = RunConfig(
        prompt=PROMPT,
        population=4,
        generations=2,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=str(bert_dir),
        causal=str(gpt2_dir),
        proposer="causal",
        init="sample",
        seed=11,
        mutation=MutationConfig(max_span=2, top_k=20, candidates=3),
        fitness=FitnessConfig(objective="causal", normalise="total"),
    )
    return dataclasses.replace(base, **over)


def final_population(store: LogStore, run_id: int) -> list[tuple[tuple[int, ...], float]]:
    last = store.last_generation(run_id)
    return [
        (tuple(r["token_ids"]), r["fitness"]) for r in store.population(run_id, last["generation"])
    ]


# -- the evaluator -------------------------------------------------------------------------


def evaluator(cfg: FitnessConfig, rep: Representation, bert=None, gpt2=None) -> Evaluator:
    scorers = []
    pll = causal = None
    if cfg.uses_pll:
        scorers.append(
            PLLScorer(bert, variant=cfg.variant)
        )
        pll = scorers[-1].name
    if cfg.uses_causal:
        scorers.append(CausalScorer(gpt2))
        causal = scorers[-1].name
    return Evaluator(build_objective(cfg, pll, causal), rep, scorers)


@pytest.mark.parametrize("normalise, bonus", [("total", 0.0), ("total", 0.5), ("mean", 0.0)])
def test_causal_fitness_is_the_causal_log_prob(gpt2, normalise, bonus):
    rep = Representation.build(gpt2, PROMPT)
    cfg = FitnessConfig(objective="causal", normalise=normalise, length_bonus=bonus)
    ev = evaluator(cfg, rep, gpt2=gpt2)
    pop = individuals(rep)
    stats = ev.evaluate(pop)
    assert stats.n_evaluated == 3
    expected = CausalScorer(gpt2).score_ids([list(i) for i in pop], rep.prompt_ids)
    name = f"causal/{gpt2.name}"
    for ind, res in zip(pop, expected, strict=True):
        want = res.mean if normalise == "mean" else res.total + bonus * res.n_tokens
        assert ind.fitness.values[0] == pytest.approx(want, abs=1e-4)
        assert ind.scores[name].total == pytest.approx(res.total, abs=1e-4)
        assert ind.scores[name].n_tokens == res.n_tokens == len(ind)
    # The same ids tokenised from text give the same score (the prompt is tokenised alone).
    texts = [rep.text_of(ind) for ind in pop]
    by_text = CausalScorer(gpt2).score(texts, PROMPT)
    assert [r.total for r in by_text] == pytest.approx([r.total for r in expected], abs=1e-4)
    assert ev.objective.label.startswith(f"causal/{gpt2.name}/")
    # Every computed score is handed out once, for the record of the run.
    fresh = ev.take_fresh()
    assert {(f.scorer, f.text) for f in fresh} == {(name, t) for t in texts}
    assert ev.take_fresh() == []


def test_causal_fitness_of_mlm_tokens_goes_through_text(gpt2, bert):
    rep = Representation.build(bert, PROMPT)
    ev = evaluator(FitnessConfig(objective="causal", normalise="total"), rep, bert, gpt2)
    pop = individuals(rep)
    ev.evaluate(pop)
    expected = CausalScorer(gpt2).score([rep.text_of(ind) for ind in pop], PROMPT)
    assert [i.fitness.values[0] for i in pop] == pytest.approx(
        [r.total for r in expected], abs=1e-4
    )


def test_sum_weights_the_two_per_token_scores(gpt2, bert):
    rep = Representation.build(bert, PROMPT)
    cfg = FitnessConfig(objective="sum", pll_weight=2.0, causal_weight=0.5)
    ev = evaluator(cfg, rep, bert, gpt2)
    pop = individuals(rep)
    ev.evaluate(pop)
    pll = PLLScorer(bert).score_ids([list(i) for i in pop], rep.prompt_ids)
    clm = CausalScorer(gpt2).score([rep.text_of(i) for i in pop], PROMPT)
    for ind, p, c in zip(pop, pll, clm, strict=True):
        assert ind.scores[f"pll/original/{bert.name}"].mean == pytest.approx(p.mean, abs=1e-4)
        assert ind.scores[f"causal/{gpt2.name}"].mean == pytest.approx(c.mean, abs=1e-4)
        assert ind.fitness.values[0] == pytest.approx(2.0 * p.mean + 0.5 * c.mean, abs=1e-4)
    only_pll = evaluator(dataclasses.replace(cfg, causal_weight=0.0), rep, bert, gpt2)
    again = individuals(rep)
    only_pll.evaluate(again)
    assert [i.fitness.values[0] for i in again] == pytest.approx(
        [2.0 * p.mean for p in pll], abs=1e-4
    )


def test_warm_caches_answer_without_the_models(gpt2, bert):
    rep = Representation.build(bert, PROMPT)
    cfg = FitnessConfig(objective="sum")
    first = evaluator(cfg, rep, bert, gpt2)
    pop = individuals(rep)
    first.evaluate(pop)
    second = evaluator(cfg, rep, bert, gpt2)
    stored: dict = {}
    for new in first.take_fresh():
        stored.setdefault(new.text, {})[new.scorer] = new.score
    second.warm(stored)
    again = individuals(rep)
    stats = second.evaluate(again)
    assert (stats.n_evaluated, stats.n_cache_hits) == (0, 3)
    assert second.take_fresh() == []
    assert [i.fitness.values for i in again] == [i.fitness.values for i in pop]
    assert [i.scores for i in again] == [i.scores for i in pop]


# -- runs ----------------------------------------------------------------------------------


def test_init_beam_starts_from_the_beam_outputs(tmp_path, tiny_bert_dir, tiny_gpt2_dir, gpt2):
    cfg = causal_config(tiny_bert_dir, tiny_gpt2_dir, init="beam", generations=1)
    store = LogStore(tmp_path / "beam.db")
    run_id = start_run(cfg, store).run_id
    beams = store.baselines(run_id=run_id)
    assert len(beams) == cfg.population
    assert {b["method"] for b in beams} == {"beam"}
    assert all(b["params"]["num_beams"] == cfg.population for b in beams)
    gen0 = store.population(run_id, 0)
    rep = Representation.build(gpt2, PROMPT)
    assert [r["token_ids"] for r in gen0] == [rep.encode(b["text"]) for b in beams]
    assert all(r["op"] == "init" for r in gen0)
    details = [store.individual(r["id"])["detail"] for r in gen0]
    assert [d["baseline_id"] for d in details] == [b["id"] for b in beams]
    assert {d["init"] for d in details} == {"beam"}
    assert store.run(run_id)["fitness"].startswith(f"causal/{tiny_gpt2_dir}/total")
    # Every edit after generation 0 names the causal proposer in its lineage.
    _, rows = store.query(
        "SELECT DISTINCT json_extract(detail, '$.proposer') FROM individuals "
        "WHERE run_id = ? AND generation > 0 AND (op LIKE 'mut%' OR op LIKE 'cx%')",
        (run_id,),
    )
    assert {r[0] for r in rows} <= {"causal"}


@pytest.mark.parametrize(
    "over",
    [
        {},  # causal proposer and fitness, individuals in the causal LM's tokens
        {"proposer": "mlm", "init": "mlm", "fitness": FitnessConfig(objective="sum")},
    ],
    ids=["causal", "mlm-sum"],
)
def test_resume_equals_uninterrupted(tmp_path, tiny_bert_dir, tiny_gpt2_dir, over):
    cfg = causal_config(tiny_bert_dir, tiny_gpt2_dir, generations=3, **over)
    whole = LogStore(tmp_path / "whole.db")
    ref = start_run(cfg, whole).run_id
    store = LogStore(tmp_path / "cut.db")

    def stop_after_gen_1(report):
        if report.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        start_run(cfg, store, stop_after_gen_1)
    resume_run(info.value.run_id, store)
    assert final_population(store, info.value.run_id) == final_population(whole, ref)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"mh": True}, "Metropolis-Hastings needs the proposal probability"),
        (
            {"proposer": "mlm", "mh": True, "fitness": FitnessConfig(objective="nsga2")},
            "needs a single fitness",
        ),
        ({"init": "mlm"}, "init 'mlm' fills with the MLM proposer"),
        ({"init": "seed"}, "needs at least one seed text"),
        ({"seed_texts": ("yellow",), "init": "beam"}, "use --init seed"),
        ({"proposer": "gpt"}, "unknown proposer 'gpt'"),
        ({"init": "nucleus"}, "unknown init 'nucleus'"),
        ({"fitness": FitnessConfig(objective="bleu")}, "unknown fitness objective 'bleu'"),
        (
            {"fitness": FitnessConfig(objective="sum", pll_weight=0.0, causal_weight=0.0)},
            "needs a positive pll_weight or causal_weight",
        ),
        ({"fitness": FitnessConfig(objective="sum", pll_weight=-1.0)}, "pll_weight must be >= 0"),
        (
            {
                "fitness": FitnessConfig(objective="nsga2"),
                "algorithm": "mu_plus_lambda",
                "cxpb": 0.2,
            },
            "drop --algorithm mu_plus_lambda",
        ),
        ({"mutation": MutationConfig(candidates=0)}, "candidates must be at least 1"),
    ],
)
def test_bad_combinations(tiny_bert_dir, tiny_gpt2_dir, over, message):
    with pytest.raises(ConfigError, match=message):
        causal_config(tiny_bert_dir, tiny_gpt2_dir, **over).validate()


def test_models_loaded_only_when_used(tiny_bert_dir, tiny_gpt2_dir):
    cfg = causal_config(tiny_bert_dir, tiny_gpt2_dir)
    assert cfg.uses_causal and not cfg.uses_mlm and cfg.representation == "causal"
    old = RunConfig(prompt=PROMPT)  # the defaults: MLM proposer, PLL fitness, MLM samples
    assert old.uses_mlm and not old.uses_causal and old.start == "mlm"
    assert RunConfig.from_dict({"prompt": PROMPT}).proposer == "mlm"  # runs stored before


def test_cli_causal_run_then_show(tmp_path, tiny_bert_dir, tiny_gpt2_dir):
    db = tmp_path / "cli.db"
    common = ["--db", str(db), "--causal", str(tiny_gpt2_dir), "--mlm", str(tiny_bert_dir)]
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--prompt",
            r"Mozzarella is white\nSo you can see it at night\nCheddar is",
            "--proposer",
            "causal",
            "--fitness",
            "causal",
            "--init",
            "beam",
            "-p",
            "3",
            "-g",
            "1",
            "--init-len",
            "5",
            "--candidates",
            "2",
            "-q",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Run 1 finished: 1 generations." in result.output
    shown = CliRunner().invoke(cli, ["show", "1", "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert 'proposer = "causal"' in shown.output
    bad = CliRunner().invoke(
        cli, ["run", "--prompt", "x", "--proposer", "causal", "--mh", "-q", *common]
    )
    assert bad.exit_code == 2
    assert "Metropolis-Hastings needs the proposal probability" in bad.output

"""The GA core on its own: no store, hooks, objectives, seeding, population helpers."""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.ga.engine import Engine, Generation
from evolve.ga.individual import Individual
from evolve.ga.objectives import (
    OBJECTIVE_FLOOR,
    LogLikelihood,
    Normalise,
    Pareto,
    WeightedSum,
    build_objective,
)
from evolve.ga.pareto import ParetoIndividual, select_survivors
from evolve.ga.population import best_distinct, dedupe
from evolve.ga.representation import Representation
from evolve.ga.seeding import (
    RNGStateError,
    get_rng_state,
    rng_scope,
    seed_everything,
    set_rng_state,
)
from scoring.errors import UserError
from scoring.models import load_model
from scoring.results import TokenScores

PROMPT = "Mozzarella is white so you can see it at night. Cheddar is"


def small(mlm: str, **over) -> RunConfig:
    base = RunConfig(
        prompt=PROMPT,
        population=6,
        generations=3,
        init_len=6,
        min_len=3,
        max_len=10,
        mlm=mlm,
        seed=7,
        mutation=MutationConfig(max_span=2, top_k=20),
    )
    return dataclasses.replace(base, **over)


def evolve_all(engine: Engine, seed: int, **kw) -> list[Generation]:
    with rng_scope(seed):
        return list(engine.run(**kw))


# -- the loop without a store -------------------------------------------------------------


def test_engine_runs_without_a_store_and_numbers_individuals(tiny_bert_dir):
    engine = Engine.build(small(str(tiny_bert_dir)))
    seen: list[int] = []
    gens = evolve_all(engine, 7, hooks=[lambda g: seen.append(g.number)])
    assert [g.number for g in gens] == seen == [0, 1, 2, 3]
    ids = [ind.db_id for g in gens for ind in g.population]
    assert ids == list(range(len(ids)))  # the engine's own counter
    for prev, gen in zip(gens, gens[1:], strict=False):
        known = {ind.db_id for ind in prev.population}
        for ind in gen.population:
            assert set(ind.origin.parents) <= known  # lineage refers to the previous generation
    assert gens[-1].best >= gens[0].best  # one elite: the best never gets worse


def test_record_hook_gives_ids_and_runs_before_observers(tiny_bert_dir):
    engine = Engine.build(small(str(tiny_bert_dir), generations=1))
    order: list[str] = []

    def record(gen: Generation) -> list[int]:
        order.append("record")
        return [1000 + 10 * gen.number + i for i in range(len(gen.population))]

    def observe(gen: Generation) -> None:
        order.append("observe")
        assert all(ind.db_id is not None and ind.db_id >= 1000 for ind in gen.population)

    gens = evolve_all(engine, 7, record=record, hooks=[observe])
    assert order == ["record", "observe"] * 2
    assert all(set(ind.origin.parents) <= set(range(1000, 1006)) for ind in gens[1].population)


def test_same_seed_same_run_and_caller_rng_untouched(tiny_bert_dir):
    cfg = small(str(tiny_bert_dir))
    seed_everything(123)
    before = random.random(), float(np.random.rand()), float(torch.rand(1))
    seed_everything(123)
    a = [g.texts for g in evolve_all(Engine.build(cfg), cfg.seed)]
    b = [g.texts for g in evolve_all(Engine.build(cfg), cfg.seed)]
    assert a == b
    # The runs drew many numbers, but the caller's generators are where they were.
    after = random.random(), float(np.random.rand()), float(torch.rand(1))
    assert after == before


def test_ga_core_imports_no_store(tiny_bert_dir):
    code = (
        "import sys\n"
        "from evolve.ga.engine import Engine\n"
        "from evolve.ga.config import RunConfig\n"
        f"e = Engine.build(RunConfig(prompt='Cheddar is', population=2, generations=1, "
        f"init_len=3, min_len=1, max_len=5, mlm={str(tiny_bert_dir)!r}))\n"
        "assert not any(m.startswith(('evolve.store', 'evolve.experiments', 'sqlite_utils'))"
        " for m in sys.modules), sorted(m for m in sys.modules if m.startswith('evolve'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_baseline_init_needs_a_start_texts_source(tiny_bert_dir, tiny_gpt2_dir):
    cfg = small(str(tiny_bert_dir), init="greedy", causal=str(tiny_gpt2_dir))
    engine = Engine.build(cfg)
    with pytest.raises(UserError, match="source of starting texts"):
        evolve_all(engine, 0)


def test_start_texts_are_injected_and_leave_the_rng_alone(tiny_bert_dir, tiny_gpt2_dir):
    from evolve.ga.population import StartText

    cfg = small(str(tiny_bert_dir), init="beam", causal=str(tiny_gpt2_dir), generations=1)
    asked: list[tuple[str, int]] = []

    def starts(method: str, n: int) -> list[StartText]:
        asked.append((method, n))
        random.random()  # a maker that draws numbers must not shift the GA's stream
        return [StartText(" yellow and sharp", {"baseline_id": 3}), StartText(" old")]

    engine = Engine.build(cfg, start_texts=starts)
    gens = evolve_all(engine, 0)
    assert asked == [("beam", 6)]
    gen0 = gens[0].population
    assert gen0[0].origin.detail["baseline_id"] == 3
    assert gen0[1].origin.detail.get("extended")  # " old" is shorter than min_len: extended
    assert len(gen0[1]) >= cfg.min_len


# -- objectives ----------------------------------------------------------------------------


def ts(total: float, n: int) -> TokenScores:
    return TokenScores(total, (), n)


def test_objectives_values_scalar_energy():
    scores = {"p": ts(-10.0, 5), "c": ts(-6.0, 3)}
    mean = Normalise("mean")
    single = LogLikelihood("p", mean)
    assert single.values(scores) == (-2.0,) and single.energy(scores) == 10.0
    assert single.label == "p/mean"
    total = LogLikelihood("p", Normalise("total", 0.5))
    assert total.values(scores) == (-10.0 + 0.5 * 5,)
    assert total.label == "p/total+0.5/token"
    s = WeightedSum(((1.0, "p"), (2.0, "c")), mean)
    assert s.values(scores) == (-2.0 + 2 * -2.0,)
    assert s.energy(scores) == 10.0 + 12.0
    assert s.label == "sum(1*p + 2*c)/mean"
    par = Pareto(((1.0, "p"), (1.0, "c")), mean)
    assert par.n_values == 3 and par.values(scores) == (-2.0, -2.0, 0.0)
    assert par.scalar((-2.0, -3.0, 0.7)) == -5.0  # diversity is not part of the scalar
    empty = {"p": ts(0.0, 0), "c": ts(0.0, 0)}
    assert par.values(empty)[:2] == (OBJECTIVE_FLOOR, OBJECTIVE_FLOOR)


def test_build_objective_follows_the_config():
    f = FitnessConfig
    assert isinstance(build_objective(f(objective="pll"), "p", None), LogLikelihood)
    assert build_objective(f(objective="causal"), None, "c").scorers == ("c",)
    assert isinstance(build_objective(f(objective="sum"), "p", "c"), WeightedSum)
    assert isinstance(build_objective(f(objective="nsga2"), "p", "c"), Pareto)


# -- seeding ---------------------------------------------------------------------------------


def test_rng_state_round_trips_as_plain_json():
    seed_everything(5)
    state = get_rng_state()
    assert json.loads(state)["format"] == "rng-json-1"
    a = random.random(), float(np.random.rand()), float(torch.rand(1)), random.gauss(0, 1)
    set_rng_state(state)
    b = random.random(), float(np.random.rand()), float(torch.rand(1)), random.gauss(0, 1)
    assert a == b


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickled_state_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = base64.b64encode(pickle.dumps({"python": _Boom()})).decode()
    with pytest.raises(RNGStateError, match="not valid"):
        set_rng_state(payload)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["python"].update(state=[0] * 10),
        lambda s: s["numpy"].update(key=["x"] * 624),
        lambda s: s["numpy"].update(pos=10_000),
        lambda s: s.update(torch="AAAA"),
        lambda s: s.update(format="other"),
    ],
)
def test_a_tampered_state_is_refused(mutate):
    state = json.loads(get_rng_state())
    mutate(state)
    with pytest.raises(RNGStateError):
        set_rng_state(json.dumps(state))


# -- population helpers ------------------------------------------------------------------------


def fit(ids, value) -> Individual:
    ind = Individual(ids)
    ind.fitness.values = (value,)
    return ind


def test_best_distinct_prefers_distinct_texts():
    pop = [fit([1], 3.0), fit([1], 3.0), fit([2], 2.0), fit([3], 1.0)]
    best = best_distinct(pop, 3)
    assert [list(i) for i in best] == [[1], [2], [3]]
    assert [list(i) for i in best_distinct(pop, 4)] == [[1], [2], [3], [1]]


def test_dedupe_re_mutates_only_unevaluated_duplicates():
    calls: list[list[list[int]]] = []

    class FakeProposer:
        name = "fake"

        def fill(self, requests, return_logq=False):
            calls.append([list(r.input_ids) for r in requests])
            out = []
            for r in requests:
                ids = list(r.input_ids)
                for p in r.positions:
                    ids[p] = 90 + p
                out.append(ids)
            return out

    from evolve.ga.operators import OperatorContext
    from evolve.ga.proposers import InputTemplate

    class Tok:
        all_special_ids: list[int] = []

        def convert_ids_to_tokens(self, ids):
            return [f"w{i}" for i in ids]

    ctx = OperatorContext(
        proposer=FakeProposer(),
        prompt_ids=(5,),
        tokenizer=Tok(),
        max_span=1,
        min_len=2,
        max_len=4,
        mask_id=0,
        template=InputTemplate(head=(), tail=()),
    )
    kept = fit([7, 8], 1.0)  # evaluated (an elite): may repeat
    twin = Individual([7, 8])  # a varied child identical to it: re-mutated
    other = Individual([1, 2])
    pop = [kept, twin, other]
    random.seed(0)
    dedupe(pop, ctx)
    assert list(kept) == [7, 8] and list(other) == [1, 2]
    assert list(twin) != [7, 8] and len(calls) == 1


def test_select_survivors_keeps_the_front():
    def p(*v):
        ind = ParetoIndividual([len(v)])
        ind.fitness.values = v
        return ind

    front = [p(3.0, 1.0, 0.0), p(1.0, 3.0, 0.0)]
    dominated = [p(0.5, 0.5, 0.0), p(0.1, 0.1, 0.0)]
    survivors = select_survivors(front + dominated, 2)
    assert {id(s) for s in survivors} == {id(x) for x in front}


def test_check_window_refuses_a_text_the_model_cannot_hold(tiny_bert_dir):
    lm = load_model(str(tiny_bert_dir), "mlm")
    rep = Representation.build(lm, PROMPT)
    rep.check_window(8)
    with pytest.raises(UserError, match="exceeds the model window"):
        rep.check_window(lm.max_length)

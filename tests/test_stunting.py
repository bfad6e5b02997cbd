"""Tests for stunting (evolve.experiments.stunting, `evolve stunt`).

All on the tiny random GPT-2 from conftest, a few steps each: variant none against a plain
training loop written out here, the skip mask and the penalty and balance terms against
direct computations from scratch (no cache), the amplified predictions against what
`evolve amplify` computes, seeding, and the CLI end to end through the store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cli.common import ErrorTranslatingGroup
from cli.stunt_cmds import COMMANDS, stunt
from evolve.experiments.amplify import (
    AmplifyConfig,
    Lookahead,
    amplified_distribution,
    load_documents,
    run_amplify,
)
from evolve.experiments.stunting import (
    StuntConfig,
    amplify_windows,
    balance_weights,
    compare_figure,
    run_stunt,
    stunt_loss,
    training_windows,
    window_order,
)
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model

TRAIN = (
    "The quick brown fox jumps over the lazy dog. Cheddar is yellow and tastes sharp when "
    "it is old.\n\nI went to the store to buy some milk and bread. The capital of France is "
    "Paris, a city on the Seine.\n\nA genetic algorithm selects the fittest individuals."
)
DEV = "Mozzarella is white so you can see it at night. The quick brown fox jumps again."
FAST = {"seq_len": 8, "batch_tokens": 16, "beams": 3, "depth": 2, "dev_positions": 10}


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


def _docs(text: str) -> list:
    return load_documents([text])


@torch.no_grad()
def _scratch_logp(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)


@torch.no_grad()
def _scratch_q(model: torch.nn.Module, prefix: list[int], beams: int, depth: int) -> torch.Tensor:
    """q from a textbook beam search that recomputes every beam from scratch (no cache)."""
    seqs = torch.tensor([prefix])
    scores = torch.zeros(1, dtype=torch.float64)
    for _ in range(depth):
        logp = model(seqs).logits[:, -1].double().log_softmax(-1)  # [live, V]
        vocab = logp.shape[-1]
        scores, flat = (scores[:, None] + logp).view(-1).topk(beams)
        seqs = torch.cat([seqs[flat // vocab], (flat % vocab)[:, None]], dim=1)
    return amplified_distribution(seqs[:, len(prefix) :], scores, 300)


def test_variant_none_equals_a_plain_training_loop(lm: LoadedModel) -> None:
    config = StuntConfig(variant="none", steps=3, eval_every=10, lr=1e-3, seed=4, **FAST)
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    # The plain loop: the same windows in the same order, AdamW, mean cross-entropy.
    windows = training_windows(lm, _docs(TRAIN), config.seq_len)
    order = window_order(len(windows), config.seed)
    model = __import__("copy").deepcopy(lm.model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for step in result.steps:
        picked = [next(order) for _ in range(config.rows_per_step)]
        assert picked == step["windows"]
        batch = windows[picked]
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert [s["loss"] for s in result.steps] == pytest.approx(losses, abs=1e-6)
    assert [s["nll"] for s in result.steps] == pytest.approx(losses, abs=1e-6)
    for (name, got), want in zip(
        result.model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=name)
    # The loaded (cached) model was not trained.
    assert not torch.equal(result.model.lm_head.weight, lm.model.lm_head.weight)


def test_amplified_predictions_are_what_amplify_computes(lm: LoadedModel) -> None:
    look = Lookahead(lm)
    ctx = [look.start_id, *lm.tokenizer(DEV, add_special_tokens=False)["input_ids"]][:13]
    text = lm.tokenizer.decode(ctx[1:])
    assert [look.start_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]] == ctx
    amp = amplify_windows(lm, torch.tensor([ctx]), beams=3, depth=3)
    ref = run_amplify(lm, _docs(text), AmplifyConfig(beams=3, depth=3, start=0, lambdas=(0.0,)))
    assert [r["t"] for r in ref.rows] == list(range(len(ctx) - 1))
    for row in ref.rows:
        t = row["t"]
        assert float(amp.logp_x[0, t]) == pytest.approx(row["logp"], abs=1e-9)
        logq = math.log(amp.q_x[0, t]) if amp.q_x[0, t] > 0 else None
        assert (logq is None) == (row["logq"] is None)
        if logq is not None:
            assert logq == pytest.approx(row["logq"], abs=1e-9)


def test_skip_mask_is_where_amplified_beats_naive(lm: LoadedModel) -> None:
    windows = training_windows(lm, _docs(TRAIN), 8)[:3]
    # The random model's p is near uniform: wide beams put the real token in q now and then.
    beams, depth = 40, 2
    amp = amplify_windows(lm, windows, beams, depth)
    expect = torch.zeros(amp.toward.shape, dtype=torch.bool)
    for r, row in enumerate(windows.tolist()):
        for t in range(8):
            p = _scratch_logp(lm.model, row[: t + 1]).exp()
            q = _scratch_q(lm.model, row[: t + 1], beams, depth)
            x = row[t + 1]
            expect[r, t] = bool(q[x] > p[x])
            assert float(amp.q_x[r, t]) == pytest.approx(float(q[x]), abs=1e-6)
    assert torch.equal(amp.toward, expect)
    assert 0 < int(expect.sum()) < expect.numel()  # both kinds present, so the test bites
    # The skip loss is the mean cross-entropy over exactly the other positions.
    with torch.no_grad():
        logits = lm.model(input_ids=windows[:, :-1]).logits
    loss, numbers = stunt_loss(logits, windows[:, 1:], amp, "skip")
    nll = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
    assert float(loss.detach()) == pytest.approx(float(nll[~expect].mean()), abs=1e-6)
    assert numbers["affected"] == pytest.approx(float(expect.double().mean()))


def test_skip_with_every_position_toward_makes_no_update(lm: LoadedModel) -> None:
    windows = training_windows(lm, _docs(TRAIN), 8)[:1]
    amp = amplify_windows(lm, windows, 3, 2)
    all_toward = type(amp)(amp.logp_x, torch.ones_like(amp.q_x), amp.first, amp.weight)
    logits = lm.model(input_ids=windows[:, :-1]).logits
    loss, numbers = stunt_loss(logits, windows[:, 1:], all_toward, "skip")
    assert loss is None and numbers["affected"] == 1.0


def test_penalty_term_matches_its_definition_and_is_bounded(lm: LoadedModel) -> None:
    windows = training_windows(lm, _docs(TRAIN), 8)[:2]
    amp = amplify_windows(lm, windows, 3, 2)
    logits = lm.model(input_ids=windows[:, :-1]).logits.detach().requires_grad_()
    loss, numbers = stunt_loss(logits, windows[:, 1:], amp, "penalty", alpha=0.7)
    logp = logits.detach().double().log_softmax(-1)
    floor = -math.log(300)
    term = 0.0
    for r in range(2):
        for t in range(8):
            q = torch.zeros(300, dtype=torch.float64)
            q.index_add_(0, amp.first[r, t], amp.weight[r, t])
            term += float((q * logp[r, t].clamp(min=floor)).sum())
    nll = F.cross_entropy(logits.detach().transpose(1, 2), windows[:, 1:])
    assert float(loss.detach()) == pytest.approx(float(nll) + 0.7 * term / 16, abs=1e-5)
    assert -0.7 * math.log(300) <= 0.7 * term / 16 <= 0
    # Below the floor a beam token is no longer pushed: the term stops changing.
    v = int(amp.first[0, 0, 0])
    terms = []
    for low in (-1e4, -2e4):
        squashed = logits.detach().clone()
        squashed[0, 0, v] = low
        terms.append(stunt_loss(squashed, windows[:, 1:], amp, "penalty", alpha=0.7)[1])
    assert terms[0]["penalty"] == pytest.approx(terms[1]["penalty"], abs=1e-7)
    assert terms[0]["penalty"] < numbers["penalty"]  # it did reach the floor, and stays there
    assert numbers["affected"] > 0


def test_balance_weights_equalise_toward_and_away() -> None:
    toward = torch.tensor([True, True, False, False, False, False])
    mag = torch.tensor([0.4, 0.2, 0.1, 0.05, 0.05, 0.0], dtype=torch.float64)
    w = balance_weights(toward, mag, cap=10.0)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float((w * mag)[toward].sum()) == pytest.approx(float((w * mag)[~toward].sum()))
    assert float(w[0]) == float(w[1]) and float(w[2]) == float(w[5])
    # Clipped at the cap; every weight stays in (0, cap].
    capped = balance_weights(toward, torch.tensor([1.0, 1.0, 0.01, 0, 0, 0]).double(), cap=2.0)
    assert float(capped[2] / capped[0]) == pytest.approx(2.0)
    assert float(capped.max()) <= 2.0 and float(capped.mean()) == pytest.approx(1.0)
    # Nothing to balance: all ones.
    assert torch.equal(
        balance_weights(toward, torch.zeros(6).double(), 10.0), torch.ones(6).double()
    )
    assert torch.equal(
        balance_weights(torch.ones(3, dtype=torch.bool), mag[:3], 10.0), torch.ones(3).double()
    )


def test_balance_loss_uses_the_weights(lm: LoadedModel) -> None:
    windows = training_windows(lm, _docs(TRAIN), 8)[:2]
    amp = amplify_windows(lm, windows, 3, 2)
    with torch.no_grad():
        logits = lm.model(input_ids=windows[:, :-1]).logits
    loss, _ = stunt_loss(logits, windows[:, 1:], amp, "balance", cap=10.0)
    w = balance_weights(amp.toward, (amp.q_x - amp.logp_x.exp()).abs(), 10.0)
    nll = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
    assert float(loss) == pytest.approx(float((w * nll.double()).mean()), abs=1e-6)


@pytest.mark.parametrize("variant", ["skip", "penalty", "balance"])
def test_same_seed_same_run(lm: LoadedModel, variant: str) -> None:
    config = StuntConfig(variant=variant, steps=2, eval_every=2, lr=1e-3, seed=7, **FAST)
    a = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    b = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    assert a.rows == b.rows
    for x, y in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(x, y)
    assert [e["step"] for e in a.evals] == [0, 2]
    assert a.summary["steps_done"] == 2 and a.summary["evaluations"] == 2
    if variant != "skip":
        return
    other = run_stunt(lm, _docs(TRAIN), _docs(DEV), StuntConfig(**{**config.to_dict(), "seed": 8}))
    assert [s["windows"] for s in other.steps] != [s["windows"] for s in a.steps]


def test_first_evaluation_is_amplify_on_the_loaded_weights(lm: LoadedModel) -> None:
    config = StuntConfig(steps=1, **FAST)
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    ref = run_amplify(lm, _docs(DEV), config.amplify_config()).summary
    first = result.evals[0]
    assert first["dev_ll"] == ref["naive_mean_ll"]
    assert first["slope_at_0"] == ref["arith"]["slope_at_0"]
    assert first["gain_0.1"] == ref["arith"]["by_lambda"][2]["gain"]
    assert result.evals[-1]["dev_ll"] != first["dev_ll"]  # the weights moved
    # The paired change is the mean of per-position differences, and it matches the means.
    s = result.summary
    assert s["dev_ll_change"] == pytest.approx(s["dev_ll_end"] - s["dev_ll_start"], abs=1e-9)
    assert s["gain_0.1_change"] == pytest.approx(s["gain_0.1_end"] - s["gain_0.1_start"], abs=1e-9)
    assert s["slope_at_0_change"] == pytest.approx(
        s["slope_at_0_end"] - s["slope_at_0_start"], abs=1e-9
    )
    diffs = [
        b - a
        for a, b in zip(
            first["per_position"]["logp"], result.evals[-1]["per_position"]["logp"], strict=True
        )
    ]
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    assert s["dev_ll_change_se"] == pytest.approx(se)


def test_epochs_and_interrupt(lm: LoadedModel) -> None:
    n = len(training_windows(lm, _docs(TRAIN), 8))
    config = StuntConfig(epochs=1.0, eval_every=100, **FAST)
    calls = []

    def stop(done: int, total: int, latest: dict) -> None:
        calls.append(total)
        if done == 2:
            raise KeyboardInterrupt

    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config, progress=stop)
    assert calls[0] == math.ceil(n / config.rows_per_step)
    assert result.interrupted and result.status == "interrupted"
    assert result.summary["steps_done"] == 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"steps": 0}, "steps"),
        ({"steps": 3, "epochs": 1.0}, "not both"),
        ({"epochs": 0.0}, "epochs"),
        ({"variant": "odd"}, "variant"),
        ({"batch_tokens": 4, "seq_len": 8}, "batch-tokens"),
        ({"lr": 0.0}, "lr"),
        ({"balance_cap": 0.5}, "cap"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        StuntConfig(**kwargs).validate()


def test_short_texts_are_refused(lm: LoadedModel) -> None:
    with pytest.raises(UserError, match="fewer than one window"):
        run_stunt(lm, _docs("Hi"), _docs(DEV), StuntConfig(steps=1, **FAST))
    with pytest.raises(UserError, match="evaluation window"):
        run_stunt(lm, _docs(TRAIN), _docs("A dog ran."), StuntConfig(steps=1, **FAST))


# -- the CLI ------------------------------------------------------------------------------------


@click.group(cls=ErrorTranslatingGroup)
def _cli() -> None:
    """The `evolve` group with only this module's commands (as cli.main builds it)."""


for _command in COMMANDS:
    _cli.add_command(_command)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    train, dev = tmp_path / "train.txt", tmp_path / "dev.txt"
    train.write_text(TRAIN, encoding="utf-8")
    dev.write_text(DEV, encoding="utf-8")
    return train, dev


def _args(model: Path, train: Path, dev: Path, db: Path) -> list[str]:
    return [
        "--train", str(train), "--dev", str(dev), "--model", str(model), "--db", str(db),
        "--seq-len", "8", "--batch-tokens", "16", "-B", "3", "-D", "2", "--dev-positions", "10",
    ]  # fmt: skip


def _invoke(args: list[str]) -> object:
    return CliRunner().invoke(_cli, ["stunt", *args], catch_exceptions=False)


def test_cli_runs_stores_and_compares(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    train, dev = _files(tmp_path)
    db = tmp_path / "s.db"
    ids = []
    for variant in ("none", "skip", "penalty", "balance"):
        extra = ["--variant", variant, "--steps", "1", "--json"]
        result = _invoke([*_args(tiny_gpt2_dir, train, dev, db), *extra])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        ids.append(payload["experiment_id"])
        assert payload["summary"]["variant"] == variant
    with LogStore(db) as store:
        exp = store.experiment(ids[1])
    assert exp["kind"] == "stunt" and exp["status"] == "finished"
    assert exp["config"]["variant"] == "skip" and exp["config"]["train"] == str(train)
    kinds = [r["kind"] for r in exp["rows"]]
    assert kinds == ["eval", "step", "eval"]
    text = _invoke([*_args(tiny_gpt2_dir, train, dev, db), "--steps", "1"])
    assert text.exit_code == 0 and "dev LL" in text.stdout and "cost:" in text.stdout
    png = tmp_path / "cmp.png"
    cmp = _invoke(["--compare", "--db", str(db), "--png", str(png)])
    assert cmp.exit_code == 0, cmp.output
    assert png.stat().st_size > 1000
    lines = cmp.stdout.splitlines()
    assert lines[0] == "training:" and "train NLL first" in lines[1]
    assert [line.split()[1] for line in lines[3:7]] == ["none", "skip", "penalty", "balance"]
    assert lines[3].split()[0] == str(ids[-1] + 1)  # the newest "none" run
    dev_at = lines.index("dev text (paired changes from step 0):")
    assert "Δ gain .1" in lines[dev_at + 1] and len(lines[dev_at + 3 : dev_at + 7]) == 4
    chosen = _invoke(["--compare", "--db", str(db), "--png", str(png), "--experiments",
                      f"{ids[0]},{ids[2]}", "--json"])  # fmt: skip
    assert [r["id"] for r in json.loads(chosen.stdout)["rows"]] == [ids[0], ids[2]]


def test_cli_save_writes_loadable_weights(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    train, dev = _files(tmp_path)
    out = tmp_path / "tuned"
    args = [*_args(tiny_gpt2_dir, train, dev, tmp_path / "s.db"), "--steps", "1"]
    result = _invoke([*args, "--save", str(out)])
    assert result.exit_code == 0, result.output
    tuned = load_model(str(out), "causal")
    assert not torch.equal(
        tuned.model.lm_head.weight, load_model(str(tiny_gpt2_dir), "causal").model.lm_head.weight
    )
    again = _invoke([*args, "--save", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output


def test_cli_bad_input_exits_2_and_writes_nothing(
    tiny_gpt2_dir: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    train, dev = _files(tmp_path)
    db = tmp_path / "s.db"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    short = tmp_path / "short.txt"
    short.write_text("A dog ran.", encoding="utf-8")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Hi", encoding="utf-8")
    base = _args(tiny_gpt2_dir, train, dev, db)
    cases = [
        (["--train", str(tmp_path / "missing.txt")], "does not exist"),
        (["--train", str(empty)], "no text"),
        (["--dev", str(latin)], "not UTF-8"),
        (["--model", str(tiny_bert_dir)], "masked LM"),
        (["--model", "tiny-bert"], "masked LM"),
        (["--alpha", "-1"], "alpha"),
        (["--steps", "0"], "steps"),
        (["--steps", "2", "--epochs", "1"], "not both"),
        (["--dev", str(short)], "evaluation window"),
        (["--train", str(tiny)], "fewer than one window"),
    ]
    for extra, message in cases:
        result = _invoke([*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()[-1]) < 300
        assert not db.exists(), extra
    assert _invoke(["--db", str(db)]).exit_code == 2
    assert _invoke([*base, "--png", str(tmp_path / "x.png")]).exit_code == 2
    result = _invoke(["--compare", "--db", str(db)])
    assert result.exit_code != 0 and not db.exists()


def test_cli_interrupt_stores_what_was_measured(
    tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cli.stunt_cmds as cmds

    real = cmds.run_stunt

    def stop_after_one_step(lm, train, dev, config, progress=None):  # type: ignore[no-untyped-def]
        def stop(done: int, total: int, latest: dict) -> None:
            raise KeyboardInterrupt

        return real(lm, train, dev, config, progress=stop)

    monkeypatch.setattr(cmds, "run_stunt", stop_after_one_step)
    train, dev = _files(tmp_path)
    db = tmp_path / "s.db"
    result = _invoke([*_args(tiny_gpt2_dir, train, dev, db), "--steps", "5"])
    assert result.exit_code == 130
    with LogStore(db) as store:
        (exp,) = store.experiments(kind="stunt")
    assert exp["status"] == "interrupted" and exp["summary"]["steps_done"] == 1


def test_compare_figure_and_registration(lm: LoadedModel) -> None:
    from cli.main import cli

    assert cli.commands["stunt"] is stunt
    with pytest.raises(UserError):
        compare_figure([])

"""Stunting v4 (particle) and v5 (adversarial), the dev-set monitor, and exact resume.

On the tiny random GPT-2 from conftest, a few steps each:
- the batched lookahead gives what the per-window engine gives;
- the particle variant's update has no component along g_q, checked from outside the run
  (g_q recomputed on the initial weights with the step's particles), while the same step of
  `none` has one;
- the adversarial variant refits its amplifier on schedule, measures it on the dev text,
  and projects its update against the amplifier's r;
- every evaluation records the monitor (the lookahead form the variant is not stunted
  against), and the particle numbers are `evolve amplify --lookahead particle`'s;
- a run stopped after any step and resumed from its checkpoint equals the uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from evolve.experiments.amplifier import (
    AmplifierSpec,
    dense_log_r,
    features,
    fit_amplifier,
    learned_next,
    load_amplifier,
    log_r_at,
    new_amplifier,
    save_amplifier,
)
from evolve.experiments.amplify import load_documents, run_amplify, sample_with
from evolve.experiments.checkpoints import load_checkpoint, resume_from, save_checkpoint
from evolve.experiments.lookahead import Beam, Particles, derived_seed, particle_noise
from evolve.experiments.stunting import (
    MONITOR,
    NOISE_TRAIN,
    Hooks,
    StuntConfig,
    amplify_windows,
    lookahead_windows,
    run_stunt,
    training_windows,
)
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model

TRAIN = (
    "The quick brown fox jumps over the lazy dog. Cheddar is yellow and tastes sharp when "
    "it is old.\n\nI went to the store to buy some milk and bread. The capital of France is "
    "Paris, a city on the Seine.\n\nA genetic algorithm selects the fittest individuals."
)
DEV = "Mozzarella is white so you can see it at night. The quick brown fox jumps again."
FAST = {"seq_len": 8, "batch_tokens": 16, "beams": 3, "depth": 2, "dev_positions": 10}
V45 = {"particles": 4, "retrain_every": 2, "amplifier_windows": 4, "amplifier_steps": 30}


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


def _docs(text: str) -> list:
    return load_documents([text])


def test_batched_lookahead_equals_the_per_window_engine(lm: LoadedModel) -> None:
    windows = training_windows(lm, _docs(TRAIN), 8)[:4]
    one_by_one = amplify_windows(lm, windows, beams=3, depth=3)
    batched = lookahead_windows(lm.model, windows, Beam(3), 3)
    assert torch.equal(one_by_one.first, batched.first)
    torch.testing.assert_close(one_by_one.logp_x, batched.logp_x, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_by_one.q_x, batched.q_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(one_by_one.weight, batched.weight, atol=1e-6, rtol=0)


def _flat_grad(model: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).double()
            for p, g in zip(model.parameters(), grads, strict=True)
        ]
    )


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


@pytest.mark.parametrize("variant", ["particle", "none"])
def test_particle_update_has_no_component_toward_q(lm: LoadedModel, variant: str) -> None:
    """From outside the run: q of step 1's particles on the initial weights gives g_q; the
    first update of the particle variant is orthogonal to it (cosine ~1e-7), that of plain
    fine-tuning is not."""
    config = StuntConfig(variant=variant, steps=1, lr=1e-3, seed=3, **FAST, **V45)
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    (step,) = result.steps
    batch = training_windows(lm, _docs(TRAIN), 8)[step["windows"]]
    noise = particle_noise(2, 8, 2, 4, derived_seed(3, 1, NOISE_TRAIN))
    amp = lookahead_windows(lm.model, batch, Particles(4, 2.0), 2, noise=noise)
    logp = lm.model(input_ids=batch[:, :-1]).logits.log_softmax(-1)
    g_q = _flat_grad(lm.model, (amp.weight.float() * logp.gather(-1, amp.first)).sum(-1).mean())
    delta = _flat(result.model) - _flat(lm.model)
    cos = float(delta @ g_q / (delta.norm() * g_q.norm()))
    if variant == "particle":
        assert abs(cos) < 1e-5
        assert abs(step["update_cos_before"]) > 1e-3  # there was something to remove
        assert step["update_cos_before"] == pytest.approx(
            step["update_dot_before"] / (delta.norm() * g_q.norm()).item(), rel=0.2
        )
        assert abs(step["update_dot_after"]) < 1e-6 * abs(step["update_dot_before"]) + 1e-12
        assert 0 < step["removed_share"] < 1 and step["ess"] > 1
    else:
        assert abs(cos) > 1e-3


def test_adversarial_variant_refits_measures_and_projects(lm: LoadedModel) -> None:
    config = StuntConfig(
        variant="adversarial", steps=3, eval_every=2, lr=1e-3, seed=5, **FAST, **V45
    )
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    kinds = [(r["kind"], r["step"]) for r in result.rows]
    assert kinds == [
        ("eval", 0),
        ("amplifier", 1),
        ("step", 1),
        ("step", 2),
        ("eval", 2),
        ("amplifier", 3),
        ("step", 3),
        ("eval", 3),
    ]
    fits = [r for r in result.rows if r["kind"] == "amplifier"]
    for fit in fits:  # never worse than p (gain 0) on its held-out positions
        assert fit["heldout_gain"] >= 0 and fit["heldout_positions"] == 8
    first = fits[0]  # a fresh amplifier is p (gain 0): a kept later iteration gained on its data
    assert first["fit_gain"] > 0 or first["best_iteration"] == 0 or first["reset"]
    for step in result.steps:
        assert abs(step["update_dot_after"]) < 1e-6 * abs(step["update_dot_before"]) + 1e-12
    evals = result.evals
    assert evals[0]["amplifier_gain"] is None
    assert all(isinstance(e["amplifier_gain"], float) for e in evals[1:])
    assert len(evals[-1]["per_position"]["amplifier_gain"]) == evals[-1]["positions"]
    assert result.summary["amplifier_fits"] == 2
    assert result.amplifier is not None


@pytest.mark.parametrize("variant", ["none", "skip", "particle", "adversarial"])
def test_every_variant_records_its_monitor(lm: LoadedModel, variant: str) -> None:
    config = StuntConfig(variant=variant, steps=1, **FAST, **V45)
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    form = MONITOR[variant]
    assert form == ("beam" if variant in ("particle", "adversarial") else "particle")
    for e in result.evals:
        assert e["monitor"] == form
        source = "gain_0.1" if form == "beam" else "particle_gain_0.1"
        assert e["monitor_gain_0.1"] == e[source]
    assert result.summary["monitor"] == form
    assert result.summary["monitor_gain_0.1_change"] is not None
    if variant == "none":  # the particle numbers are evolve amplify's, same positions, same seed
        ref = run_amplify(lm, _docs(DEV), config.amplify_config("particle")).summary
        first = result.evals[0]
        by_lam = {row["lambda"]: row for row in ref["arith"]["by_lambda"]}
        assert first["particle_gain_0.1"] == by_lam[0.1]["gain"]
        assert first["particle_slope_at_0"] == ref["arith"]["slope_at_0"]


class _Killed(Exception):
    """Stands in for a kill: nothing after it runs (it is not a KeyboardInterrupt)."""


@pytest.mark.parametrize(
    "variant,stop_after", [("particle", 2), ("adversarial", 1), ("penalty", 3)]
)
def test_resume_after_a_kill_equals_the_uninterrupted_run(
    lm: LoadedModel, tmp_path: Path, variant: str, stop_after: int
) -> None:
    config = StuntConfig(variant=variant, steps=4, eval_every=3, lr=1e-3, seed=2, **FAST, **V45)
    whole = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)

    stored: list[dict] = []
    folder = tmp_path / "ckpt"

    def kill(done: int, total: int, latest: dict) -> None:
        if done == stop_after:
            raise _Killed

    hooks = Hooks(
        on_row=lambda row: stored.append(json.loads(json.dumps(row))),
        on_checkpoint=lambda snap: save_checkpoint(folder, snap),
        checkpoint_every=1,
    )
    with pytest.raises(_Killed):
        run_stunt(lm, _docs(TRAIN), _docs(DEV), config, progress=kill, hooks=hooks)
    stored.append({"kind": "step", "step": 99})  # a row written after the last checkpoint
    loaded = load_checkpoint(folder)
    assert loaded is not None and loaded[0]["step"] == stop_after
    resume = resume_from(*loaded, stored)
    assert len(resume.rows) == len(stored) - 1
    rest = run_stunt(lm, _docs(TRAIN), _docs(DEV), config, hooks=hooks, resume=resume)
    strip = json.loads(json.dumps(whole.rows))
    assert rest.rows == strip
    for (name, a), b in zip(whole.model.named_parameters(), rest.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert rest.summary["steps_done"] == 4 and rest.summary["evaluations"] == 3


def test_checkpoint_files_are_safetensors_and_json(lm: LoadedModel, tmp_path: Path) -> None:
    config = StuntConfig(variant="adversarial", steps=2, **FAST, **V45)
    folder = tmp_path / "c"
    run_stunt(
        lm,
        _docs(TRAIN),
        _docs(DEV),
        config,
        hooks=Hooks(on_checkpoint=lambda s: save_checkpoint(folder, s)),
    )
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["latest.json", "step-00000002.json", "step-00000002.safetensors"]
    (folder / "step-00000002.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(folder)
    assert load_checkpoint(tmp_path / "empty") is None


# -- the learned amplifier ----------------------------------------------------------------------


def _spec(lm: LoadedModel) -> AmplifierSpec:
    return StuntConfig(particles=4).amplifier_spec(lm)


def test_amplifier_distribution_is_normalised_and_starts_as_p(lm: LoadedModel) -> None:
    windows = training_windows(lm, _docs(TRAIN), 8)[:3]
    amp = new_amplifier(_spec(lm), seed=0)
    x = windows[:, 1:]
    positions = torch.arange(8)[None].expand(3, -1)
    feats, ro = features(
        lm.model, windows[:, :8], positions, amp.spec, 1, want=x[..., None], full=True
    )
    logp_x = ro.want_logp[..., 0]
    with torch.no_grad():
        delta = amp(feats)
    assert torch.equal(delta, torch.zeros_like(delta))  # a fresh amplifier is p itself
    torch.testing.assert_close(log_r_at(feats, delta, x, logp_x), logp_x, atol=1e-9, rtol=0)
    fit = fit_amplifier(amp, feats, x, logp_x, steps=40, seed=0)
    assert fit["fit_gain"] > 0
    with torch.no_grad():
        delta = amp(feats)
    dense = dense_log_r(feats, delta, ro.full_logp)
    torch.testing.assert_close(dense.exp().sum(-1), torch.ones(3, 8, dtype=torch.float64))
    # r at the real token: the closed form (candidates only) equals the dense distribution.
    torch.testing.assert_close(
        log_r_at(feats, delta, x, logp_x), dense.gather(-1, x[..., None])[..., 0], atol=1e-6, rtol=0
    )
    assert float((delta.abs() > 0).double().mean()) > 0  # the fit moved some candidates


def test_amplifier_checkpoint_round_trip_and_bad_files(lm: LoadedModel, tmp_path: Path) -> None:
    amp = new_amplifier(_spec(lm), seed=1)
    with torch.no_grad():
        amp.out.weight.normal_()
    save_amplifier(amp, tmp_path / "a", {"fit_on": "tiny"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "amplifier.json",
        "amplifier.safetensors",
    ]
    back = load_amplifier(tmp_path / "a")
    for a, b in zip(amp.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    sample = sample_with(lm, "The quick", 4, learned_next(lm.model, back, seed=2), seed=2)
    again = sample_with(lm, "The quick", 4, learned_next(lm.model, back, seed=2), seed=2)
    assert sample.token_ids == again.token_ids and len(sample.token_ids) == 4

    def broken(name: str, data: bytes | None) -> Path:
        folder = tmp_path / name
        save_amplifier(amp, folder)
        if data is None:
            (folder / "amplifier.safetensors").unlink()
        elif name.startswith("json"):
            (folder / "amplifier.json").write_bytes(data)
        else:
            (folder / "amplifier.safetensors").write_bytes(data)
        return folder

    cases = [
        (tmp_path / "nowhere", "not a folder"),
        (broken("noweights", None), "amplifier.safetensors is missing"),
        (broken("json-bad", b"{oops"), "not valid JSON"),
        (broken("json-other", b'{"format": "x"}'), "not an mlm-evolve amplifier"),
        (
            broken(
                "json-spec", b'{"format": "mlm-evolve-amplifier", "version": 1, "spec": {"a": 1}}'
            ),
            "spec",
        ),
        (broken("weights-bad", b"\x00garbage"), "not a readable safetensors"),
    ]
    for folder, message in cases:
        with pytest.raises(UserError, match=message) as err:
            load_amplifier(folder)
        assert "\n" not in str(err.value)
    other = AmplifierSpec(hidden_size=8, vocab_size=300)
    with pytest.raises(UserError, match="hidden size"):
        learned_next(lm.model, new_amplifier(other, 0), seed=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"beta": 0.0}, "beta must be a number greater than 0"),
        ({"beta": -1.0}, "beta"),
        ({"particles": 0}, "particles must be at least 1"),
        ({"retrain_every": 0}, "retrain-every"),
        ({"amplifier_steps": 0}, "amplifier-steps"),
        ({"variant": "adversary"}, "variant"),
    ],
)
def test_config_refuses_bad_v45_input(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        StuntConfig(**kwargs).validate()


def test_plain_loss_is_the_same_for_the_projected_variants(lm: LoadedModel) -> None:
    """The projected variants train on the plain mean NLL: their recorded loss is `none`'s."""
    config = StuntConfig(variant="particle", steps=1, lr=1e-3, seed=4, **FAST, **V45)
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    batch = training_windows(lm, _docs(TRAIN), 8)[result.steps[0]["windows"]]
    logits = lm.model(input_ids=batch[:, :-1]).logits
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    assert result.steps[0]["loss"] == pytest.approx(float(nll.detach()), abs=1e-6)
    assert math.isfinite(result.steps[0]["grad_dot"])


# -- the CLI ------------------------------------------------------------------------------------


def _cli_args(model: Path, tmp_path: Path) -> list[str]:
    train, dev = tmp_path / "train.txt", tmp_path / "dev.txt"
    train.write_text(TRAIN, encoding="utf-8")
    dev.write_text(DEV, encoding="utf-8")
    return [
        "stunt", "--train", str(train), "--dev", str(dev), "--model", str(model),
        "--db", str(tmp_path / "s.db"), "--seq-len", "8", "--batch-tokens", "16", "-B", "3",
        "-D", "2", "--dev-positions", "10", "--particles", "4", "--amplifier-windows", "4",
        "--amplifier-steps", "20",
    ]  # fmt: skip


def test_cli_v45_runs_save_and_compare(invoke, tiny_gpt2_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = _cli_args(tiny_gpt2_dir, tmp_path)
    out = tmp_path / "tuned"
    adv = invoke(*args, "--variant", "adversarial", "--steps", "2", "--save", str(out))
    assert adv.exit_code == 0, adv.output
    assert "update toward the learned amplifier" in adv.stdout and "amplifier: 1 fits" in adv.stdout
    assert "monitor (beam)" in adv.stdout
    amp = load_amplifier(out / "amplifier")
    assert amp.spec.particles == 4 and (out / "config.json").is_file()
    part = invoke(*args, "--variant", "particle", "--steps", "1", "--json")
    assert part.exit_code == 0, part.output
    summary = json.loads(part.stdout)["summary"]
    assert summary["stunted_against"] == "particle" and summary["monitor"] == "beam"
    assert summary["max_abs_update_dot_after"] < 1e-6
    plain = invoke(*args, "--variant", "none", "--steps", "1")
    assert plain.exit_code == 0 and "monitor (particle)" in plain.stdout
    png = tmp_path / "cmp.png"
    cmp = invoke("stunt", "--compare", "--db", str(tmp_path / "s.db"), "--png", str(png))
    assert cmp.exit_code == 0, cmp.output
    lines = cmp.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("lookahead forms"))
    forms = {line.split()[1]: line.split()[3] for line in lines[at + 3 : at + 6]}
    assert forms == {"none": "particle", "particle": "beam", "adversarial": "beam"}
    assert png.stat().st_size > 1000


def test_compare_figure_draws_the_monitor(lm: LoadedModel) -> None:
    from evolve.experiments.stunting import compare_figure

    config = StuntConfig(variant="particle", steps=1, **FAST, **V45)
    result = run_stunt(lm, _docs(TRAIN), _docs(DEV), config)
    exp = {"id": 1, "kind": "stunt", "status": "finished", "rows": result.rows}
    fig = compare_figure([exp | {"summary": result.summary}])
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("monitor") for t in titles)
    monitor = next(ax for ax in fig.axes if ax.get_title().startswith("monitor"))
    (line,) = monitor.get_lines()[:1]
    assert list(line.get_ydata()) == [e["monitor_gain_0.1"] for e in result.evals]
    assert "(monitor: beam)" in line.get_label()


def test_cli_v45_bad_input(invoke, tiny_gpt2_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = _cli_args(tiny_gpt2_dir, tmp_path)
    for extra, message in (
        (["--beta", "0"], "beta must be a number greater than 0"),
        (["--beta", "-0.5"], "beta must be"),
        (["--particles", "0"], "particles must be at least 1"),
        (["--variant", "adversarial", "--retrain-every", "0"], "retrain-every"),
    ):
        result = invoke(*args, "--steps", "1", *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "s.db").exists()


def test_an_amplifier_equal_to_p_leaves_the_update_alone(lm: LoadedModel) -> None:
    """Δ = 0 (fresh, or reset after a fit that did not generalise): r is p, so there is no
    direction toward it; the step is the plain one, not a projection against rounding."""
    from evolve.experiments.stunting import amplifier_windows

    windows = training_windows(lm, _docs(TRAIN), 8)[:2]
    amp = amplifier_windows(lm.model, windows, new_amplifier(_spec(lm), 0), seed=1)
    assert amp.dense is None and not bool(amp.toward.any())
    assert torch.equal(amp.weight, torch.zeros_like(amp.weight))

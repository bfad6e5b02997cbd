"""Tests for the beam-search-amplified causal LM (evolve.experiments.amplify, `evolve amplify`).

All on the tiny random GPT-2 from conftest: the beam search is checked against brute force
(exact enumeration where beam search is provably exact, and a from-scratch beam search
without any cache otherwise), the incremental cache against recomputed prefixes, the mixes
against their definitions, and the CLI end to end through the store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from cli.amplify_cmds import COMMANDS, amplify
from cli.common import ErrorTranslatingGroup
from evolve.experiments.amplify import (
    AmplifyConfig,
    Lookahead,
    amplified_distribution,
    geo_logprobs,
    iter_positions,
    load_documents,
    log_arith,
    run_amplify,
    sample_amplified,
    split_documents,
)
from evolve.store import LogStore
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model

TEXT = (
    "The quick brown fox jumps over the lazy dog. Cheddar is yellow and tastes sharp when "
    "it is old.\n\nI went to the store to buy some milk and bread."
)


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


def _ctx(lm: LoadedModel, text: str) -> list[int]:
    look = Lookahead(lm)
    return [look.start_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def _scratch_logp(lm: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Next-token log-probabilities after `ids`, recomputed from nothing (no cache)."""
    logits = lm.model(torch.tensor([ids])).logits[0, -1]
    return logits.double().log_softmax(-1)


def _reference_beam_search(
    lm: LoadedModel, prefix: list[int], beams: int, depth: int
) -> list[tuple[list[int], float]]:
    """Textbook beam search: every step recomputes every beam from scratch."""
    live: list[tuple[list[int], float]] = [([], 0.0)]
    for _ in range(depth):
        cands = []
        for seq, score in live:
            logp = _scratch_logp(lm, prefix + seq)
            for v in range(logp.shape[0]):
                cands.append((seq + [v], score + float(logp[v])))
        cands.sort(key=lambda c: -c[1])
        live = cands[:beams]
    return live


def test_beam_search_is_exact_when_nothing_is_pruned(lm: LoadedModel) -> None:
    # With B = V, depth 2 keeps every first token, so the top B of all V^2 sequences is exact.
    ctx = _ctx(lm, "The quick brown")
    look = Lookahead(lm)
    vocab = look.vocab_size
    found = look.beam_search(ctx, beams=vocab, depth=2)
    with torch.no_grad():
        first = _scratch_logp(lm, ctx)
        rows = torch.tensor([ctx + [v] for v in range(vocab)])
        second = lm.model(rows).logits[:, -1].double().log_softmax(-1)
    total = (first[:, None] + second).view(-1)
    best, flat = total.topk(vocab)
    exact = {(int(i) // vocab, int(i) % vocab): float(s) for i, s in zip(flat, best, strict=True)}
    got = {tuple(t.tolist()): float(s) for t, s in zip(found.tokens, found.logprobs, strict=True)}
    assert set(got) == set(exact)
    for seq, score in got.items():
        assert score == pytest.approx(exact[seq], abs=1e-5)
    assert found.logprobs.tolist() == sorted(found.logprobs.tolist(), reverse=True)


@pytest.mark.parametrize("beams,depth,group", [(3, 3, 1), (3, 3, 4), (2, 4, 8), (5, 1, 3)])
def test_grouped_tree_search_equals_scratch_beam_search(
    lm: LoadedModel, beams: int, depth: int, group: int
) -> None:
    ctx = _ctx(lm, TEXT)
    ts = [1, 2, 5, 6, 7, 11, 12]
    for t, _, found in iter_positions(lm, ctx, ts, beams, depth, group=group):
        ref = _reference_beam_search(lm, ctx[: t + 1], beams, depth)
        assert [seq for seq, _ in ref] == found.tokens.tolist(), f"t={t}"
        assert [s for _, s in ref] == pytest.approx(found.logprobs.tolist(), abs=1e-5)


@pytest.mark.parametrize("group", [1, 3, 16])
def test_incremental_cache_gives_the_same_p_as_recomputing(lm: LoadedModel, group: int) -> None:
    ctx = _ctx(lm, TEXT)
    ts = list(range(0, len(ctx) - 1, 2))
    seen = []
    for t, logp, _ in iter_positions(lm, ctx, ts, beams=2, depth=2, group=group):
        torch.testing.assert_close(logp, _scratch_logp(lm, ctx[: t + 1]), atol=1e-5, rtol=0)
        seen.append(t)
    assert seen == ts


def test_q_sums_to_one_and_is_zero_off_beam(lm: LoadedModel) -> None:
    look = Lookahead(lm)
    found = look.beam_search(_ctx(lm, "I went to the"), beams=4, depth=3)
    for length_norm in (False, True):
        q = amplified_distribution(found.tokens, found.logprobs, look.vocab_size, length_norm)
        assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
        on_beam = set(found.tokens[:, 0].tolist())
        assert set(torch.nonzero(q).view(-1).tolist()) == on_beam
        scale = found.tokens.shape[1] if length_norm else 1
        weights = torch.softmax(found.logprobs / scale, -1)
        for v in on_beam:
            expected = float(weights[found.tokens[:, 0] == v].sum())
            assert float(q[v]) == pytest.approx(expected, abs=1e-12)


def test_mixes_match_their_definitions() -> None:
    torch.manual_seed(0)
    logp = torch.randn(50, dtype=torch.float64).log_softmax(-1)
    q = torch.zeros(50, dtype=torch.float64)
    q[[3, 7]] = torch.tensor([0.75, 0.25], dtype=torch.float64)
    eps = 0.01
    q_eps = (1 - eps) * q + eps * logp.exp()
    lams = [0.0, 0.3, 1.0]
    geo = geo_logprobs(logp, q_eps.log(), lams)
    assert torch.equal(geo[0], logp)  # λ=0 is p itself, bit for bit
    torch.testing.assert_close(geo.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(geo[2], q_eps.log())
    direct = logp.exp() ** 0.7 * q_eps**0.3
    torch.testing.assert_close(geo[1], (direct / direct.sum()).log())
    for v in (3, 10):
        lp, lq = float(logp[v]), math.log(q[v]) if q[v] > 0 else -math.inf
        assert log_arith(lp, lq, 0.0) == lp
        assert log_arith(lp, lq, 0.4) == pytest.approx(math.log(0.6 * logp[v].exp() + 0.4 * q[v]))
    assert log_arith(-2.0, -math.inf, 1.0) == -math.inf


def test_run_amplify_lambda_zero_is_naive_and_summary_is_consistent(lm: LoadedModel) -> None:
    docs = load_documents([TEXT])
    config = AmplifyConfig(causal="x", beams=3, depth=2, lambdas=(0.0, 0.5, 1.0), stride=2)
    seen = []
    result = run_amplify(lm, docs, config, progress=lambda done, total: seen.append((done, total)))
    rows, s = result.rows, result.summary
    assert len(rows) == s["positions"] > 0
    assert seen[-1] == (len(rows), len(rows))
    assert s["documents"] == 2
    for row in rows:
        assert row["log_arith"][0] == row["logp"]
        assert row["log_geo"][0] == row["logp"]
        assert (row["logq"] is None) == (not row["in_beams"])
        if not row["in_beams"]:
            assert row["log_arith"][2] is None  # q alone gives the real token probability 0
    naive = s["naive_mean_ll"]
    assert naive == pytest.approx(sum(r["logp"] for r in rows) / len(rows))
    for mix in ("arith", "geo"):
        zero = s[mix]["by_lambda"][0]
        assert zero["mean_ll"] == naive and zero["gain"] == 0.0 and zero["helped"] == 0.0
    coverage = sum(r["in_beams"] for r in rows) / len(rows)
    assert s["beam_coverage"] == pytest.approx(coverage)
    assert s["arith"]["by_lambda"][2]["zero_prob"] == len(rows) - sum(r["in_beams"] for r in rows)
    # Positions: every 2nd token from `start` in each document, the real token recorded.
    ctx = _ctx(lm, docs[0].text)
    first_doc = [r for r in rows if r["doc"] == 0]
    assert [r["t"] for r in first_doc] == list(range(1, len(ctx) - 1, 2))
    assert [r["token_id"] for r in first_doc] == [ctx[r["t"] + 1] for r in first_doc]
    assert s["cost"]["forward_calls"] > 0 and s["cost"]["seconds_per_position"] > 0


def test_slope_at_zero_matches_a_finite_difference(lm: LoadedModel) -> None:
    config = AmplifyConfig(beams=3, depth=2, lambdas=(0.0, 1e-7))
    s = run_amplify(lm, load_documents([TEXT]), config).summary
    gain = s["arith"]["by_lambda"][1]["gain"]
    assert gain / 1e-7 == pytest.approx(s["arith"]["slope_at_0"], rel=1e-3, abs=1e-6)


def test_max_positions_caps_across_documents(lm: LoadedModel) -> None:
    docs = load_documents([TEXT])
    result = run_amplify(lm, docs, AmplifyConfig(beams=2, depth=2, max_positions=5, start=0))
    assert [r["t"] for r in result.rows] == [0, 1, 2, 3, 4]


def test_interrupt_keeps_what_was_scored(lm: LoadedModel) -> None:
    def stop(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    config = AmplifyConfig(beams=2, depth=2, batch_tokens=4)  # 2 positions per group
    result = run_amplify(lm, load_documents([TEXT]), config, progress=stop)
    assert result.interrupted and result.status == "interrupted"
    assert len(result.rows) == 4 == result.summary["positions"]


def test_sample_amplified_is_seeded_and_greedy_at_lambda_zero(lm: LoadedModel) -> None:
    a = sample_amplified(lm, "The quick", 8, beams=3, depth=2, lam=0.5, temperature=1.0, seed=3)
    b = sample_amplified(lm, "The quick", 8, beams=3, depth=2, lam=0.5, temperature=1.0, seed=3)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.forward_calls > 0
    # λ=0 at temperature 0 is greedy decoding of p (EOS is not special for this check).
    greedy = sample_amplified(lm, "The quick", 6, beams=3, depth=2, lam=0.0, temperature=0.0)
    ids = lm.tokenizer("The quick", add_special_tokens=False)["input_ids"]
    expect = []
    for _ in range(len(greedy.token_ids)):
        expect.append(int(_scratch_logp(lm, ids + expect).argmax()))
    assert list(greedy.token_ids) == expect
    geo = sample_amplified(lm, "", 4, beams=2, depth=2, lam=0.7, temperature=0.7, mix="geo")
    assert len(geo.token_ids) <= 4
    with pytest.raises(UserError):
        sample_amplified(lm, "x", 4, mix="median")
    with pytest.raises(UserError):
        sample_amplified(lm, "x", 4, lam=1.5)


def test_documents_split_on_blank_lines_and_unwrap() -> None:
    docs = split_documents("a b\nc\n\n  \n\nd\r\n\r\ne", "f")
    assert [d.text for d in docs] == ["a b\nc", "d", "e"]
    assert [d.index for d in docs] == [0, 1, 2]
    assert split_documents("a b\n  c\n\nd", "f", unwrap=True)[0].text == "a b c"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"beams": 0}, "beams"),
        ({"depth": 0}, "depth"),
        ({"lambdas": (0.5, 1.5)}, "lambda"),
        ({"lambdas": (-0.1,)}, "lambda"),
        ({"lambdas": ()}, "lambda"),
        ({"lambdas": (float("nan"),)}, "lambda"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"stride": 0}, "stride"),
        ({"max_positions": 0}, "max-positions"),
        ({"start": -1}, "start"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        AmplifyConfig(**kwargs).validate()


def test_bad_documents(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no text"):
        load_documents(["  \n\n  "])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_documents(files=[bad])


@click.group(cls=ErrorTranslatingGroup)
def _cli() -> None:
    """The `evolve` group with only this module's commands (as cli.main builds it)."""


for _command in COMMANDS:
    _cli.add_command(_command)


def _invoke(args: list[str]) -> object:
    assert amplify in COMMANDS
    return CliRunner().invoke(_cli, ["amplify", *args], catch_exceptions=False)


def test_cli_json_stores_experiment(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    src = tmp_path / "doc.txt"
    src.write_text(TEXT, encoding="utf-8")
    args = ["--file", str(src), "--causal", str(tiny_gpt2_dir), "-B", "3", "-D", "2"]
    args += ["--lambdas", "0,0.2,1", "--max-positions", "9", "--json", "--db", str(db)]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    s = payload["summary"]
    assert s["positions"] == 9 and s["beams"] == 3 and s["depth"] == 2
    assert [x["lambda"] for x in s["arith"]["by_lambda"]] == [0.0, 0.2, 1.0]
    with LogStore(db) as store:
        exp = store.experiment(payload["experiment_id"])
        assert [e["id"] for e in store.experiments(kind="amplify")] == [payload["experiment_id"]]
    assert exp["kind"] == "amplify" and exp["status"] == "finished"
    assert exp["summary"] == s
    assert exp["config"]["files"] == [str(src)] and exp["config"]["beams"] == 3
    assert len(exp["rows"]) == 9
    assert exp["rows"][0]["log_arith"][0] == exp["rows"][0]["logp"]


def test_cli_table(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    args = ["Cheddar is yellow and tastes sharp.", "--causal", str(tiny_gpt2_dir)]
    result = _invoke([*args, "--lambdas", "0,0.5", "--db", str(tmp_path / "e.db")])
    assert result.exit_code == 0, result.output
    assert "arith LL" in result.stdout and "best geo: lambda=" in result.stdout
    assert "s/position" in result.stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--beams", "0"], "beams"),
        (["--lambdas", "0,1.2"], "lambda"),
        (["--lambdas", "a,b"], "comma-separated"),
        (["--start", "500"], "no positions"),
        (["--beams", "100000"], "vocabulary"),
    ],
)
def test_cli_bad_input_exits_2(
    tiny_gpt2_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["The quick brown fox.", "--causal", str(tiny_gpt2_dir), "--db", str(tmp_path / "e.db")]
    result = _invoke([*args, *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_bad_files_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    for path, message in ((bad, "not UTF-8"), (empty, "no text")):
        result = _invoke(["--file", str(path), "--db", str(tmp_path / "e.db")])
        assert result.exit_code == 2 and message in result.output
    result = _invoke(["--db", str(tmp_path / "e.db")])
    assert result.exit_code == 2 and "no text" in result.output


def test_registered_in_the_evolve_group() -> None:
    from cli.main import cli

    assert cli.commands["amplify"] is amplify


def test_cli_interrupt_stores_partial_rows(
    tiny_gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cli.amplify_cmds as cmds

    real = cmds.run_amplify

    def stop_after_first_group(
        lm: LoadedModel, docs: list, config: AmplifyConfig, progress: object = None
    ) -> object:
        def stop(done: int, total: int) -> None:
            raise KeyboardInterrupt

        return real(lm, docs, config, progress=stop)

    monkeypatch.setattr(cmds, "run_amplify", stop_after_first_group)
    db = tmp_path / "e.db"
    args = [TEXT, "--causal", str(tiny_gpt2_dir), "--batch-tokens", "8", "--db", str(db)]
    result = _invoke(args)
    assert result.exit_code == 130
    with LogStore(db) as store:
        (exp,) = store.experiments(kind="amplify")
        assert exp["status"] == "interrupted" and exp["n_rows"] == 2  # 8 // B=4 positions

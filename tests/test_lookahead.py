"""The batched lookahead engine (evolve.experiments.lookahead): beam and particle rollouts.

The beams are checked against `evolve amplify`'s own search (`Lookahead.beam_search`, itself
tested against brute force in test_amplify.py) for windows batched together, cut into any
number of forwards. The particles are checked statistically against exhaustive enumeration
of every path on a model with a 5-token vocabulary: at beta = 1 the weighted first tokens
are unbiased for p (a binomial tolerance), at larger beta they match the exact
first-token marginal of p(path)^beta, which at large beta is the best path's first token.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from evolve.experiments.amplify import (
    AmplifyConfig,
    Lookahead,
    load_documents,
    run_amplify,
    sample_particle,
)
from evolve.experiments.lookahead import (
    Beam,
    Particles,
    derived_seed,
    lookahead,
    particle_noise,
)
from scoring.errors import UserError
from scoring.models import LoadedModel, load_model

V = 5  # the tiny vocabulary: 5^3 = 125 paths of depth 3 to enumerate


@pytest.fixture(scope="module")
def tiny_vocab() -> torch.nn.Module:
    """A 1-layer GPT-2 over 5 tokens. initializer_range 0.15 makes p uneven (its largest
    probabilities 0.3-0.6) yet not so peaked that large beta needs astronomically many
    particles (see `test_large_beta_is_the_best_path_distribution`)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=32, initializer_range=0.15,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def lm(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_model(str(tiny_gpt2_dir), "causal")


PREFIX = torch.tensor([[3, 1, 4, 1, 0, 2, 4, 3, 2]])  # 9 tokens: 8 prefixes of lengths 1-8
POSITIONS = torch.arange(8)[None]


@torch.no_grad()
def exact_q(model: torch.nn.Module, prefix: list[int], depth: int, beta: float) -> torch.Tensor:
    """First-token marginal of p(path)^beta over all V^depth paths, recomputed from scratch."""
    paths = torch.tensor(list(itertools.product(range(V), repeat=depth)))
    seqs = torch.cat([torch.tensor(prefix).expand(len(paths), -1), paths], dim=1)
    logp = model(seqs).logits[:, len(prefix) - 1 : -1].double().log_softmax(-1)
    path_logp = logp.gather(-1, paths[..., None]).squeeze(-1).sum(-1)
    weights = (beta * path_logp).softmax(0)
    return torch.zeros(V, dtype=torch.float64).index_add_(0, paths[:, 0], weights)


def _mean_q(model: torch.nn.Module, n: int, beta: float, depth: int, reps: int) -> torch.Tensor:
    """The particle q [8, V] at the 8 prefixes, averaged over `reps` independent noise draws."""
    qs = [
        lookahead(
            model, PREFIX, POSITIONS, Particles(n, beta), depth,
            noise=particle_noise(1, 8, depth, n, seed=100 + rep), tree_tokens=8192,
        ).q_dense(V)[0]
        for rep in range(reps)
    ]  # fmt: skip
    return torch.stack(qs).mean(0)


def test_beta_one_is_p_in_expectation(tiny_vocab: torch.nn.Module) -> None:
    """At beta = 1 every weight is 1, so each particle's first token is an independent draw
    from p and the mean q over n·reps draws is a binomial proportion: its standard deviation
    is sqrt(p(1-p)/(n·reps)) <= 0.5/sqrt(n·reps) = 0.011 for 512·4 draws. The tolerance,
    5 of those, is exceeded by chance with probability < 6e-7 per coordinate (< 3e-5 over
    the 8 × 5 coordinates); the seed is fixed, so the test is deterministic. At beta = 3 the
    same estimate is well outside it (the test would notice a lookahead that did nothing)."""
    n, reps, depth = 512, 4, 2
    tol = 5 * 0.5 / math.sqrt(n * reps)
    with torch.no_grad():
        p = torch.stack(
            [tiny_vocab(PREFIX[:, : t + 1]).logits[0, -1].double().softmax(-1) for t in range(8)]
        )
    assert (_mean_q(tiny_vocab, n, 1.0, depth, reps) - p).abs().max() < tol
    assert (_mean_q(tiny_vocab, n, 3.0, depth, reps) - p).abs().max() > 2 * tol


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_particles_match_exhaustive_enumeration(tiny_vocab: torch.nn.Module, beta: float) -> None:
    """For beta != 1 SMC is consistent, not unbiased (bias O(1/n), spread O(1/sqrt(n)));
    with 1024 particles averaged over 2 draws the largest error over the 8 × 5 coordinates
    was 0.02-0.03 at seeds tried while writing this, so 0.05 leaves room for other seeds
    but not for a wrong weight (beta = 3 against beta = 2.5's exact q fails it)."""
    n, depth = 1024, 3
    got = _mean_q(tiny_vocab, n, beta, depth, reps=2)
    for t in range(8):
        want = exact_q(tiny_vocab, PREFIX[0, : t + 1].tolist(), depth, beta)
        assert (got[t] - want).abs().max() < 0.05, (t, got[t], want)
    if beta == 3.0:
        off = [
            (got[t] - exact_q(tiny_vocab, PREFIX[0, : t + 1].tolist(), depth, 2.5)).abs().max()
            for t in range(8)
        ]
        assert max(off) > 0.05


def test_large_beta_is_the_best_path_distribution(tiny_vocab: torch.nn.Module) -> None:
    """At beta = 10 the exact q_beta puts most of its mass on the first token of the most
    likely path (an infinitely wide beam's answer), and the particles agree with exhaustive
    search: within 0.06 everywhere (errors seen: <= 0.044 at 1024 particles, 4 draws).

    The limit of the method shows too: resampling keeps only first tokens whose own
    probability^beta_d is not negligible, so the particles needed grow with beta; at
    beta = 30 even 1024 particles missed the best path at 2 of these 8 prefixes."""
    n, depth, beta = 1024, 3, 10.0
    got = _mean_q(tiny_vocab, n, beta, depth, reps=4)
    paths = list(itertools.product(range(V), repeat=depth))
    for t in range(8):
        prefix = PREFIX[0, : t + 1].tolist()
        want = exact_q(tiny_vocab, prefix, depth, beta)
        best_first = paths[exact_q_path_argmax(tiny_vocab, prefix, depth)][0]
        assert (got[t] - want).abs().max() < 0.06, (t, got[t], want)
        assert int(want.argmax()) == best_first == int(got[t].argmax())
        assert want[best_first] > 0.6


@torch.no_grad()
def exact_q_path_argmax(model: torch.nn.Module, prefix: list[int], depth: int) -> int:
    paths = torch.tensor(list(itertools.product(range(V), repeat=depth)))
    seqs = torch.cat([torch.tensor(prefix).expand(len(paths), -1), paths], dim=1)
    logp = model(seqs).logits[:, len(prefix) - 1 : -1].double().log_softmax(-1)
    return int(logp.gather(-1, paths[..., None]).squeeze(-1).sum(-1).argmax())


@pytest.mark.parametrize("tree_tokens", [4096, 37, 8])
def test_batched_beams_equal_amplify_beam_search(lm: LoadedModel, tree_tokens: int) -> None:
    """Three windows searched together (in one forward per depth, or cut into many) give
    the beams `evolve amplify`'s search finds from each prefix alone."""
    ids = torch.tensor(
        [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:12] for t in (
            "The quick brown fox jumps over the lazy dog again and again.",
            "I went to the store to buy some milk and bread for the cheese.",
            "A genetic algorithm selects the fittest individuals and recombines spans.",
        )]
    )  # fmt: skip
    positions = torch.arange(11)[None].expand(3, -1)
    x = ids[:, 1:12]
    ro = lookahead(lm.model, ids, positions, Beam(4), 3, want=x[..., None], tree_tokens=tree_tokens)
    look = Lookahead(lm)
    for r in range(3):
        for t in range(11):
            found = look.beam_search(ids[r, : t + 1].tolist(), 4, 3)
            assert torch.equal(found.tokens, ro.tokens[r, t])
            torch.testing.assert_close(found.logprobs, ro.path_logp[r, t], atol=1e-5, rtol=0)
            logp = look.extend(look.new_cache(), ids[r, : t + 1].tolist(), [t])[0]
            assert float(ro.want_logp[r, t, 0]) == pytest.approx(float(logp[x[r, t]]), abs=1e-5)
    if tree_tokens == 4096:
        assert ro.forward_calls == 3  # one for the windows, one per depth step after the first


def test_particles_do_not_depend_on_how_the_batch_is_cut(lm: LoadedModel) -> None:
    ids = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(9)[None].expand(3, -1)
    noise = particle_noise(3, 9, 3, 6, seed=5)
    whole = lookahead(lm.model, ids, positions, Particles(6, 2.0), 3, noise=noise)
    cut = lookahead(lm.model, ids, positions, Particles(6, 2.0), 3, noise=noise, tree_tokens=8)
    one = lookahead(lm.model, ids[1:2], positions[1:2], Particles(6, 2.0), 3, noise=noise[1:2])
    assert torch.equal(whole.tokens, cut.tokens) and torch.equal(whole.tokens[1:2], one.tokens)
    torch.testing.assert_close(whole.weight, cut.weight, atol=1e-6, rtol=0)
    assert whole.forward_calls == 3 and cut.forward_calls > 3
    other = lookahead(
        lm.model, ids, positions, Particles(6, 2.0), 3, noise=particle_noise(3, 9, 3, 6, 6)
    )
    assert not torch.equal(other.tokens, whole.tokens)
    assert torch.allclose(whole.weight.sum(-1), torch.ones(3, 9, dtype=torch.float64))
    assert derived_seed(1, 2) != derived_seed(2, 1) and derived_seed(1, 2) == derived_seed(1, 2)


def test_right_padded_rows_see_only_their_own_prefix(lm: LoadedModel) -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    positions = torch.tensor([[1, 4], [0, 2]])
    ro = lookahead(lm.model, ids, positions, Beam(3), 2)
    alone = lookahead(lm.model, ids[1:, :3], positions[1:], Beam(3), 2)
    assert torch.equal(ro.tokens[1], alone.tokens[0])
    torch.testing.assert_close(ro.path_logp[1], alone.path_logp[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "search,message",
    [
        (Particles(0, 1.0), "particles must be at least 1"),
        (Particles(4, 0.0), "beta must be a number greater than 0"),
        (Particles(4, -1.0), "beta must be"),
        (Particles(4, float("nan")), "beta must be"),
        (Beam(0), "beams must be at least 1"),
    ],
)
def test_bad_search_is_a_user_error(lm: LoadedModel, search: object, message: str) -> None:
    n = getattr(search, "n", 1) or 1
    with pytest.raises(UserError, match=message):
        lookahead(
            lm.model, PREFIX, POSITIONS, search, 2,  # type: ignore[arg-type]
            noise=particle_noise(1, 8, 2, n, 0),
        )  # fmt: skip


# -- the particle lookahead in `evolve amplify` and as a sampler -------------------------------


TEXT = (
    "The quick brown fox jumps over the lazy dog. Cheddar is yellow and tastes sharp when "
    "it is old.\n\nI went to the store to buy some milk and bread."
)


def test_amplify_particle_rows_use_the_engine(lm: LoadedModel) -> None:
    config = AmplifyConfig(
        lookahead="particle", particles=8, beta=2.0, depth=2, lambdas=(0.0, 0.1, 1.0), seed=3
    )
    docs = load_documents([TEXT])
    result = run_amplify(lm, docs, config)
    again = run_amplify(lm, docs, config)
    assert result.rows == again.rows  # seeded
    s = result.summary
    assert s["lookahead"] == "particle" and s["particles"] == 8 and s["beta"] == 2.0
    # Row by row: the engine on the same document with the same per-document noise.
    look = Lookahead(lm)
    ctx = [look.start_id, *lm.tokenizer(docs[0].text, add_special_tokens=False)["input_ids"]]
    rows0 = [r for r in result.rows if r["doc"] == 0]
    ts = [r["t"] for r in rows0]
    ro = lookahead(
        lm.model, torch.tensor([ctx]), torch.tensor([ts]), Particles(8, 2.0), 2,
        noise=particle_noise(1, len(ts), 2, 8, derived_seed(3, 0)), want=torch.tensor([[
            [ctx[t + 1]] for t in ts]]),
    )  # fmt: skip
    q_x = ro.q_at(torch.tensor([[[ctx[t + 1]] for t in ts]]))[0, :, 0]
    for j, row in enumerate(rows0):
        assert row["logp"] == pytest.approx(float(ro.want_logp[0, j, 0]), abs=1e-6)
        assert (row["logq"] is None) == (float(q_x[j]) == 0.0)
        if row["logq"] is not None:
            assert row["logq"] == pytest.approx(math.log(float(q_x[j])), abs=1e-6)
        assert row["log_arith"][0] == row["logp"]
    other = run_amplify(lm, docs, AmplifyConfig(**{**config.to_dict(), "lambdas": (0.0, 0.1, 1.0),
                                                  "seed": 4}))  # fmt: skip
    assert [r["logq"] for r in other.rows] != [r["logq"] for r in result.rows]


def test_particle_sampler_is_seeded_and_mixes_with_p(lm: LoadedModel) -> None:
    a = sample_particle(lm, "The quick brown", 6, particles=4, beta=2.0, depth=2, seed=1)
    b = sample_particle(lm, "The quick brown", 6, particles=4, beta=2.0, depth=2, seed=1)
    assert a.token_ids == b.token_ids and len(a.token_ids) > 0
    greedy = sample_particle(lm, "The quick brown", 6, 4, 2.0, 2, lam=0.0, temperature=0.0)
    ids = lm.tokenizer("The quick brown", add_special_tokens=False)["input_ids"]
    want = lm.model.generate(
        torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0
    )[0, len(ids) :].tolist()
    assert list(greedy.token_ids) == want[: len(greedy.token_ids)]
    with pytest.raises(UserError, match="beta"):
        sample_particle(lm, "x", 2, beta=0.0)
    with pytest.raises(UserError, match="particles"):
        sample_particle(lm, "x", 2, particles=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lookahead": "particle", "beta": 0.0}, "beta"),
        ({"lookahead": "particle", "particles": 0}, "particles"),
        ({"lookahead": "particle", "length_norm": True}, "length-norm"),
        ({"lookahead": "tree"}, "lookahead"),
    ],
)
def test_amplify_config_refuses_bad_particles(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        AmplifyConfig(**kwargs).validate()


def test_cli_amplify_with_particles(invoke, tiny_gpt2_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "e.db"
    args = [TEXT, "--causal", str(tiny_gpt2_dir), "--db", str(db), "--max-positions", "12"]
    args += ["--lookahead", "particle", "--particles", "4", "--beta", "2", "-D", "2"]
    result = invoke("amplify", *args, "--lambdas", "0,0.1,0.5", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["lookahead"] == "particle" and summary["positions"] == 12
    assert [row["lambda"] for row in summary["arith"]["by_lambda"]] == [0.0, 0.1, 0.5]
    table = invoke("amplify", *args, "--lambdas", "0,0.1")
    assert table.exit_code == 0 and "particles=4 beta=2 D=2" in table.stdout
    for extra, message in (
        (["--beta", "0"], "beta must be a number greater than 0"),
        (["--beta", "-2"], "beta must be"),
        (["--particles", "0"], "particles"),
    ):
        bad = invoke("amplify", *args, *extra)
        assert bad.exit_code == 2, bad.output
        assert message in bad.output and "Traceback" not in bad.output
        assert len(bad.output.strip().splitlines()) <= 3  # usage line, hint, one error line


def test_batched_documents_give_amplify_s_beams(lm: LoadedModel) -> None:
    """`--batched` packs many documents' positions into each forward (two documents here,
    cut into blocks of every size): the same beams and log-probabilities as one document at
    a time."""
    from evolve.experiments import amplify
    from evolve.experiments.lookahead import pack_documents

    docs = load_documents([TEXT])
    config = AmplifyConfig(beams=3, depth=2, lambdas=(0.0, 0.1, 1.0), max_positions=40)
    plain = run_amplify(lm, docs, config)
    batched = run_amplify(lm, docs, AmplifyConfig(**{**config.to_dict(), "batched": True}))
    assert len(plain.rows) == len(batched.rows) == 40
    for a, b in zip(plain.rows, batched.rows, strict=True):
        assert (a["doc"], a["t"], a["top_beam"]) == (b["doc"], b["t"], b["top_beam"])
        assert a["logp"] == pytest.approx(b["logp"], abs=1e-6)
        assert (a["logq"] is None) == (b["logq"] is None)
        if a["logq"] is not None:
            assert a["logq"] == pytest.approx(b["logq"], abs=1e-6)
    contexts, positions = amplify.plan_positions(lm, docs, config)
    for budget in (1, 7, 256):
        blocks = list(pack_documents(contexts, positions, budget))
        assert all(b.positions.numel() <= max(budget, 1) for b in blocks)
        got = [
            (d, t)
            for b in blocks
            for d, (lo, hi) in zip(b.docs, b.spans, strict=True)
            for t in positions[d][lo:hi]
        ]
        assert got == [(d, t) for d, ts in enumerate(positions) for t in ts]

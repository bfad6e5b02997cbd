"""The causal path before and after the shared key/value caches, side by side in one run.

(a) The README's readable run (``--proposer causal --fitness causal --init beam``, SmolLM2-135M,
    the cheese prompt) for ``--generations`` generations of ``--population``: first with the
    old path (`scoring.causal.CausalScorer` with ``prefix_cache=False``, the proposer with
    ``batched=False``: one round per span length, every candidate rescored, the prompt run
    again in every row), then with the new one as a run gets it by default (the prompt's
    key/value cache shared by scorer and proposer, the scored texts' caches reused up to the
    edit, all span lengths of a fill step in one batch, twin candidates rescored once,
    mutations that change the span), then the new one with ``--proposer-dtype bf16``
    (opt-in), then the default again with the same seed (``--repro-generations``).
(b) Scoring alone: a 200-token prompt and 32 continuations of 24 tokens (human text from the
    Python licence), old scorer vs new (best of ``--repeats``).

Prints seconds and forward token positions (rows x tokens of every model call, counted by a
hook on the model and on its bf16 copy) per path; checks that every text both paths scored
has the same score within 1e-5 (or within twice what the old path differs from itself when
only the batching changes, printed: float32 rounding by matrix shape), that the new path's
run repeats exactly with the same seed (a shorter repeat run, ``--repro-generations``), and
ends with ``speedup (a) X.XXx, (b) Y.YYx`` ((a): the default new path, generations 1.. only,
generation 0 being beam search plus one scoring call, printed apart; its beam search uses
the prompt cache in every run). The runs' fills differ (the new proposer draws and chooses
otherwise), so (a) compares the cost of the same run configuration, not of equal texts.

Usage: python bench/causal_speed.py [--generations 3] [--population 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

import evolve.ga.wiring as wiring
from evolve.api import run_ga
from evolve.ga.config import FitnessConfig, RunConfig
from evolve.ga.engine import Generation
from scoring.causal import CausalScorer, context_cache_of, prefix_cache_of
from scoring.models import LoadedModel, in_bf16, load_causal
from scoring.results import TokenScores

PROMPT = "Mozzarella is white\nSo you can see it at night\nCheddar is"
TOL = 1e-5


class Counter:
    """Forward calls and token positions (rows x tokens) of one model."""

    def __init__(self, lm: LoadedModel) -> None:
        self.calls = 0
        self.tokens = 0
        # the bf16 proposer's copy too, made now, before the hook (a copy made later would
        # carry a deep copy of this counter)
        for model in (lm.model, in_bf16(lm).model):
            model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.calls += 1
            self.tokens += int(ids.numel())

    def snapshot(self) -> tuple[int, int]:
        return self.calls, self.tokens


@dataclass
class RunResult:
    label: str
    gen_seconds: list[float] = field(default_factory=list)
    gen_tokens: list[int] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)  # per generation
    scores: dict[str, TokenScores] = field(default_factory=dict)  # causal score by text
    ids: dict[str, list[int]] = field(default_factory=dict)  # the token ids of each text
    best: list[float] = field(default_factory=list)  # best fitness per generation

    @property
    def evolve_seconds(self) -> float:
        return sum(self.gen_seconds[1:])

    @property
    def evolve_tokens(self) -> int:
        return sum(self.gen_tokens[1:])


@contextmanager
def path(lm: LoadedModel, new: bool) -> Iterator[None]:
    """The engine wired to the loaded ``lm`` and to the old or the new causal path."""
    saved = wiring.load_causal, wiring.CausalScorer, wiring.CausalProposer
    wiring.load_causal = lambda *a, **k: lm  # type: ignore[assignment]
    wiring.CausalScorer = partial(CausalScorer, prefix_cache=new)  # type: ignore[misc]
    wiring.CausalProposer = partial(saved[2], batched=new)  # type: ignore[misc]
    for model in (lm, in_bf16(lm)):  # each path pays for its own prompt and contexts
        prefix_cache_of(model).clear()
        context_cache_of(model).clear()
    try:
        yield
    finally:
        wiring.load_causal, wiring.CausalScorer, wiring.CausalProposer = saved


def run_once(lm: LoadedModel, counter: Counter, cfg: RunConfig, new: bool, label: str) -> RunResult:
    result = RunResult(label)
    mark = [time.perf_counter(), counter.tokens]

    def hook(gen: Generation) -> None:
        now = time.perf_counter()
        result.gen_seconds.append(now - mark[0])  # wall time between generations, recording too
        result.gen_tokens.append(counter.tokens - mark[1])
        mark[:] = [now, counter.tokens]
        result.texts.append(list(gen.texts))
        result.best.append(gen.best)
        for text, ind in zip(gen.texts, gen.population, strict=True):
            result.ids.setdefault(text, list(ind))
        for s in gen.new_scores:
            if s.scorer.startswith("causal/"):
                result.scores.setdefault(s.text, s.score)

    with path(lm, new):
        mark[:] = [time.perf_counter(), counter.tokens]
        run_ga(cfg, hooks=[hook])
    secs = " ".join(f"{s:.1f}" for s in result.gen_seconds)
    print(
        f"(a) {label:<10} gen 0 {result.gen_seconds[0]:6.1f} s {result.gen_tokens[0]:>8,} tok"
        f" | gens 1-{len(result.gen_seconds) - 1}: {result.evolve_seconds:6.1f} s"
        f" {result.evolve_tokens:>9,} tok  (per generation: {secs}; best fitness "
        f"{result.best[-1]:.3f})",
        flush=True,
    )
    return result


def max_diff(a: TokenScores, b: TokenScores) -> float:
    """The largest difference of one token's log-probability or of the total."""
    if a.n_tokens != b.n_tokens:
        return float("inf")
    per_token = max(
        (abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)), default=0
    )
    return max(per_token, abs(a.total - b.total))


def check_scores(label: str, pairs: list[tuple[TokenScores, TokenScores]], own: float) -> bool:
    """Within TOL, or within twice what the old path differs from itself (``own``)."""
    token = max(
        (
            abs(x - y)
            for a, b in pairs
            for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)
        ),
        default=0.0,
    )
    worst = max((max_diff(a, b) for a, b in pairs), default=0.0)
    ok = worst <= max(TOL, 2 * own)
    print(
        f"    {label}: {len(pairs)} texts, max |difference| per token {token:.2e}, "
        f"of a total {max((abs(a.total - b.total) for a, b in pairs), default=0.0):.2e} "
        f"({'ok' if ok else 'FAIL'})"
    )
    return ok


def own_variation(lm: LoadedModel, texts: list[str], prompt: str) -> float:
    """How far the old path's scores move when only the batching changes: the texts in one
    batch vs one text per pass (float32 matrix products round differently by shape)."""
    batched = CausalScorer(lm, prefix_cache=False).score(texts, prompt)
    alone = CausalScorer(lm, prefix_cache=False, tokens_per_batch=1).score(texts, prompt)
    worst = max((max_diff(a, b) for a, b in zip(batched, alone, strict=True)), default=0.0)
    print(f"    the old path against itself (one batch vs one text per pass): {worst:.2e}")
    return worst


def bench_a(lm: LoadedModel, counter: Counter, args: argparse.Namespace) -> tuple[float, bool]:
    cfg = RunConfig(
        prompt=PROMPT.replace("\\n", "\n"),
        population=args.population,
        generations=args.generations,
        proposer="causal",
        init="beam",
        seed=args.seed,
        fitness=replace(FitnessConfig(), objective="causal"),
    )
    bf16 = replace(cfg, mutation=replace(cfg.mutation, proposer_dtype="bf16"))
    old = run_once(lm, counter, cfg, new=False, label="old path")
    new = run_once(lm, counter, cfg, new=True, label="new path")
    new16 = run_once(lm, counter, bf16, new=True, label="new bf16")
    short = replace(cfg, generations=min(cfg.generations, args.repro_generations))
    again = run_once(lm, counter, short, new=True, label="new again")
    ok = True
    n = len(again.texts)
    same = again.texts == new.texts[:n] and all(
        again.scores[t].token_logprobs == new.scores[t].token_logprobs for t in again.scores
    )
    print(f"    same seed, same run (texts and scores of generations 0-{n - 1}): {same}")
    ok &= same
    common = sorted(set(old.scores) & set(new.scores))
    args.own = own_variation(lm, common[:8], cfg.prompt)
    ok &= check_scores(
        "texts both runs scored", [(old.scores[t], new.scores[t]) for t in common], args.own
    )
    # rescored from the very ids the run scored: a causal proposer may write a text in a
    # split that encoding the text again would not give (docs/search.md)
    legacy = CausalScorer(lm, prefix_cache=False)
    prompt_ids = lm.tokenizer(cfg.prompt, add_special_tokens=False)["input_ids"]
    texts = sorted(new.scores)
    rescored = legacy.score_ids([new.ids[t] for t in texts], prompt_ids) if texts else []
    ok &= check_scores(
        "every text of the new run, rescored by the old scorer",
        [(new.scores[t], r) for t, r in zip(texts, rescored, strict=True)],
        args.own,
    )
    print(
        f"    generation 0 (beam search, on the shared prompt cache in every run, + scoring): "
        f"old {old.gen_seconds[0]:.1f} s, new {new.gen_seconds[0]:.1f} s; forward tokens "
        f"gens 1..: old {old.evolve_tokens:,}, new {new.evolve_tokens:,}, "
        f"new bf16 {new16.evolve_tokens:,}"
    )
    print(
        f"    with --proposer-dtype bf16 (opt-in): old / new bf16 "
        f"{old.evolve_seconds / max(new16.evolve_seconds, 1e-9):.2f}x"
    )
    return old.evolve_seconds / max(new.evolve_seconds, 1e-9), ok


def bench_b(lm: LoadedModel, counter: Counter, args: argparse.Namespace) -> tuple[float, bool]:
    text = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text()
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt_ids = ids[:200]
    conts = [ids[200 + 24 * i : 224 + 24 * i] for i in range(32)]
    times: dict[bool, float] = {}
    tokens: dict[bool, int] = {}
    results: dict[bool, list[TokenScores]] = {}
    for _ in range(args.repeats):
        for new in (False, True):
            prefix_cache_of(lm).clear()  # the prefix is paid for in every repeat
            scorer = CausalScorer(lm, prefix_cache=new)  # empty score cache
            before = counter.tokens
            start = time.perf_counter()
            results[new] = scorer.score_ids(conts, prompt_ids)
            took = time.perf_counter() - start
            times[new] = min(times.get(new, float("inf")), took)
            tokens[new] = counter.tokens - before
    for new, label in ((False, "old scorer"), (True, "new scorer")):
        print(
            f"(b) {label:<10} {times[new]:6.2f} s {tokens[new]:>8,} tok "
            f"(200-token prompt, 32 x 24 tokens, best of {args.repeats})"
        )
    # rows of one length batch alike alone or together; padding changes the shapes
    longer = ids[1000:1032]
    company = CausalScorer(lm, prefix_cache=False).score_ids([*conts[:4], longer], prompt_ids)
    own = max(max_diff(a, b) for a, b in zip(results[False][:4], company, strict=False))
    print(f"    the old scorer against itself (4 texts alone vs with a longer one): {own:.2e}")
    pairs = list(zip(results[False], results[True], strict=True))
    ok = check_scores("the same 32 texts", pairs, own)
    return times[False] / max(times[True], 1e-9), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="(b): best of this many")
    parser.add_argument(
        "--repro-generations", type=int, default=1, help="(a): generations of the repeat run"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument("--causal", default="smollm2-135m")
    parser.add_argument("--parts", choices=("ab", "b"), default="ab", help="b: (b) alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_causal(args.causal)
    counter = Counter(lm)
    parts: list[Callable[[LoadedModel, Counter, argparse.Namespace], tuple[float, bool]]]
    parts = [bench_a, bench_b]
    if args.parts == "b":  # scoring alone, for a quick look
        speed_a, ok_a = float("nan"), True
    else:
        speed_a, ok_a = parts[0](lm, counter, args)
    speed_b, ok_b = parts[1](lm, counter, args)
    if not (ok_a and ok_b):
        print("CHECK FAILED: see above")
    print(f"speedup (a) {speed_a:.2f}x, (b) {speed_b:.2f}x")
    if not (ok_a and ok_b):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

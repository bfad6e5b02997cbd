"""Population search vs beam search, same model, same length: who finds likelier text?

    .venv/bin/python bench/search_vs_beam.py                  # 3 prompts, defaults below
    .venv/bin/python bench/search_vs_beam.py --threads 1      # on a machine shared with others
    .venv/bin/python bench/search_vs_beam.py --init beam --init sample --generations 20
    .venv/bin/python bench/search_vs_beam.py --mlm smollm2-mlm --init beam --init mlm

For each prompt, SmolLM2-135M (the packaged causal LM) decodes ``--tokens`` new tokens with
beam search of each width in ``--widths`` (``evolve.experiments.baselines``, exactly that many tokens, no
length penalty in play, best beam kept). Then the GA evolves continuations of exactly the same
length in the same model's tokens (``min_len = max_len = --tokens``, indels off) with the causal
proposer and fitness = total log p(continuation | prompt) under the same model, i.e. the very
objective beam search approximates. ``--init beam`` starts the GA from beam search with one
beam per member (all returned), ``--init sample`` from nucleus samples (p=0.9), so the second
shows what the search finds on its own. The GA loop is mu+lambda (the best of parents and
offspring survive), which never loses its best text.

``--mlm NAME`` asks the project's own question instead: the GA proposes with that masked LM
and maximises the text's total PLL under it (``--init mlm`` starts from the masked LM's own
fills), and every row is also scored by that PLL (``PLLScorer.score([text], prefix=prompt)``),
so beam search and the GA meet on the GA's objective too. With ``smollm2-mlm`` the lengths
are exact: it shares SmolLM2's tokenizer, so ``--tokens`` counts the same tokens for both.

Every row's text is rescored the same way, ``CausalScorer.score([text], prompt)`` (text
tokenised after the prompt, as `evolve compare` does); for the GA the fitness of its own ids
is printed beside it (they differ only where a proposer produced a non-canonical split). rep-2
and rep-3 are the share of repeated word bigrams/trigrams in the text (`scoring.metrics`).

Cost: ``calls`` counts forward calls of the causal model (a forward pre-hook; one per decoding
step for beam search; with ``--mlm`` the GA's masked-LM passes are not among them, so there
only seconds compare), ``positions`` the rows x tokens they ran (keys/values reused from a cache
are not counted again), ``s`` the wall-clock seconds. Every measured method starts with the
model's shared prompt cache (`scoring.causal.prefix_cache_of`) empty, so each pays for its own
prompt pass, as it would alone (without this, the first beam width paid for the prompt and the
later widths and the GA reused it). The GA's cost includes its own beam or sampling start and
every evaluation; the rescoring for the table is not counted anywhere.

The defaults (3 prompts, 12 tokens, population 8, 8 offspring, 12 generations, 6 candidates
per span) are small so that the whole run takes about 10 minutes on 2 CPU cores; bigger
populations and more generations search more. Timings on a machine shared with other jobs
swing widely; ``--threads 1`` avoids thread oversubscription there (the load average is
printed).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evolve.api import start_run
from evolve.experiments.baselines import BaselineConfig, generate_baselines
from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.store import LogStore
from scoring.causal import CausalScorer, prefix_cache_of
from scoring.metrics import rep_n
from scoring.models import DEFAULT_CAUSAL, LoadedModel, load_causal, load_mlm
from scoring.pll import PLLScorer

PROMPTS = [
    "Mozzarella is white\nSo you can see it at night\nCheddar is",
    "The old lighthouse keeper climbed the narrow stairs and",
    "My favourite thing about autumn is",
]


@dataclass
class Cost:
    calls: int = 0
    positions: int = 0
    seconds: float = 0.0


class Counter:
    """Forward calls and token positions of one model, via a forward pre-hook."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.calls = 0
        self.positions = 0
        lm.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += int(ids.numel()) if isinstance(ids, torch.Tensor) else 0

    @contextmanager
    def measure(self) -> Iterator[Cost]:
        """The cost of the block, which starts without a cached prompt (pays for its own)."""
        prefix_cache_of(self.lm).clear()
        cost = Cost()
        calls, positions, start = self.calls, self.positions, time.perf_counter()
        yield cost
        cost.calls = self.calls - calls
        cost.positions = self.positions - positions
        cost.seconds = time.perf_counter() - start


@dataclass
class Row:
    prompt: int
    method: str
    text: str
    logp: float  # log p(text | prompt), text tokenised after the prompt
    tokens: int
    own: float | None  # GA: fitness of its own ids
    cost: Cost
    pll: float | None = None  # with --mlm: total PLL of the text after the prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", action="append", help="prompt (repeatable; default: 3 built in)")
    ap.add_argument("--model", default=DEFAULT_CAUSAL)
    ap.add_argument("--tokens", type=int, default=12, help="continuation length (causal tokens)")
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--init", action="append", choices=["beam", "sample", "mlm"], help="GA starts")
    ap.add_argument(
        "--mlm", default="", help="GA: this masked LM proposes, fitness = its total PLL"
    )
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--candidates", type=int, default=6, help="causal proposer fills per span")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--max-span", type=int, default=3)
    ap.add_argument("--no-repeat-ngram", type=int, default=0, help="GA: the n-gram guard (0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [p.replace("\\n", "\n") for p in args.prompt] if args.prompt else PROMPTS
    inits = args.init or ["beam"]
    if "mlm" in inits and not args.mlm:
        ap.error("--init mlm needs --mlm")
    print(
        f"model {args.model}; {args.tokens} new tokens; beam widths {args.widths}; GA from "
        f"{'/'.join(inits)}: population {args.population}, offspring {args.offspring}, "
        f"{args.generations} generations, {args.candidates} candidates per span, "
        f"temperature {args.temperature}, top-k {args.top_k}, max span {args.max_span}, "
        f"no-repeat-ngram {args.no_repeat_ngram}, "
        f"seed {args.seed}; GA proposer {args.mlm or 'causal'}; "
        f"torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    lm = load_causal(args.model)
    counter = Counter(lm)
    judge = CausalScorer(lm)
    pll = PLLScorer(load_mlm(args.mlm)) if args.mlm else None

    def plls(text: str, prompt: str) -> float | None:
        return pll.score([text], prefix=prompt)[0].total if pll is not None else None

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LogStore(Path(tmp) / "bench.db")
        for k, prompt in enumerate(prompts, start=1):
            for width in args.widths:
                bcfg = BaselineConfig(
                    prompt=prompt,
                    methods=("beam",),
                    causal=args.model,
                    new_tokens=args.tokens,
                    num_beams=width,
                )
                with counter.measure() as cost:
                    text = generate_baselines(bcfg, store, lm=lm)[0].text
                res = judge.score([text], prompt)[0]
                rows.append(
                    Row(
                        k,
                        f"beam {width}",
                        text,
                        res.total,
                        res.n_tokens,
                        None,
                        cost,
                        plls(text, prompt),
                    )
                )
                print(_line(rows[-1]), flush=True)
            for init in inits:
                cfg = RunConfig(
                    prompt=prompt,
                    population=args.population,
                    generations=args.generations,
                    algorithm="mu_plus_lambda",
                    offspring=args.offspring,
                    cxpb=0.2,
                    mutpb=0.8,
                    init_len=args.tokens,
                    min_len=args.tokens,
                    max_len=args.tokens,
                    causal=args.model,
                    mlm=args.mlm or RunConfig.mlm,
                    proposer="mlm" if args.mlm else "causal",
                    init=init,
                    seed=args.seed,
                    mutation=MutationConfig(
                        max_span=args.max_span,
                        indel_prob=0.0,
                        temperature=args.temperature,
                        top_k=args.top_k,
                        candidates=args.candidates,
                        no_repeat_ngram=args.no_repeat_ngram,
                    ),
                    fitness=FitnessConfig(
                        objective="pll" if args.mlm else "causal", normalise="total"
                    ),
                )
                with counter.measure() as cost:
                    summary = start_run(cfg, store)
                best = summary.best[0]
                res = judge.score([best["text"]], prompt)[0]
                rows.append(
                    Row(
                        k,
                        f"GA from {init}",
                        best["text"],
                        res.total,
                        best["n_tokens"],
                        best["fitness"],
                        cost,
                        plls(best["text"], prompt),
                    )
                )
                print(_line(rows[-1]), flush=True)
    print()
    for k, prompt in enumerate(prompts, start=1):
        print(f"prompt {k}: {prompt!r}")
    print()
    print(_table(rows))
    print()
    for k in range(1, len(prompts) + 1):
        mine = [r for r in rows if r.prompt == k]
        beams = [r for r in mine if r.method.startswith("beam")]
        top = max(beams, key=lambda r: r.logp)
        for r in mine:
            if not r.method.startswith("GA"):
                continue
            # calls and positions count the causal LM only: with --mlm the GA's own passes
            # are the masked LM's, so only seconds compare
            cost = (
                f"at {r.cost.seconds / max(1e-9, top.cost.seconds):.0f}x its seconds"
                if r.pll is not None
                else f"at {r.cost.calls / max(1, top.cost.calls):.0f}x its forward calls, "
                f"{r.cost.positions / max(1, top.cost.positions):.0f}x its token positions "
                f"and {r.cost.seconds / max(1e-9, top.cost.seconds):.0f}x its seconds"
            )
            print(
                f"prompt {k}: {r.method} {r.logp - top.logp:+.3f} nats vs the best beam "
                f"({top.method}), {cost}"
            )
            if r.pll is not None:
                top_pll = max(beams, key=lambda b: b.pll or -math.inf)
                print(
                    f"prompt {k}: {r.method} {r.pll - (top_pll.pll or 0.0):+.3f} nats of "
                    f"PLL vs the beam the masked LM likes best ({top_pll.method})"
                )


def _line(r: Row) -> str:
    pll = f"  PLL {r.pll:8.3f}" if r.pll is not None else ""
    return (
        f"  prompt {r.prompt} {r.method:<14} log p {r.logp:8.3f}{pll}  {r.cost.calls} calls "
        f"{r.cost.seconds:.1f} s  {r.text!r}"
    )


def _table(rows: list[Row]) -> str:
    with_pll = any(r.pll is not None for r in rows)
    head = (
        "| prompt | method | log p (SmolLM2) | "
        + ("PLL (masked LM) | " if with_pll else "")
        + "GA fitness (own ids) | tokens | rep-2 | rep-3 | seconds | "
        + ("causal LM calls | causal LM positions" if with_pll else "model calls | token positions")
        + " | continuation |"
    )
    lines = [head, "|" + "---|" * (12 if with_pll else 11)]
    for r in rows:
        own = f"{r.own:.3f}" if r.own is not None else ""
        pll = (f"{r.pll:.3f} | " if r.pll is not None else " | ") if with_pll else ""
        text = r.text.replace("\n", "\\n").replace("|", "\\|")
        lines.append(
            f"| {r.prompt} | {r.method} | {r.logp:.3f} | {pll}{own} | {r.tokens} "
            f"| {rep_n(r.text, 2):.2f} | {rep_n(r.text, 3):.2f} | {r.cost.seconds:.1f} "
            f"| {r.cost.calls} | {r.cost.positions} | `{text}` |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

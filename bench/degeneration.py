"""Degeneration study: which fitness and which proposal guard keep evolved text from looping?

    .venv/bin/python bench/degeneration.py                   # the table of docs/degeneration.md
    .venv/bin/python bench/degeneration.py --prompts 1 -g 3  # a quick look
    .venv/bin/python bench/degeneration.py --configs causal-proposer+guard -p 8 -g 5
    .venv/bin/python bench/degeneration.py --mlm smollm2-mlm --configs pll pll+guard typical

For each prompt the GA evolves continuations with the offline presets (the masked LM ``--mlm``,
tiny-bert by default, proposes and scores PLL; smollm2-135m is the causal LM), population ``-p`` x ``-g`` generations, seed
0, once per configuration in `CONFIGS`. SmolLM2 decodes the baselines (greedy, beam search of
width 4, nucleus sampling p=0.9 with 5 seeds), ``--new-tokens`` tokens each. Every text is then
judged the same way, text after the prompt:

- ``rep-2``: share of repeated word bigrams in the text (`scoring.metrics.rep_n`);
- ``dist-2``: distinct word bigrams over all bigrams of the row's texts (the GA's final
  population, the 5 samples; for one text it is 1 - rep-2);
- ``clm/tok``: SmolLM2 log p(text | prompt) per token, and ``ppl`` = exp(-clm/tok); for
  baselines and reference also ``n-clm/tok``: the same after a round trip through tiny-bert's
  masked LM's tokenizer (for tiny-bert: lower case, no newlines), the form every evolved text
  has;
- ``pll/tok``: PLL per token under the masked LM; ``typ/tok``: its local typicality per token,
  -|surprisal - entropy| (`scoring.typical`; 0 = perfectly typical).

The goal the study reports against: a configuration whose best text has rep-2 no higher than
beam search's, with clm/tok within 1 nat of beam's (as written, and normalised).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from evolve.api import start_run
from evolve.experiments.baselines import BaselineConfig, generate_baselines
from evolve.experiments.compare import round_trip
from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.ga.representation import Representation
from evolve.store import LogStore
from scoring.causal import CausalScorer
from scoring.metrics import distinct_n, rep_n
from scoring.models import load_causal, load_mlm
from scoring.pll import PLLScorer
from scoring.typical import TypicalScorer

# (prompt, a human continuation or None). Two public-domain openings, which SmolLM2 may
# well have seen in training, and the project's cheese poem, which has no known original.
PROMPTS: list[tuple[str, str | None]] = [
    ("Mozzarella is white\nSo you can see it at night\nCheddar is", None),
    (
        "Call me Ishmael. Some years ago",
        " - never mind how long precisely - having little or no money in my purse, and "
        "nothing particular to interest me on shore, I thought I would sail about a little",
    ),
    (
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune,",
        " must be in want of a wife. However little known the feelings or views of such a "
        "man may be on his first entering a neighbourhood",
    ),
]

BASE_MUTATION = MutationConfig()  # the defaults: spans of 1-3, top-k 50, 20% indels
GUARD = replace(BASE_MUTATION, no_repeat_ngram=2)
# name -> (fitness, mutation, other RunConfig fields)
CONFIGS: dict[str, tuple[FitnessConfig, MutationConfig, dict[str, Any]]] = {
    "pll": (FitnessConfig(objective="pll"), BASE_MUTATION, {}),
    "causal": (FitnessConfig(objective="causal"), BASE_MUTATION, {}),
    "sum": (FitnessConfig(objective="sum"), BASE_MUTATION, {}),
    "typical": (FitnessConfig(objective="typical"), BASE_MUTATION, {}),
    "pll+guard": (FitnessConfig(objective="pll"), GUARD, {}),
    "sum+guard+rep": (FitnessConfig(objective="sum", rep_penalty=1.0), GUARD, {}),
    # SmolLM2 proposes (best of 4 sampled fills, in its own tokens) starting from samples of
    # itself, fitness causal, under the guard: ~12 min per prompt at 16 x 10 on 2 shared (est.)
    # cores, so not run by default; docs/degeneration.md ran it with -p 8 -g 5
    "causal-proposer+guard": (
        FitnessConfig(objective="causal"),
        replace(GUARD, candidates=4),
        {"proposer": "causal", "init": "sample"},
    ),
}


@dataclass
class Row:
    prompt: int
    method: str
    texts: list[str]  # the first is the one shown (the GA's best)
    seconds: float | None = None
    stats: dict[str, float | None] | None = None


class Judge:
    """Scores texts after a prompt: SmolLM2 log-prob, the masked LM's PLL and typicality."""

    def __init__(self, mlm: str) -> None:
        self.mlm = load_mlm(mlm)
        self.causal_lm = load_causal("smollm2-135m")
        self.clm = CausalScorer(self.causal_lm)
        self.pll = PLLScorer(self.mlm, entropy=True)
        self.typ = TypicalScorer(self.pll)

    def stats(self, prompt: str, texts: list[str], baseline: bool) -> dict[str, float | None]:
        first = texts[0]
        clm = self.clm.score([first], prompt)[0]
        pll = self.pll.score([first], prompt)[0]
        typ = self.typ.score([first], prompt)[0]
        out: dict[str, float | None] = {
            "rep2": rep_n(first, 2),
            "dist2": distinct_n(texts, 2),
            "clm_tok": clm.mean,
            "ppl": math.exp(-clm.mean),
            "pll_tok": pll.mean,
            "typ_tok": typ.mean,
            "norm_clm_tok": None,
        }
        norm = round_trip(Representation.build(self.mlm, prompt))(first)
        out["norm_clm_tok"] = self.clm.score([norm], prompt)[0].mean if baseline else clm.mean
        return out


def run_prompt(
    k: int, prompt: str, reference: str | None, args: argparse.Namespace, db: Path
) -> list[Row]:
    rows: list[Row] = []
    first_run = None
    with LogStore(db) as store:
        for name in args.configs:
            fitness, mutation, other = CONFIGS[name]
            cfg = RunConfig(
                prompt=prompt,
                population=args.population,
                generations=args.generations,
                init_len=12,
                min_len=4,
                max_len=24,
                mlm=args.mlm,
                causal="smollm2-135m",
                seed=0,
                mutation=mutation,
                fitness=fitness,
                **other,
            )
            started = time.perf_counter()
            run_id = start_run(cfg, store).run_id
            seconds = time.perf_counter() - started
            first_run = first_run or run_id
            best = store.best(run_id, 1)[0]["text"]
            last = store.last_generation(run_id)
            assert last is not None
            pop = [r["text"] for r in store.population(run_id, last["generation"])]
            rows.append(Row(k, f"GA {name}", [best, *pop], seconds))
            print(f"  prompt {k} {name}: {seconds:.0f} s  {best!r}", flush=True)
        started = time.perf_counter()
        made = generate_baselines(
            BaselineConfig(
                run_id=first_run,
                new_tokens=args.new_tokens,
                num_beams=4,
                samples=5,
            ),
            store,
        )
        seconds = time.perf_counter() - started
    for method in ("greedy", "beam", "sample"):
        rows.append(Row(k, method, [b.text for b in made if b.method == method], seconds))
    if reference is not None:
        rows.append(Row(k, "human", [reference]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many prompts")
    parser.add_argument(
        "--mlm", default="tiny-bert", help="masked LM preset/folder (proposes, PLL)"
    )
    parser.add_argument("-p", "--population", type=int, default=16)
    parser.add_argument("-g", "--generations", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=16, help="baseline length (tokens)")
    default = [name for name in CONFIGS if name != "causal-proposer+guard"]  # see its comment
    parser.add_argument("--configs", nargs="+", default=default, choices=list(CONFIGS))
    parser.add_argument("--only", type=int, default=None, help="run only this prompt (0-based)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"load average {os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}; "
        f"masked LM {args.mlm}"
    )
    started = time.perf_counter()
    judge = Judge(args.mlm)
    rows: list[Row] = []
    cols = ["rep2", "dist2", "clm_tok", "norm_clm_tok", "ppl", "pll_tok", "typ_tok"]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (prompt, reference) in enumerate(PROMPTS[: args.prompts]):
            if args.only is not None and k != args.only:
                continue
            new = run_prompt(k, prompt, reference, args, Path(tmp) / f"p{k}.db")
            for row in new:
                row.stats = judge.stats(prompt, row.texts, baseline=not row.method.startswith("GA"))
            rows += new
            print_table(new, cols)
            print_goal(new)
            if args.json:
                args.json.write_text(
                    json.dumps([r.__dict__ for r in rows], indent=1, ensure_ascii=False)
                )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def print_table(rows: list[Row], cols: list[str]) -> None:
    print("\n| prompt | method | " + " | ".join(cols) + " | s | text |")
    print("|" + "---|" * (len(cols) + 4))
    for row in rows:
        assert row.stats is not None
        cells = [f"{row.stats[c]:.2f}" if row.stats[c] is not None else "" for c in cols]
        secs = f"{row.seconds:.0f}" if row.seconds is not None else ""
        text = row.texts[0].replace("\n", "\\n").replace("|", "\\|")
        print(f"| {row.prompt} | {row.method} | " + " | ".join(cells) + f" | {secs} | {text} |")
    print(flush=True)


def print_goal(rows: list[Row]) -> None:
    """Per GA row: rep-2 no higher than beam's, clm/tok within 1 nat of beam's?"""
    beam = next(r for r in rows if r.method == "beam")
    assert beam.stats is not None
    b: dict[str, Any] = beam.stats
    for row in rows:
        if not row.method.startswith("GA"):
            continue
        assert row.stats is not None
        s: dict[str, Any] = row.stats
        gap, gap_norm = s["clm_tok"] - b["clm_tok"], s["clm_tok"] - b["norm_clm_tok"]
        ok_rep = s["rep2"] <= b["rep2"]
        print(
            f"prompt {row.prompt} {row.method}: rep-2 {s['rep2']:.2f} vs beam {b['rep2']:.2f}; "
            f"clm/tok - beam {gap:+.2f} (normalised beam {gap_norm:+.2f}); goal "
            f"{'met' if ok_rep and gap >= -1 else 'missed'} (normalised: "
            f"{'met' if ok_rep and gap_norm >= -1 else 'missed'})"
        )
    print(flush=True)


if __name__ == "__main__":
    main()

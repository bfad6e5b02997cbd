"""GA overhead: a generation's wall time over the PLL time of the texts it scores.

    .venv/bin/python bench/ga_overhead.py                 # prints "generation/PLL X.XX"
    .venv/bin/python bench/ga_overhead.py --profile 25    # and cProfile's top 25 (cumulative)

A run of the default loop (`simple`, PLL fitness, MLM proposer; population 32, continuations
of 16 tokens) on a random 6-layer BERT built from a config (hidden 256, 4 heads, the
packaged tiny-bert's tokenizer and vocabulary; speed depends on the shapes, not the
weights), recorded into a database file in a temporary folder, as a CLI run writes. For
generations 1..G it sums the wall time of each generation (variation with its span fills,
PLL of the new texts, selection, and the recorder's SQLite write) and the time spent inside
the PLL scorer, and prints their ratio.
1.00 would mean the GA costs nothing beside the fitness it must compute; everything above is
fills, operators, selection, caches and the write. It also prints the fills' share (time,
and model rows: one per filled position in l2r order, as PLL runs one per scored token) and
the rest's share.

Both sides run in this process with one torch thread, side by side in the same generations,
so the ratio holds on a busy machine better than either time alone.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from evolve.ga.config import FitnessConfig, MutationConfig, RunConfig
from evolve.ga.engine import Engine, Generation, Models
from evolve.ga.seeding import rng_scope
from evolve.store import LogStore
from evolve.store.recorder import Recorder
from scoring.models import LoadedModel, load_mlm
from scoring.pll import PLLScorer

PROMPT = "Mozzarella is white\nSo you can see it at night\nCheddar is"
LAYERS, HIDDEN, HEADS, INTERMEDIATE = 6, 256, 4, 1024


def random_bert() -> LoadedModel:
    """A 6-layer BERT MLM with random weights (seed 0) and tiny-bert's tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = load_mlm("tiny-bert").tokenizer
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return LoadedModel(
        name="random-6-layer-bert",
        kind="mlm",
        model=model.eval(),
        tokenizer=tokenizer,
        source="config",
    )


def config(population: int, generations: int, length: int) -> RunConfig:
    return RunConfig(
        prompt=PROMPT,
        population=population,
        generations=generations,
        init_len=length,
        min_len=max(1, length - 4),
        max_len=length + 4,
        seed=0,
        device="cpu",
        mutation=MutationConfig(max_span=3),
        fitness=FitnessConfig(objective="pll"),
    )


class Timed:
    """Seconds spent inside ``obj.method`` (the PLL of the new texts, or the span fills), and
    the model rows it asked for (`count` of its first argument)."""

    def __init__(self, obj: Any, method: str, count: Callable[[Any], int]) -> None:
        self.seconds = 0.0
        self.rows = 0
        inner = getattr(obj, method)

        def timed(first: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(first, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.rows += count(first)

        setattr(obj, method, timed)


def measure(cfg: RunConfig, lm: LoadedModel, profile: cProfile.Profile | None) -> dict[str, float]:
    """Sums over generations 1..G: generation seconds (with the SQLite write), seconds and
    model rows in the PLL scorer and in the proposer's fills."""
    engine = Engine(cfg, Models(mlm=lm, causal=None))
    pll = next(ch.scorer for ch in engine.evaluator.channels.values())
    assert isinstance(pll, PLLScorer)
    scoring = Timed(pll, "score_ids", lambda conts: sum(len(c) for c in conts))
    fills = Timed(engine.proposer, "fill", lambda reqs: sum(len(r.positions) for r in reqs))
    store = LogStore(Path(tempfile.mkdtemp()) / "runs.db")  # a file, as a CLI run writes
    recorder = Recorder.create(store, cfg, engine.fitness_label)
    write = [0.0]

    def record(gen: Generation) -> Sequence[int]:
        started = time.perf_counter()
        ids = recorder(gen)
        write[0] = time.perf_counter() - started
        return ids

    total = 0.0
    with rng_scope(cfg.seed):
        gens = engine.run(record)
        next(gens)  # generation 0: the initial fills are not a generation's overhead
        before = (scoring.seconds, scoring.rows, fills.seconds, fills.rows)
        if profile is not None:
            profile.enable()
        for gen in gens:
            total += gen.seconds + write[0]
        if profile is not None:
            profile.disable()
    return {
        "generation": total,
        "pll": scoring.seconds - before[0],
        "pll_rows": scoring.rows - before[1],
        "fill": fills.seconds - before[2],
        "fill_rows": fills.rows - before[3],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--length", type=int, default=16, help="continuation tokens")
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lm = random_bert()
    cfg = config(args.population, args.generations, args.length)
    profile = cProfile.Profile() if args.profile else None
    got = measure(cfg, lm, profile)
    print(
        f"torch {torch.__version__}, 1 thread, load {os.getloadavg()[0]:.1f}; "
        f"{LAYERS}-layer BERT hidden {HIDDEN}, population {args.population}, "
        f"{args.length}-token continuations, generations 1-{args.generations}: "
        f"generation {got['generation']:.2f} s, PLL {got['pll']:.2f} s, "
        f"fills {got['fill']:.2f} s"
    )
    # The fills' share is bounded below by their rows: an l2r fill runs the model once per
    # filled position, as PLL runs it once per scored token.
    print(
        f"fills/PLL {got['fill'] / got['pll']:.2f} (rows {got['fill_rows']:.0f}/"
        f"{got['pll_rows']:.0f} = {got['fill_rows'] / got['pll_rows']:.2f}), "
        f"rest/PLL {(got['generation'] - got['fill'] - got['pll']) / got['pll']:.2f}"
    )
    print(f"generation/PLL {got['generation'] / got['pll']:.2f}")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()

"""Cost of the beams `evolve amplify` needs, three ways, side by side in one run.

At each of N consecutive positions of a real text, beam search of width B and depth D runs
from the prefix. Compared:

- ours, grouped: one KV cache per document; positions in groups share one forward per depth
  step, beams appended as extra rows with a 4D mask (`evolve.experiments.amplify.iter_positions`);
- ours, one position per group (group=1): the same code without grouping;
- `generate()` per position: Hugging Face beam search from scratch at each position.

Prints seconds per position, the ratios, and whether every method found the same beams.
Usage: python bench/amplify_speed.py [--positions 16] [--beams 4] [--depth 3]
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import torch

from evolve.experiments.amplify import Lookahead, iter_positions
from scoring.models import load_causal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=16)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--causal", default="smollm2-135m")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    lm = load_causal(args.causal)
    # Human-written English that ships with every Python install.
    text = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text()[:3000]
    ctx = [Lookahead(lm).start_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    ts = list(range(200, 200 + args.positions))
    B, D = args.beams, args.depth

    def tree(group: int) -> dict[int, torch.Tensor]:
        return {t: bs.tokens for t, _, bs in iter_positions(lm, ctx, ts, B, D, group=group)}

    def generate_per_position() -> dict[int, torch.Tensor]:
        out = {}
        for t in ts:
            rows = lm.model.generate(
                torch.tensor([ctx[: t + 1]]),
                num_beams=B,
                num_return_sequences=B,
                max_new_tokens=D,
                min_new_tokens=D,
                do_sample=False,
                length_penalty=0.0,
                early_stopping=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
            out[t] = rows[:, t + 1 :]
        return out

    methods = {
        f"ours, grouped ({64 // B} positions)": lambda: tree(64 // B),
        "ours, one position per group": lambda: tree(1),
        "generate() per position": generate_per_position,
    }
    tree(64 // B)  # warm-up: the first forwards pay for allocation and kernel selection
    seconds: dict[str, float] = {}
    beams: dict[str, dict[int, torch.Tensor]] = {}
    for name, fn in methods.items():
        started = time.perf_counter()
        beams[name] = fn()
        seconds[name] = (time.perf_counter() - started) / len(ts)
    ref_name = next(iter(methods))
    print(
        f"{args.causal}, B={B} D={D}, {len(ts)} positions of LICENSE.txt, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'method':34s} {'s/position':>10s} {'vs grouped':>10s}  same beams")
    for name in methods:
        same = sum(
            sorted(map(tuple, beams[name][t].tolist()))
            == sorted(map(tuple, beams[ref_name][t].tolist()))
            for t in ts
        )
        print(
            f"{name:34s} {seconds[name]:10.3f} {seconds[name] / seconds[ref_name]:9.1f}x"
            f"  {same}/{len(ts)}"
        )


if __name__ == "__main__":
    main()

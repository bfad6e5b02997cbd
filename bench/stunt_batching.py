"""What a stunted training step costs, and what batching the lookahead buys, side by side.

One batch of W training windows of L tokens from a real text (the Python licence, which
ships with every Python install), on the causal LM of `evolve stunt`:

1. The lookahead at every position of the batch, three ways for beam search and two for
   particles, each timed in the same run on the same windows:
   - per window: `evolve amplify`'s engine, one KV cache per window, 16 positions per tree
     forward (`evolve.experiments.stunting.amplify_windows`, what `evolve stunt` used before
     issue 23);
   - batched, one window per call: the batched engine given one window at a time;
   - batched: all windows in one call (`lookahead_windows`): one forward for the windows'
     caches, then one per depth step for every rollout of every position.
   Prints seconds, the ratio to the batched way, and whether the rollouts are the same.
2. One full training step of each variant (lookahead, forward, backward, AdamW, and for the
   particle and adversarial variants the projection), with an estimate of its FLOPs
   (2·params per token fed forward, 6·params per token trained, one more backward for the
   projected variants) and the rate achieved, next to the rate of a plain forward and
   backward on the same batch: a step that costs close to its FLOPs runs near that rate.
3. With --dev-positions N: one dev evaluation (beam and particle `run_amplify`, as the
   monitor makes it) of N positions at stride 4 of the corpus's dev split (the licence
   when the corpus is not installed).

Usage: python bench/stunt_batching.py [--windows 8] [--seq-len 64] [--beams 4] [--depth 2]
       [--particles 8] [--repeats 2] [--dev-positions 0] [--causal smollm2-135m]
"""

from __future__ import annotations

import argparse
import copy
import sys
import sysconfig
import time
from pathlib import Path

import torch

from evolve.experiments import corpus
from evolve.experiments.amplifier import new_amplifier
from evolve.experiments.amplify import Document, load_documents
from evolve.experiments.lookahead import Beam, Particles, lookahead, particle_noise
from evolve.experiments.stunting import (
    VARIANTS,
    StuntConfig,
    amplify_windows,
    evaluate_dev,
    lookahead_windows,
    refit_amplifier,
    step_lookahead,
    stunt_loss,
    training_windows,
    zero_update_step,
)
from scoring.models import LoadedModel, load_causal


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def best_of(repeats: int, fn):  # type: ignore[no-untyped-def]
    """The fastest of `repeats` runs (the machine may be shared) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        out, seconds = timed(fn)
        times.append(seconds)
    return out, min(times)


def time_step(
    lm: LoadedModel, windows: torch.Tensor, config: StuntConfig, repeats: int
) -> tuple[float, float, float]:
    """Seconds of the lookahead and of the update of one training step of `config.variant`
    (fastest of `repeats`), and of an amplifier refit (adversarial; else 0)."""
    model = copy.deepcopy(lm.model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    amp = None
    refit = 0.0
    if config.variant == "adversarial":
        amp = new_amplifier(config.amplifier_spec(lm), 0)
        _, refit = timed(lambda: refit_amplifier(model, windows, amp, config, 1))

    def step() -> tuple[float, float]:
        found, t_look = timed(lambda: step_lookahead(model, windows, config, 1, amp))
        t0 = time.perf_counter()
        logits = model(input_ids=windows[:, :-1]).logits.float()
        if config.variant in ("particle", "adversarial"):
            zero_update_step(model, opt, logits, windows[:, 1:], found)
        else:
            loss, _ = stunt_loss(logits, windows[:, 1:], found, config.variant, 0.5, 10.0)
            opt.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
                opt.step()
        return t_look, time.perf_counter() - t0

    best = min((step() for _ in range(repeats)), key=sum)
    return best[0], best[1], refit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dev-positions", type=int, default=0)
    parser.add_argument("--causal", default="smollm2-135m")
    parser.add_argument("--skip-lookahead", action="store_true", help="Skip section 1.")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # shown as measured

    lm = load_causal(args.causal)
    licence = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    docs = load_documents(files=[licence], unwrap=True)
    windows = training_windows(lm, docs, args.seq_len)[: args.windows]
    n_win, width = windows.shape
    length = width - 1
    B, D, N = args.beams, args.depth, args.particles
    params = sum(p.numel() for p in lm.model.parameters())
    print(
        f"{args.causal} ({params / 1e6:.1f}M parameters), {n_win} windows x {length} "
        f"positions, B={B} D={D} particles={N}, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}"
    )

    if not args.skip_lookahead:
        compare_lookahead(lm, windows, B, D, N, args.repeats)
    step_costs(lm, windows, B, D, N, args.repeats, params)
    if args.dev_positions:
        dev_cost(lm, licence, B, D, N, args.dev_positions)


def compare_lookahead(
    lm: LoadedModel, windows: torch.Tensor, B: int, D: int, N: int, repeats: int
) -> None:
    n_win, width = windows.shape
    length = width - 1
    print("\n1. lookahead at every position of the batch")
    noise = particle_noise(n_win, length, D, N, seed=0)
    ways = {
        "beam, per window (amplify engine)": lambda: amplify_windows(lm, windows, B, D),
        "beam, batched engine, one window per call": lambda: [
            lookahead_windows(lm.model, windows[i : i + 1], Beam(B), D) for i in range(n_win)
        ],
        "beam, batched engine, all windows": lambda: lookahead_windows(
            lm.model, windows, Beam(B), D
        ),
        "particles, batched engine, one window per call": lambda: [
            lookahead_windows(
                lm.model, windows[i : i + 1], Particles(N, 2.0), D, noise=noise[i : i + 1]
            )
            for i in range(n_win)
        ],
        "particles, batched engine, all windows": lambda: lookahead_windows(
            lm.model, windows, Particles(N, 2.0), D, noise=noise
        ),
    }
    lookahead(lm.model, windows[:1, :8], torch.zeros(1, 1, dtype=torch.long), Beam(B), D)  # warm-up
    results, seconds = {}, {}
    for name, fn in ways.items():
        results[name], seconds[name] = best_of(repeats, fn)
    ref_beam = results["beam, batched engine, all windows"]
    ref_part = results["particles, batched engine, all windows"]

    def first_tokens(found):  # type: ignore[no-untyped-def]
        return torch.cat([f.first for f in found]) if isinstance(found, list) else found.first

    print(f"{'way':48s} {'seconds':>8s} {'vs all windows':>15s}  same rollouts")
    for name in ways:
        ref, ref_name = (ref_beam, "beam") if name.startswith("beam") else (ref_part, "part")
        base = seconds[
            f"{'beam' if ref_name == 'beam' else 'particles'}, batched engine, all windows"
        ]
        same = torch.equal(first_tokens(results[name]), ref.first)
        print(f"{name:48s} {seconds[name]:8.2f} {seconds[name] / base:14.2f}x  {same}")


def step_costs(
    lm: LoadedModel, windows: torch.Tensor, B: int, D: int, N: int, repeats: int, params: int
) -> None:
    n_win, width = windows.shape
    length = width - 1
    print("\n2. one training step per variant")
    tokens = n_win * length
    model = copy.deepcopy(lm.model).eval()

    def plain_step() -> None:
        logits = model(input_ids=windows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
        )
        loss.backward()
        model.zero_grad(set_to_none=True)

    _, plain = best_of(repeats, plain_step)
    plain_rate = 6 * params * tokens / plain / 1e9
    print(
        f"plain forward + backward of {tokens} tokens: {plain:.2f} s, "
        f"{plain_rate:.0f} GFLOP/s (estimated 6·params·tokens)"
    )
    print(
        f"{'variant':12s} {'lookahead s':>11s} {'update s':>9s} {'step s':>7s} "
        f"{'tokens fed':>10s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'vs plain':>8s}"
    )
    for variant in VARIANTS:
        config = StuntConfig(
            variant=variant,
            seq_len=length,
            batch_tokens=tokens,
            beams=B,
            depth=D,
            particles=N,
            amplifier_windows=n_win,
        )
        t_look, t_upd, refit = time_step(lm, windows, config, repeats)
        k = N if variant in ("particle", "adversarial") else B
        fed = tokens * (1 + k * (D - 1)) + (tokens if variant == "adversarial" else 0)
        backward = 3 if variant in ("particle", "adversarial") else 2
        flops = 2 * params * fed + 2 * params * tokens * (1 + backward)
        total = t_look + t_upd
        rate = flops / total / 1e9
        print(
            f"{variant:12s} {t_look:11.2f} {t_upd:9.2f} {total:7.2f} {fed:10d} "
            f"{flops / 1e9:7.0f} {rate:8.0f} {rate / plain_rate:7.2f}x"
        )
        if refit:
            print(
                f"{'':12s} amplifier refit on {n_win} windows: {refit:.2f} s "
                f"(every --retrain-every steps)"
            )


def dev_cost(lm: LoadedModel, licence: Path, B: int, D: int, N: int, positions: int) -> None:
    print(f"\n3. one dev evaluation of {positions} positions (beam and particle)")
    config = StuntConfig(dev_positions=positions, dev_stride=4, beams=B, depth=D, particles=N)
    try:  # the study's dev text when the corpus is installed
        dev = [Document(d.source, i, d.text) for i, d in enumerate(corpus.load_corpus("dev"))]
    except corpus.UserError:
        dev = load_documents(files=[licence], unwrap=True)
    found, seconds_eval = timed(lambda: evaluate_dev(lm, dev, config))
    print(
        f"{found['positions']} positions: {seconds_eval:.1f} s "
        f"({seconds_eval / found['positions'] * 1000:.1f} ms per position)"
    )


if __name__ == "__main__":
    main()

"""Held-out English, side by side: the decoder masked LM against the causal LM it was made
from, and against the built-in tiny BERT.

    .venv/bin/python bench/mlm_heldout.py                       # smollm2-mlm, 2000 positions
    .venv/bin/python bench/mlm_heldout.py --mlm runs/x/adapter  # any decoder-MLM folder
    .venv/bin/python bench/mlm_heldout.py --positions 500 --split dev

Texts: the corpus's test split (`evolve.experiments.corpus`: two whole fortune files nobody
trained on, and held-out entries of the other sources), picked by key hash, 12-96 tokens.

Per token (SmolLM2's tokens, the same positions for both): each token masked alone, the rest
visible (the masked LM), against the same token from its left context only (the causal LM),
both after the start token. Mean log-probability, top-1 accuracy, and the paired gain with
its standard error over positions. The issue's targets: gain >= 0.5 nats/token, top-1 >= 0.40.

Per word (tokenisers differ, so tokens do not compare): each model's log-probability of the
whole text divided by its whitespace-separated words: word-level PLL (``word_l2r``, Kauf &
Ivanova 2023: a word's later pieces masked with it) for the masked LMs, the chain rule for
the causal LM. tiny-bert is uncased, which makes its task easier.

Prefix attention: the same texts split after their first half of words into a prompt and a
continuation, PLL per continuation token under full attention (``smollm2-mlm``) and prefix
attention (``smollm2-mlm-prefix``), and the causal LM's log-probability of the continuation.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from evolve.experiments.mlm_eval import causal_scores, heldout_set, masked_scores
from scoring.causal import CausalScorer
from scoring.models import load_causal, load_mlm
from scoring.pll import PLLScorer


def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0] if xs else math.nan), math.nan
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlm", default="smollm2-mlm", help="decoder masked LM to measure")
    parser.add_argument(
        "--prefix-mlm",
        default="smollm2-mlm-prefix",
        help="the same model scoring with prefix attention ('' to skip)",
    )
    parser.add_argument("--causal", default="smollm2-135m", help="the causal LM it came from")
    parser.add_argument(
        "--small", default="tiny-bert", help="another masked LM, per word ('' to skip)"
    )
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--split", choices=("test", "dev"), default="test")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    began = time.perf_counter()
    mlm = load_mlm(args.mlm)
    causal = load_causal(args.causal)
    held = heldout_set(mlm.tokenizer, args.split, args.positions)
    texts = [mlm.tokenizer.decode(list(s[1:])) for s in held.seqs]
    print(f"{len(held.seqs)} held-out texts ({args.split} split), {held.positions} positions")

    model = mlm.model
    masked = masked_scores(model.body.decoder, model.lm_head, held, mlm.tokenizer.mask_token_id)
    left = causal_scores(causal.model, held)
    gains = [a - b for a, b in zip(masked.logprobs, left.logprobs, strict=True)]
    g, g_se = _mean_se(gains)
    print("\nper token (same positions; mean log-prob, top-1):")
    rows = [
        (f"{args.causal}, left context only", left),
        (f"{args.mlm}, masked, both sides", masked),
    ]
    print(f"  {'model':42s} {'log-prob':>9s} {'± se':>6s} {'top-1':>6s}")
    for name, sc in rows:
        m, se = _mean_se(sc.logprobs)
        print(f"  {name:42s} {m:9.3f} {se:6.3f} {sum(sc.top1) / len(sc.top1):6.3f}")
    print(
        f"  gain of the masked LM: {g:+.3f} ± {g_se:.3f} nats/token "
        f"(target +0.5); top-1 {sum(masked.top1) / len(masked.top1):.3f} (target 0.40)"
    )

    print("\nper whitespace word (log-prob of the text / its words):")
    words = sum(len(t.split()) for t in texts)
    per_word = [(f"{args.causal} (chain rule)", CausalScorer(causal).score(texts))]
    per_word.append((f"{args.mlm} (PLL word_l2r)", PLLScorer(mlm, variant="word_l2r").score(texts)))
    if args.small:
        small = load_mlm(args.small)
        per_word.append(
            (
                f"{args.small} (PLL word_l2r, uncased)",
                PLLScorer(small, variant="word_l2r").score(texts),
            )
        )
    for name, scores in per_word:
        print(f"  {name:42s} {sum(s.total for s in scores) / words:9.3f} nats/word")

    if args.prefix_mlm:
        print("\nprompt = first half of the words, PLL per continuation token:")
        pairs = []
        for t in texts:
            ws = t.split(" ")
            cut = max(1, len(ws) // 2)
            pairs.append((" ".join(ws[:cut]), " " + " ".join(ws[cut:])))
        for name in (args.mlm, args.prefix_mlm):
            lm = load_mlm(name)
            scorer = PLLScorer(lm)
            t0 = time.perf_counter()
            scores = [scorer.score([c], prefix=p)[0] for p, c in pairs]
            took = time.perf_counter() - t0
            n = sum(s.n_tokens for s in scores)
            print(
                f"  {name:42s} {sum(s.total for s in scores) / n:9.3f} nats/token  ({took:.0f} s)"
            )
        cs = CausalScorer(causal)
        scores = [cs.score([c], prefix=p)[0] for p, c in pairs]
        n = sum(s.n_tokens for s in scores)
        print(
            f"  {args.causal + ' (causal)':42s} {sum(s.total for s in scores) / n:9.3f} nats/token"
        )
    print(f"\n{time.perf_counter() - began:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()

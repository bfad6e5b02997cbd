"""PLL speed, side by side in one run: naive, minicons-style, ours (fp32) and ours (bf16).

    .venv/bin/python bench/pll_speed.py                    # DistilRoBERTa-base size, random
    .venv/bin/python bench/pll_speed.py --size bert-base   # BERT-base size, random
    .venv/bin/python bench/pll_speed.py --model NAME       # a real masked LM (preset/folder/hub)
    .venv/bin/python bench/pll_speed.py --presets          # the packaged models, GA-shaped texts

No strong masked LM installs offline, so by default the model is randomly initialised from a
config of a real model's size (speed depends on the shapes, not the weights). Random weights
give flat distributions, so the bf16 error shown here understates the error on a trained
model (measured there: up to ~0.5 nats per text). The tokenizer is the packaged tiny-bert's
uncased WordPiece (30522 ids), and each text is ~30 tokens.

Methods (same texts, same model, PLL "original", no prefix):
- naive: one unpadded forward with full-vocabulary logits per masked position.
- minicons-style: the algorithm of minicons' ``MaskedLMScorer`` (``prepare_text`` +
  ``compute_stats``): the texts of one call are padded to the longest, every masked copy of
  every text of the call goes into ONE forward with full ``[rows, L, vocab]`` logits, then the
  masked positions are picked and normalised with ``logsumexp``. Re-implemented here because
  minicons 0.3.x does not run on transformers 5 (``batch_encode_plus`` is gone).
- ours fp32 / bf16: ``scoring.pll.PLLScorer`` (packed ~4k-token batches, MLM head only at the
  masked position; bf16 = autocast).

``--presets`` instead times the packaged models on what a GA generation scores: the demo's
prompt and 12 continuations of 16 tokens, each model's scorer with an empty cache: PLL under
tiny-bert and smollm2-mlm (fp32 exact, bf16 autocast), smollm2-mlm-prefix (prefix attention:
the prompt computed once, see scoring.decoder_mlm) and the causal scorer of smollm2-135m
(log p of the continuation, one forward per text). Ratios are against smollm2-mlm fp32;
max|Δ| is against the same model's fp32 scores (prefix: against full attention, a different
model, so that column is the size of the model change, not an error).

Timed runs are interleaved round-robin so that load from other processes on a shared machine
hits every method alike, and the best round counts (the median is shown too); the load
average is printed. GFLOP/s counts the analytic matmul work each method actually performs
(padding included) and is compared with a square matmul of the same dtype measured in the
same rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scoring.models import LoadedModel, load_mlm
from scoring.pll import PLLScorer, naive_pll, special_template

TEXTS = [
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp "
    "that guided fishing boats safely past the rocks.",
    "After the storm had passed, the children ran outside to look for frogs in the puddles "
    "that covered the garden path behind the house.",
    "Scientists at the university discovered that the ancient seeds could still grow when "
    "they were planted in warm and damp soil.",
    "My grandmother always said that a good cup of tea and a quiet afternoon could fix "
    "almost any problem that life put in your way.",
    "The train was delayed by nearly two hours because a tree had fallen across the tracks "
    "during the night near the small village station.",
    "She opened the letter slowly, afraid of what it might say, and then laughed out loud "
    "when she read the first line about the cat.",
    "Farmers in the valley grow apples, pears and plums, and every autumn they sell the fruit "
    "at a busy market in the town square.",
    "The museum will close for repairs next month, so visitors who want to see the famous "
    "painting should plan their trip very soon.",
    "He forgot his umbrella at home again, and by the time he reached the office his shoes "
    "and coat were completely soaked with rain.",
    "Learning a new language takes patience, because at first every sentence feels slow and "
    "every conversation seems to move far too quickly.",
    "The chef tasted the soup, added a pinch of salt and some fresh herbs, and finally "
    "declared that it was ready to be served to the guests.",
    "On clear summer nights we would lie on the grass behind the barn and count the shooting "
    "stars until our parents called us back inside.",
]

SIZES = {  # name: (architecture, layers, hidden, heads, intermediate, vocab)
    "distilroberta": ("roberta", 6, 768, 12, 3072, 50265),
    "bert-base": ("bert", 12, 768, 12, 3072, 30522),
    "small": ("bert", 4, 256, 4, 1024, 30522),
}


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs to know about a model."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int

    def body_flops(self, rows: int, width: float) -> float:
        """Matmul FLOPs of the transformer body for ``rows`` sequences of ``width`` tokens."""
        h, i = self.hidden, self.intermediate
        per_token = 2 * (4 * h * h + 2 * h * i) + 4 * width * h  # projections, FFN, attention
        return float(self.layers * rows * width * per_token)

    def head_flops(self, positions: int) -> float:
        """Matmul FLOPs of the MLM head (transform + vocabulary projection) at ``positions``."""
        return float(positions * 2 * (self.hidden * self.hidden + self.hidden * self.vocab))


def model_shape(model: torch.nn.Module) -> Shape:
    cfg = model.config
    return Shape(
        layers=int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layers),
        hidden=int(getattr(cfg, "hidden_size", None) or cfg.dim),
        intermediate=int(getattr(cfg, "intermediate_size", None) or cfg.hidden_dim),
        vocab=int(cfg.vocab_size),
    )


def random_model(size: str) -> LoadedModel:
    """A randomly initialised masked LM of a real model's size with tiny-bert's tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    arch, layers, hidden, heads, inter, vocab = SIZES[size]
    tokenizer = load_mlm().tokenizer
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    if arch == "roberta":
        model = RobertaForMaskedLM(
            RobertaConfig(**common, max_position_embeddings=514, type_vocab_size=1)
        )
    else:
        model = BertForMaskedLM(BertConfig(**common, max_position_embeddings=512))
    return LoadedModel(
        name=f"random {size}-size {arch}",
        kind="mlm",
        model=model.eval(),
        tokenizer=tokenizer,
        source="config",
    )


def minicons_style_pll(
    lm: LoadedModel,
    continuations: Sequence[Sequence[int]],
    prefix_ids: Sequence[int] = (),
    batch_size: int = 8,
    flop_log: list[tuple[int, int]] | None = None,
) -> list[list[float]]:
    """Per-token PLL log-probs the way minicons' MaskedLMScorer computes them.

    For each call of ``batch_size`` texts: pad all texts to the longest (tokenizer pad id,
    attention mask), copy each padded row once per scored position with that position set to
    the mask id, concatenate the copies of all texts, run the whole model once (full logits
    at every position), pick the masked positions and normalise with ``logsumexp``. Texts are
    given as ids here (minicons tokenises ``cls + " " + text + " " + sep``, the same ids for
    WordPiece). ``flop_log`` receives (rows, width) per forward.
    """
    tok = lm.tokenizer
    head, tail = special_template(tok)
    mask_id, pad_id = int(tok.mask_token_id), int(tok.pad_token_id)
    prefix = [int(i) for i in prefix_ids]
    out: list[list[float]] = []
    for start in range(0, len(continuations), batch_size):
        chunk = [list(c) for c in continuations[start : start + batch_size]]
        seqs = [[*head, *prefix, *c, *tail] for c in chunk]
        width = max(len(s) for s in seqs)
        token_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        offset = len(head) + len(prefix)
        copies, masks, indices, targets, lengths = [], [], [], [], []
        for ids, att, cont in zip(token_ids, attention, chunk, strict=True):
            for j in range(len(cont)):
                masked = ids.clone()
                masked[offset + j] = mask_id
                copies.append(masked)
                masks.append(att.clone())
                indices.append(offset + j)
                targets.append(cont[j])
            lengths.append(len(cont))
        if not copies:
            out.extend([] for _ in chunk)
            continue
        batch_ids, batch_att = torch.stack(copies), torch.stack(masks)
        if flop_log is not None:
            flop_log.append((len(copies), width))
        with torch.no_grad():
            logits = lm.model(batch_ids, attention_mask=batch_att).logits.detach()
            logits = logits[torch.arange(len(copies)), indices]
        logprob = logits - logits.logsumexp(1).unsqueeze(1)
        scores = logprob[torch.arange(len(copies)), targets].double().split(lengths)
        out.extend(s.tolist() for s in scores)
    return out


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best square-matmul rate of this machine for ``dtype``, in GFLOP/s."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def timed_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, warm: Sequence[str] = ()
) -> dict[str, tuple[list[float], list[object]]]:
    """Per method: the wall time and the result of each round.

    ``repeats`` rounds run every method once, so a change in machine load (a shared CPU) hits
    all methods alike; the methods named in ``warm`` get one untimed run first.
    """
    for name in warm:
        fns[name]()
    out: dict[str, tuple[list[float], list[object]]] = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            result = fn()
            out[name][0].append(time.perf_counter() - t0)
            out[name][1].append(result)
    return out


PROMPT = "Mozzarella is white\nSo you can see it at night\nCheddar is"


def preset_comparison(repeats: int) -> None:
    """PLL speed of the packaged masked LMs and the causal scorer, GA-shaped (see above)."""
    from scoring.causal import CausalScorer
    from scoring.models import load_causal

    conts = [" " + " ".join(t.split()[:12]) for t in TEXTS]
    scorers: dict[str, object] = {}
    for name in ("tiny-bert", "smollm2-mlm", "smollm2-mlm-prefix"):
        lm = load_mlm(name)
        for dtype in ("fp32", "bf16"):
            scorers[f"{name} {dtype}"] = PLLScorer(lm, dtype=dtype)  # type: ignore[arg-type]
    scorers["smollm2-135m causal"] = CausalScorer(load_causal("smollm2-135m"))

    def timed(scorer: object) -> Callable[[], object]:
        def run() -> object:
            scorer.clear_cache()  # type: ignore[attr-defined]
            return scorer.score(conts, prefix=PROMPT)  # type: ignore[attr-defined]

        return run

    runs = timed_round_robin(
        {k: timed(v) for k, v in scorers.items()}, repeats, warm=tuple(scorers)
    )
    best = {k: min(v[0]) for k, v in runs.items()}
    ref = "smollm2-mlm fp32"
    totals = {k: [r.total for r in v[1][-1]] for k, v in runs.items()}  # type: ignore[attr-defined]
    n_tok = [r.n_tokens for r in runs[ref][1][-1]]  # type: ignore[attr-defined]
    print(
        f"prompt {PROMPT!r}; {len(conts)} continuations of {min(n_tok)}-{max(n_tok)} SmolLM2 tokens"
    )
    header = f"{'scorer':<22}{'texts/s':>9}{'vs ' + ref:>22}{'max|Δ| vs fp32':>16}"
    print(header)
    print("-" * len(header))
    for k in runs:
        base = k.rsplit(" ", 1)[0] + " fp32"
        if k.startswith("smollm2-mlm-prefix"):
            base = "smollm2-mlm fp32"
        diff = (
            max(abs(a - b) for a, b in zip(totals[k], totals[base], strict=True))
            if base in totals and base != k
            else 0.0
        )
        print(f"{k:<22}{len(conts) / best[k]:>9.2f}{best[ref] / best[k]:>21.2f}x{diff:>16.2e}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nbest of {repeats} interleaved rounds; load average at the end: {load}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", action="store_true", help="time the packaged models")
    parser.add_argument("--model", help="a real masked LM (preset, folder or hub id)")
    parser.add_argument("--size", choices=sorted(SIZES), default="distilroberta")
    parser.add_argument("--texts", type=int, default=12, help="how many texts (max 12)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--minicons-batch", type=int, default=8, help="texts per minicons call")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    args = parser.parse_args(argv)
    if args.presets:
        preset_comparison(args.repeats)
        return

    lm = load_mlm(args.model) if args.model else random_model(args.size)
    shape = model_shape(lm.model)
    texts = TEXTS[: max(1, min(args.texts, len(TEXTS)))]
    ids = [list(x) for x in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    n_special = sum(len(p) for p in special_template(lm.tokenizer))
    n_tok = [len(x) for x in ids]
    print(
        f"model: {lm.name} ({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}); "
        f"{len(ids)} texts of {min(n_tok)}-{max(n_tok)} tokens (+{n_special} special); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    scorers = {
        dtype: PLLScorer(lm, dtype=dtype, tokens_per_batch=args.tokens_per_batch)  # type: ignore[arg-type]
        for dtype in ("fp32", "bf16")
    }

    def ours(dtype: str) -> Callable[[], object]:
        def run() -> object:
            scorer = scorers[dtype]
            scorer.clear_cache()
            scorer.stats.reset()
            return scorer.score_ids(ids)

        return run

    log: list[tuple[int, int]] = []

    def minicons() -> object:
        log.clear()
        return minicons_style_pll(lm, ids, batch_size=args.minicons_batch, flop_log=log)

    # the matmul rates are measured in every round too, so they see the same machine load
    runs = timed_round_robin(
        {
            "naive": lambda: naive_pll(lm, ids),
            "minicons-style": minicons,
            "ours fp32": ours("fp32"),
            "ours bf16": ours("bf16"),
            "matmul fp32": lambda: matmul_gflops(torch.float32),
            "matmul bf16": lambda: matmul_gflops(torch.bfloat16),
        },
        args.repeats,
        warm=("ours fp32", "ours bf16", "matmul fp32", "matmul bf16"),
    )
    peak = {d: max(runs[f"matmul {d}"][1]) for d in ("fp32", "bf16")}  # type: ignore[type-var]
    print(
        f"square matmul 2048, best round: fp32 {peak['fp32']:.0f} GFLOP/s, "
        f"bf16 {peak['bf16']:.0f} GFLOP/s",
        flush=True,
    )

    ref_totals = [r.total for r in runs["naive"][1][-1]]  # type: ignore[attr-defined]
    flops: dict[str, float] = {
        "naive": sum(
            n * (shape.body_flops(1, n + n_special) + shape.head_flops(n + n_special))
            for n in n_tok
        ),
        "minicons-style": sum(shape.body_flops(r, w) + shape.head_flops(r * w) for r, w in log),
    }
    diffs: dict[str, float] = {
        "naive": 0.0,
        "minicons-style": max(
            abs(math.fsum(s) - t)
            for s, t in zip(runs["minicons-style"][1][-1], ref_totals, strict=True)  # type: ignore[call-overload]
        ),
    }
    for dtype, scorer in scorers.items():
        st = scorer.stats
        # body work of all padded rows (attention at the mean padded width) + gathered head
        width = st.forward_tokens / st.forward_rows
        flops[f"ours {dtype}"] = shape.body_flops(st.forward_rows, width) + shape.head_flops(
            st.forward_rows
        )
        results = runs[f"ours {dtype}"][1][-1]
        diffs[f"ours {dtype}"] = max(
            abs(r.total - t)
            for r, t in zip(results, ref_totals, strict=True)  # type: ignore[call-overload]
        )
        print(
            f"ours {dtype}: {st.forward_passes} passes, {st.forward_rows} rows, "
            f"{st.forward_tokens} padded tokens, head only at masked positions: "
            f"{scorer.gathers_head}",
            flush=True,
        )

    n = len(ids)
    best = {name: min(runs[name][0]) for name in flops}
    median = {name: statistics.median(runs[name][0]) for name in flops}
    print()
    header = (
        f"{'method':<16}{'texts/s':>9}{'(median)':>10}{'vs minicons':>13}{'vs naive':>10}"
        f"{'max|Δ| vs naive':>17}{'GFLOP/s':>9}{'% matmul':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in flops:
        secs = best[name]
        gf = flops[name] / secs / 1e9
        dtype = "bf16" if name.endswith("bf16") else "fp32"
        print(
            f"{name:<16}{n / secs:>9.2f}{n / median[name]:>10.2f}"
            f"{best['minicons-style'] / secs:>12.2f}x{best['naive'] / secs:>9.2f}x"
            f"{diffs[name]:>17.1e}{gf:>9.0f}{100 * gf / peak[dtype]:>9.0f}%"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nbest of {args.repeats} interleaved rounds (median in brackets); ratios and GFLOP/s "
        "from the best rounds; % matmul: against the\nbest square-matmul rate of the method's "
        f"dtype in the same rounds; max|Δ|: per-text total PLL, nats; load average at the end: "
        f"{load} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

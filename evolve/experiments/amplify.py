"""Beam-search-amplified causal LM: does lookahead help predict real text? (issue 5)

For each position t of a held-out text, the causal LM gives its next-token distribution p.
A beam search of width B and depth D from the same prefix finds B likely continuations; the
first tokens of those beams, each weighted by its beam's probability, form a second
distribution q ("what the lookahead thinks comes next"; tokens that start no beam get 0).
The amplified model mixes them, arithmetically a(λ) = (1-λ)·p + λ·q or geometrically
g(λ) ∝ p^(1-λ)·q_ε^λ, and we ask whether a or g gives the real next token more probability
than p does. q is zero off the beams, so the geometric mix uses q_ε = (1-ε)·q + ε·p: off-beam
tokens keep a floor of ε times their naive probability (g(1) = q_ε; ε is reported).

Speed comes from never recomputing a prefix and never copying its KV cache:

- A document is read once, left to right, into a single-row KV cache. Positions are taken in
  groups; the cache is extended by the document tokens up to the group's last prefix (one
  forward; with one position per group and stride 1 that is one token per position), and
  that forward's logits give p for every position of the group.
- Beam search for all positions of a group runs as "tree attention" on that same cache: the
  beams' tokens are appended to the cache as extra rows of one sequence, each with its true
  position id and a 4D attention mask that lets it see only its own prefix and its own
  ancestors. One forward per depth step serves B beams x all positions of the group, instead
  of one forward per position with the prefix cache copied B times. The beam rows are cropped
  off again before the document is extended.

EOS is treated as an ordinary token (beams always have D tokens): in running text the model
seldom ends the document, and it keeps the search exactly equal to brute-force enumeration.

`sample_amplified` draws text token by token from the amplified distribution (a baseline
method for `evolve baseline`). Domain code: no click here; progress goes to a callback.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from evolve.experiments.lookahead import (
    DEFAULT_TREE_TOKENS,
    Beam,
    Particles,
    Search,
    block_noise,
    check_particles,
    derived_seed,
    lookahead,
    pack_documents,
    particle_noise,
)
from scoring.causal import start_token_id
from scoring.errors import UserError
from scoring.models import DEFAULT_CAUSAL, LoadedModel
from scoring.template import text_ids

KIND = "amplify"  # experiment kind in the store
MIXES = ("arith", "geo")
DEFAULT_LAMBDAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
PREFILL_CHUNK = 512  # document tokens per extension forward (bounds attention memory)
LookaheadForm = Literal["beam", "particle"]
LOOKAHEADS: tuple[LookaheadForm, ...] = get_args(LookaheadForm)

Progress = Callable[[int, int], None]  # (positions done, positions in all)


@dataclass(frozen=True)
class AmplifyConfig:
    """Everything that defines an amplification experiment; stored with its results.

    Each field's `metadata["help"]` says what it sets and why its default is what it is;
    `evolve amplify` makes its options from them (cli/options.py).
    """

    beams: int = field(
        default=4,
        metadata={
            "help": "Beam width B: a handful of beams already covers most of p's mass on text."
        },
    )
    depth: int = field(
        default=3,
        metadata={
            "help": "Lookahead tokens D: D = 1 only renormalises p's top B tokens, so the "
            "default looks a few tokens further."
        },
    )
    lambdas: tuple[float, ...] = field(
        default=DEFAULT_LAMBDAS,
        metadata={
            "help": "Comma-separated mixing weights λ of q, each in [0, 1]: dense near 0, "
            "where a gain would show first."
        },
    )
    epsilon: float = field(
        default=0.01,
        metadata={
            "help": "Geometric mix: q_eps = (1-eps)*q + eps*p keeps off-beam tokens possible; "
            "a small eps keeps q_eps close to q."
        },
    )
    length_norm: bool = field(
        default=False,
        metadata={
            "help": "Weight beams by exp(logprob / `depth`) instead of exp(logprob); off, "
            "each beam counts with its probability under p."
        },
    )
    max_positions: int = field(
        default=200,
        metadata={
            "help": "Cap on scored tokens over all documents, taken in order (the cost grows "
            "with it)."
        },
    )
    stride: int = field(
        default=1,
        metadata={
            "help": "Score every S-th token of a document; more than 1 spreads "
            "`max_positions` over more text."
        },
    )
    start: int = field(
        default=1,
        metadata={
            "help": "First scored token of each document: token 0 sees only the start token."
        },
    )
    unwrap: bool = field(
        default=False,
        metadata={
            "help": "Join hard-wrapped lines within a paragraph (with spaces); off, the text "
            "is read as written."
        },
    )
    causal: str = field(
        default=DEFAULT_CAUSAL,
        metadata={
            "help": "Causal LM preset/folder/id; the default causal preset is small enough for "
            "a CPU."
        },
    )
    batch_tokens: int = field(
        default=64,
        metadata={
            "help": "Beam rows per forward pass (positions per group = this // B): speed and "
            "memory only."
        },
    )
    lookahead: LookaheadForm = field(
        default="beam",
        metadata={
            "help": "How q is made: beam (the B best paths of depth D, weighted by their "
            "probability) or particle (`particles` paths sampled from p and reweighted toward "
            "p(path)^`beta`, sequential Monte Carlo); beam, the form the earlier runs used."
        },
    )
    particles: int = field(
        default=16,
        metadata={
            "help": "Particle lookahead: paths per position; 16 keeps the cost near B = 4 "
            "beams at depth 3 while most first tokens with real mass are drawn."
        },
    )
    beta: float = field(
        default=2.0,
        metadata={
            "help": "Particle lookahead: target p(path)^beta. 1 gives p's own first-token "
            "distribution back, large values the best path's first token; 2 weighs each first "
            "token by how predictable its continuation is."
        },
    )
    batched: bool = field(
        default=False,
        metadata={
            "help": "Beam lookahead: search many documents' positions together in the batched "
            "engine (the same beams, log-probabilities within ~1e-6; much faster for many "
            "short documents); off, one document at a time as the runs recorded here were "
            "made. The particle lookahead is always batched."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Particle lookahead: seed of the particles' random numbers (one stream per "
            "document), so a run repeats exactly."
        },
    )
    device: str = "cpu"  # no option: `evolve amplify` scores on the CPU

    def validate(self) -> AmplifyConfig:
        """Check every field once; raise UserError with a one-line message on bad input."""
        if self.lookahead not in LOOKAHEADS:
            raise UserError(
                f"lookahead must be one of {', '.join(LOOKAHEADS)}, got {self.lookahead!r}"
            )
        check_particles(self.particles, self.beta)
        if self.lookahead == "particle" and self.length_norm:
            raise UserError("length-norm weights beams; the particle lookahead has none")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be 0 or more, got {self.seed}")
        if not isinstance(self.beams, int) or self.beams < 1:
            raise UserError(f"beams must be at least 1, got {self.beams}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise UserError(f"depth must be at least 1, got {self.depth}")
        if not self.lambdas:
            raise UserError("give at least one lambda")
        for lam in self.lambdas:
            if not (isinstance(lam, int | float) and math.isfinite(lam) and 0.0 <= lam <= 1.0):
                raise UserError(f"every lambda must lie in [0, 1], got {lam}")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise UserError(f"lambdas repeat a value: {list(self.lambdas)}")
        if not (math.isfinite(self.epsilon) and 0.0 < self.epsilon <= 1.0):
            raise UserError(f"epsilon must lie in (0, 1], got {self.epsilon}")
        for name in ("max_positions", "stride", "batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if not isinstance(self.start, int) or self.start < 0:
            raise UserError(f"start must be 0 or more, got {self.start}")
        if not self.causal or not self.causal.strip():
            raise UserError("empty causal model name")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"lambdas": list(self.lambdas)}


# -- documents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    source: str  # file path or "<text>"
    index: int  # paragraph number within the source
    text: str


def split_documents(text: str, source: str, unwrap: bool = False) -> list[Document]:
    """Blank lines separate documents; with `unwrap`, single line breaks become spaces."""
    paragraphs = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    docs: list[Document] = []
    for para in paragraphs:
        para = para.strip()
        if unwrap:
            para = re.sub(r"[ \t]*\n[ \t]*", " ", para)
        if para:
            docs.append(Document(source=source, index=len(docs), text=para))
    return docs


def load_documents(
    texts: Sequence[str] = (), files: Sequence[str | Path] = (), unwrap: bool = False
) -> list[Document]:
    """Documents from command-line texts and UTF-8 files; UserError if unreadable or empty."""
    docs: list[Document] = []
    for text in texts:
        docs.extend(split_documents(text, "<text>", unwrap))
    for name in files:
        path = Path(name)
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
        found = split_documents(content, str(path), unwrap)
        if not found:
            raise UserError(f"{path} holds no text")
        docs.extend(found)
    if not docs:
        raise UserError("no text to score: give TEXT or --file")
    return docs


# -- the search engine ------------------------------------------------------------------------


@dataclass(frozen=True)
class BeamSet:
    """Beams for one prefix: token ids [B, D] and their total log-probabilities [B]."""

    tokens: torch.Tensor  # long, best beam first
    logprobs: torch.Tensor  # float64, sum of the D token log-probabilities


class Lookahead:
    """A causal LM driven through one KV cache: extend a prefix, beam-search from it.

    Counts forward calls and tokens fed so that callers can report the cost.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.model = lm.model
        self.device = lm.device
        tok = lm.tokenizer
        # The same start token as CausalScorer, so both score a text's first token alike.
        self.start_id: int = start_token_id(tok)
        self.eos_id: int | None = tok.eos_token_id
        hf: Any = lm.model  # a transformers PreTrainedModel; its accessors are untyped upstream
        self.vocab_size = int(hf.get_output_embeddings().weight.shape[0])
        self.max_length = lm.max_length
        self.dtype = next(self.model.parameters()).dtype
        self.forward_calls = 0
        self.tokens_fed = 0

    def new_cache(self) -> Any:
        from transformers.cache_utils import DynamicCache

        return DynamicCache()

    @staticmethod
    def cache_length(cache: Any) -> int:
        return int(cache.get_seq_length())

    def _forward(self, ids: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:
        self.forward_calls += 1
        self.tokens_fed += ids.shape[-1]
        with torch.no_grad():
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **kwargs)
        return out.logits[0]

    def extend(self, cache: Any, ids: Sequence[int], keep: Sequence[int]) -> torch.Tensor:
        """Append `ids` to the cache; log-softmax (float64, [len(keep), V]) after ids[keep].

        `keep` indexes `ids`, in increasing order. Long extensions go in chunks.
        """
        out = []
        keep_t = torch.as_tensor(list(keep), dtype=torch.long)
        for lo in range(0, len(ids), PREFILL_CHUNK):
            hi = min(lo + PREFILL_CHUNK, len(ids))
            chunk = torch.as_tensor(list(ids[lo:hi]), dtype=torch.long, device=self.device)
            inside = keep_t[(keep_t >= lo) & (keep_t < hi)] - lo
            # logits_to_keep=1 when nothing is needed: the vocabulary projection is not free.
            to_keep: int | torch.Tensor = inside.to(self.device) if len(inside) else 1
            logits = self._forward(chunk[None], cache, logits_to_keep=to_keep)
            if len(inside):
                out.append(logits.double().log_softmax(-1).cpu())
        if not out:
            return torch.empty(0, self.vocab_size, dtype=torch.float64)
        return torch.cat(out)

    def search(
        self,
        cache: Any,
        prefix_lens: Sequence[int],
        first_logp: torch.Tensor,
        beams: int,
        depth: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search from several prefixes of the cached sequence at once.

        prefix_lens[i] is how many cached tokens prefix i spans (a prefix is always the start
        of the cache); first_logp[i] its next-token log-probabilities. Returns tokens
        [P, B, D] and beam log-probabilities [P, B] (float64), best first. The cache is left
        as it was found.
        """
        n_pos, vocab = first_logp.shape
        if beams > vocab:
            raise UserError(f"beams ({beams}) cannot exceed the vocabulary size ({vocab})")
        base = self.cache_length(cache)
        scores, first = first_logp.topk(beams, dim=-1)  # [P, B]
        tokens = first[:, :, None]
        fed = torch.empty(n_pos, beams, 0, dtype=torch.long)  # cache rows of the beams' tokens
        lens = torch.as_tensor(list(prefix_lens), dtype=torch.long)
        n_rows = n_pos * beams
        row_lens = lens.repeat_interleave(beams)
        prefix_mask = torch.arange(base)[None, :] < row_lens[:, None]  # [rows, base]
        try:
            for step in range(1, depth):
                now = self.cache_length(cache)
                new_rows = now + torch.arange(n_rows).view(n_pos, beams)
                mask = torch.zeros(n_rows, now + n_rows, dtype=torch.bool)
                mask[:, :base] = prefix_mask
                rows = torch.arange(n_rows)
                if step > 1:
                    mask[rows[:, None], fed.reshape(n_rows, step - 1)] = True
                mask[rows, new_rows.reshape(n_rows)] = True
                # The token at depth `step` sits at position prefix_len + step - 1.
                positions = (lens[:, None] + (step - 1)).expand(n_pos, beams).reshape(1, n_rows)
                additive = torch.zeros(mask.shape, dtype=self.dtype)
                additive.masked_fill_(~mask, torch.finfo(self.dtype).min)
                logits = self._forward(
                    tokens[:, :, -1].reshape(1, n_rows).to(self.device),
                    cache,
                    position_ids=positions.to(self.device),
                    attention_mask=additive[None, None].to(self.device),
                )
                logp = logits.double().log_softmax(-1).cpu().view(n_pos, beams, vocab)
                cand = (scores[:, :, None] + logp).view(n_pos, beams * vocab)
                scores, flat = cand.topk(beams, dim=-1)
                parent, token = flat // vocab, flat % vocab
                tokens = torch.cat(
                    [tokens.gather(1, parent[:, :, None].expand(-1, -1, step)), token[:, :, None]],
                    dim=-1,
                )
                fed = torch.cat(
                    [
                        fed.gather(1, parent[:, :, None].expand(-1, -1, step - 1)),
                        new_rows.gather(1, parent)[:, :, None],
                    ],
                    dim=-1,
                )
        finally:
            extra = self.cache_length(cache) - base
            if extra:
                cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
        return tokens, scores

    def beam_search(self, prefix_ids: Sequence[int], beams: int, depth: int) -> BeamSet:
        """Beam search from one prefix (computed from scratch; it must not be empty)."""
        if not prefix_ids:
            raise UserError("beam search needs a non-empty prefix")
        cache = self.new_cache()
        logp = self.extend(cache, prefix_ids, [len(prefix_ids) - 1])
        tokens, scores = self.search(cache, [len(prefix_ids)], logp, beams, depth)
        return BeamSet(tokens=tokens[0], logprobs=scores[0])


def amplified_distribution(
    tokens: torch.Tensor, logprobs: torch.Tensor, vocab_size: int, length_norm: bool = False
) -> torch.Tensor:
    """q over the vocabulary: each beam's weight (softmax of its log-prob) on its first token.

    With `length_norm` the weights use log-prob / length (a per-token geometric mean).
    Tokens that start no beam get exactly 0. Returns float64 [V] summing to 1.
    """
    scores = logprobs.double() / (tokens.shape[-1] if length_norm else 1)
    weights = torch.softmax(scores, dim=-1)
    q = torch.zeros(vocab_size, dtype=torch.float64)
    q.index_add_(0, tokens[:, 0].long(), weights)
    return q


def log_arith(logp_x: float, logq_x: float, lam: float) -> float:
    """log((1-λ)·p + λ·q) at one token, exactly log p at λ=0 (logq may be -inf)."""
    if lam == 0.0:
        return logp_x
    if lam == 1.0:
        return logq_x
    return float(np.logaddexp(math.log1p(-lam) + logp_x, math.log(lam) + logq_x))


def geo_logprobs(logp: torch.Tensor, logq_eps: torch.Tensor, lams: Sequence[float]) -> torch.Tensor:
    """log of normalised p^(1-λ)·q_eps^λ for each λ: float64 [len(lams), V]; λ=0 gives logp."""
    lam = torch.as_tensor(list(lams), dtype=torch.float64)[:, None]
    mixed = (1 - lam) * logp[None] + lam * logq_eps[None]
    out = mixed - torch.logsumexp(mixed, dim=-1, keepdim=True)
    zero = lam[:, 0] == 0
    out[zero] = logp  # exactly the naive distribution, not a renormalised copy of it
    return out


# -- the experiment ---------------------------------------------------------------------------


@dataclass
class AmplifyResult:
    """Per-position rows and the summary; `interrupted` if stopped early (partial rows)."""

    config: AmplifyConfig
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "finished"


def _plan(
    look: Lookahead, docs: Sequence[Document], config: AmplifyConfig
) -> tuple[list[list[int]], list[list[int]], int]:
    """Tokenise documents and pick the scored positions.

    Returns each document's context (start token + tokens), its positions t (the token
    scored is ctx[t + 1], its prefix ctx[: t + 1]) and how many documents were cut to fit.
    """
    tok = look.lm.tokenizer
    # The start token plus the prefix plus D lookahead tokens must fit the model.
    limit = look.max_length - config.depth
    contexts: list[list[int]] = []
    positions: list[list[int]] = []
    truncated = 0
    remaining = config.max_positions
    for doc in docs:
        ids = [look.start_id, *text_ids(tok, doc.text)]
        if len(ids) > limit:
            ids, truncated = ids[:limit], truncated + 1
        chosen = list(range(config.start, len(ids) - 1, config.stride))[:remaining]
        remaining -= len(chosen)
        contexts.append(ids)
        positions.append(chosen)
        if remaining == 0:
            break
    return contexts, positions, truncated


def plan_positions(
    lm: LoadedModel, docs: Sequence[Document], config: AmplifyConfig
) -> tuple[list[list[int]], list[list[int]]]:
    """The contexts (start token + tokens) and scored positions `run_amplify` would use, so
    that other measurements (a learned amplifier's gain) score exactly the same tokens."""
    contexts, positions, _ = _plan(Lookahead(lm), docs, config.validate())
    return contexts, positions


def _scan(
    look: Lookahead, ctx: Sequence[int], ts: Sequence[int], beams: int, depth: int, group: int
) -> Iterator[list[tuple[int, torch.Tensor, BeamSet]]]:
    """Walk one document left to right; per group of positions yield (t, log p, beams).

    One cache per document: each group extends it by the document tokens up to its last
    prefix (one forward, which also gives p for the whole group), then beam-searches all its
    positions together (D-1 forwards).
    """
    cache = look.new_cache()
    ts = sorted(ts)
    for g in range(0, len(ts), group):
        chunk = ts[g : g + group]
        have = look.cache_length(cache)
        logp = look.extend(cache, ctx[have : chunk[-1] + 1], [t - have for t in chunk])
        tokens, scores = look.search(cache, [t + 1 for t in chunk], logp, beams, depth)
        yield [
            (t, logp[i], BeamSet(tokens=tokens[i], logprobs=scores[i])) for i, t in enumerate(chunk)
        ]


def iter_positions(
    lm: LoadedModel, ctx: Sequence[int], ts: Sequence[int], beams: int, depth: int, group: int = 16
) -> Iterator[tuple[int, torch.Tensor, BeamSet]]:
    """(t, log p after ctx[: t + 1], beams) for increasing t, through the incremental cache.

    The path `run_amplify` takes, exposed for inspection and tests.
    """
    look = Lookahead(lm)
    for found in _scan(look, ctx, ts, beams, depth, group):
        yield from found


def run_amplify(
    lm: LoadedModel,
    docs: Sequence[Document],
    config: AmplifyConfig,
    progress: Progress | None = None,
) -> AmplifyResult:
    """Score the real next token under p, a(λ) and g(λ) at the planned positions.

    Ctrl-C stops early and returns what was scored so far with `interrupted=True`.
    """
    config.validate()
    if not docs:
        raise UserError("no text to score: give TEXT or --file")
    look = Lookahead(lm)
    if config.beams > look.vocab_size:
        raise UserError(f"beams ({config.beams}) exceed the vocabulary size ({look.vocab_size})")
    contexts, positions, truncated = _plan(look, docs, config)
    total = sum(len(ts) for ts in positions)
    if total == 0:
        raise UserError(
            f"no positions to score: every document is shorter than start+2 "
            f"({config.start + 2}) tokens"
        )
    tok = lm.tokenizer
    particle = config.lookahead == "particle"
    k = config.particles if particle else config.beams
    group = max(1, config.batch_tokens // k)
    rows: list[dict[str, Any]] = []
    interrupted = False
    began = time.perf_counter()
    try:
        if particle or config.batched:
            scans: Iterator[tuple[int, Scored]] = _engine_scan(look, contexts, positions, config)
        else:
            scans = (
                (d, found)
                for d, (ctx, ts) in enumerate(zip(contexts, positions, strict=True))
                for found in _beam_scan(look, ctx, ts, config, group)
            )
        for d, found in scans:
            ctx = contexts[d]
            for t, logp, q, top in found:
                rows.append(_score_position(tok, docs[d], t, ctx[t + 1], logp, q, top, config))
            if progress is not None:
                progress(len(rows), total)
    except KeyboardInterrupt:
        interrupted = True
        if not rows:
            raise
    seconds = time.perf_counter() - began
    cost = {
        "seconds": seconds,
        "forward_calls": look.forward_calls,
        "tokens_fed": look.tokens_fed,
        "seconds_per_position": seconds / len(rows),
        "forward_calls_per_position": look.forward_calls / len(rows),
        "positions_per_group": group,
    }
    summary = summarise(rows, config, cost)
    summary["documents"] = len({(r["source"], r["doc"]) for r in rows})
    summary["sources"] = sorted({r["source"] for r in rows})
    summary["truncated_documents"] = truncated
    summary["model"] = lm.name
    return AmplifyResult(config=config, summary=summary, rows=rows, interrupted=interrupted)


# (t, log p [V], q [V], (best path's tokens, its log-probability)) for one group of positions
Scored = list[tuple[int, torch.Tensor, torch.Tensor, tuple[torch.Tensor, float]]]


def _beam_scan(
    look: Lookahead, ctx: Sequence[int], ts: Sequence[int], config: AmplifyConfig, group: int
) -> Iterator[Scored]:
    for found in _scan(look, ctx, ts, config.beams, config.depth, group):
        yield [
            (
                t,
                logp,
                amplified_distribution(
                    beams.tokens, beams.logprobs, logp.shape[-1], config.length_norm
                ),
                (beams.tokens[0], float(beams.logprobs[0])),
            )
            for t, logp, beams in found
        ]


ENGINE_BLOCK = 256  # positions per batched-engine call: bounds the [positions, V] log p


def _engine_scan(
    look: Lookahead,
    contexts: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    config: AmplifyConfig,
) -> Iterator[tuple[int, Scored]]:
    """(document, its scored positions) through the batched engine
    (`evolve.experiments.lookahead`), many documents' positions per forward.

    Particles: each document's random numbers come from a stream seeded by (seed, document
    number) and drawn at once, so a position's particles depend neither on how positions are
    grouped nor on the other documents.
    """
    particle = config.lookahead == "particle"
    n, depth = config.particles, config.depth
    search: Search = Particles(n, config.beta) if particle else Beam(config.beams)
    k = n if particle else config.beams

    def doc_noise(d: int) -> torch.Tensor:
        return particle_noise(1, len(positions[d]), depth, n, derived_seed(config.seed, d))

    for block in pack_documents(contexts, positions, ENGINE_BLOCK):
        ro = lookahead(
            look.model,
            block.ids,
            block.positions,
            search,
            depth,
            noise=block_noise(block, doc_noise, depth, n) if particle else None,
            full=True,
            tree_tokens=max(config.batch_tokens, k),
        )
        look.forward_calls += ro.forward_calls
        look.tokens_fed += ro.tokens_fed
        assert ro.full_logp is not None
        vocab = look.vocab_size
        for r, (d, (lo, hi)) in enumerate(zip(block.docs, block.spans, strict=True)):
            found: Scored = []
            for j, t in enumerate(positions[d][lo:hi]):
                if particle:
                    q = torch.zeros(vocab, dtype=torch.float64)
                    q.index_add_(0, ro.first[r, j], ro.weight[r, j])
                    best = int(ro.weight[r, j].argmax())
                else:
                    q = amplified_distribution(
                        ro.tokens[r, j], ro.path_logp[r, j], vocab, config.length_norm
                    )
                    best = 0
                top = (ro.tokens[r, j, best], float(ro.path_logp[r, j, best]))
                found.append((t, ro.full_logp[r, j], q, top))
            yield d, found


def _score_position(
    tok: Any,
    doc: Document,
    t: int,
    token_id: int,
    logp: torch.Tensor,
    q: torch.Tensor,
    top: tuple[torch.Tensor, float],
    config: AmplifyConfig,
) -> dict[str, Any]:
    """One row: the real token's log-probability under p, q, q_eps and every mix.

    `top` is the lookahead's best path (the first beam; the heaviest particle) and its
    log-probability.
    """
    lams = list(config.lambdas)
    logp_x = float(logp[token_id])
    q_x = float(q[token_id])
    logq_x = math.log(q_x) if q_x > 0 else -math.inf
    q_eps = (1 - config.epsilon) * q + config.epsilon * logp.exp()
    geo = geo_logprobs(logp, q_eps.log(), lams)[:, token_id].tolist()
    return {
        "source": doc.source,
        "doc": doc.index,
        "t": t,
        "token_id": token_id,
        "token": tok.decode([token_id]),
        "logp": logp_x,
        "logq": _finite(logq_x),  # None: the real token starts no beam (q = 0)
        "logq_eps": math.log(float(q_eps[token_id])),
        "in_beams": q_x > 0,
        "rank_p": int((logp > logp_x).sum()) + 1,
        "top1_p": int(logp.argmax()) == token_id,
        "top1_q": int(q.argmax()) == token_id,
        "log_arith": [_finite(log_arith(logp_x, logq_x, lam)) for lam in lams],
        "log_geo": geo,
        "top_beam": tok.decode(top[0].tolist()),
        "top_beam_logprob": top[1],
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no -inf; None means probability 0


def summarise(
    rows: Sequence[dict[str, Any]], config: AmplifyConfig, cost: dict[str, Any]
) -> dict[str, Any]:
    """Mean log-likelihood per λ for both mixes, gains over p, best λ, share of positions helped.

    `cv_gain` guards against picking λ on the data it is scored on: λ is chosen on the even
    positions and scored on the odd ones and vice versa (mean of the two gains).
    """
    lams = list(config.lambdas)
    n = len(rows)
    logp = np.array([r["logp"] for r in rows])
    naive = _mean(logp)
    per_mix: dict[str, Any] = {}
    for mix in MIXES:
        vals = np.array(
            [[-np.inf if v is None else v for v in r[f"log_{mix}"]] for r in rows]
        ).reshape(n, len(lams))
        means = np.array([_mean(vals[:, j]) for j in range(len(lams))])
        table = []
        for j, lam in enumerate(lams):
            table.append(
                {
                    "lambda": lam,
                    "mean_ll": _finite(float(means[j])),
                    "gain": _finite(float(means[j] - naive)),
                    "gain_se": _se(vals[:, j] - logp),
                    "helped": float((vals[:, j] > logp).mean()),
                    "zero_prob": int(np.isneginf(vals[:, j]).sum()),
                }
            )
        best = int(np.argmax(means))
        per_mix[mix] = {
            "by_lambda": table,
            "best_lambda": lams[best],
            "best_mean_ll": _finite(float(means[best])),
            "best_gain": _finite(float(means[best] - naive)),
            "best_helped": table[best]["helped"],
            "cv_gain": _cv_gain(vals, logp),
        }
    # d/dλ of the mean log a(λ) at λ=0 is mean(q/p) - 1 over the real tokens: if it is
    # positive some small λ helps. Under a calibrated p its expectation is 0 for any q.
    ratio = [math.exp(r["logq"] - r["logp"]) if r["logq"] is not None else 0.0 for r in rows]
    per_mix["arith"]["slope_at_0"] = _mean(np.array(ratio)) - 1.0
    per_mix["arith"]["slope_se"] = _se(np.array(ratio))
    return {
        "positions": n,
        "lookahead": config.lookahead,
        "beams": config.beams,
        **(
            {"particles": config.particles, "beta": config.beta}
            if config.lookahead == "particle"
            else {}
        ),
        "depth": config.depth,
        "epsilon": config.epsilon,
        "length_norm": config.length_norm,
        "naive_mean_ll": naive,
        "naive_total_ll": float(logp.sum()),
        "beam_coverage": float(np.mean([r["in_beams"] for r in rows])),
        "top1_p": float(np.mean([r["top1_p"] for r in rows])),
        "top1_q": float(np.mean([r["top1_q"] for r in rows])),
        **per_mix,
        "cost": cost,
    }


def _mean(values: np.ndarray) -> float:
    """Correctly rounded mean (fsum): the same numbers always give the same mean."""
    return math.fsum(values.tolist()) / len(values) if len(values) else math.nan


def _se(values: np.ndarray) -> float | None:
    """Standard error of the mean over positions; None if undefined (n < 2 or infinite)."""
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _cv_gain(vals: np.ndarray, logp: np.ndarray) -> float | None:
    """Two-fold (even/odd positions) gain of the λ picked on the other fold; None if n < 2."""
    if len(logp) < 2:
        return None
    gains = []
    for pick, test in ((0, 1), (1, 0)):
        j = int(np.argmax(vals[pick::2].mean(axis=0)))
        gains.append(float((vals[test::2, j] - logp[test::2]).mean()))
    return _finite(float(np.mean(gains)))


# -- sampling from the amplified model --------------------------------------------------------


@dataclass(frozen=True)
class AmplifiedSample:
    text: str  # the continuation only, special tokens dropped
    token_ids: tuple[int, ...]
    forward_calls: int
    seconds: float


def sample_amplified(
    lm: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    beams: int = 4,
    depth: int = 3,
    lam: float = 0.5,
    temperature: float = 1.0,
    seed: int = 0,
    mix: str = "arith",
    epsilon: float = 0.01,
    length_norm: bool = False,
) -> AmplifiedSample:
    """Sample a continuation of `prompt` token by token from the amplified distribution.

    Each step: p from the cached prefix, beam search (B, D) from it, q from the beams, the
    mix (arith: (1-λ)p + λq; geo: normalised p^(1-λ) q_eps^λ), then temperature (0 = argmax)
    and a draw from a torch generator seeded with `seed` (global RNGs untouched). Stops at
    EOS. The prompt is tokenised without special tokens; an empty prompt is conditioned on
    the start token `CausalScorer` uses (`scoring.causal.start_token_id`).
    """
    AmplifyConfig(beams=beams, depth=depth, lambdas=(lam,), epsilon=epsilon).validate()
    if mix not in MIXES:
        raise UserError(f"mix must be one of {', '.join(MIXES)}, got {mix!r}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature must be 0 or more, got {temperature}")
    look = Lookahead(lm)
    if beams > look.vocab_size:
        raise UserError(f"beams ({beams}) exceed the vocabulary size ({look.vocab_size})")
    ids = text_ids(lm.tokenizer, prompt) if prompt else []
    if not ids:
        ids = [look.start_id]
    max_new_tokens = min(max_new_tokens, max(0, look.max_length - depth - len(ids)))
    gen = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    cache = look.new_cache()
    logp = look.extend(cache, ids, [len(ids) - 1])[0]
    out: list[int] = []
    for _ in range(max_new_tokens):
        tokens, scores = look.search(cache, [look.cache_length(cache)], logp[None], beams, depth)
        q = amplified_distribution(tokens[0], scores[0], logp.shape[-1], length_norm)
        if mix == "arith":
            probs = (1 - lam) * logp.exp() + lam * q
            log_a = probs.log()
        else:
            q_eps = (1 - epsilon) * q + epsilon * logp.exp()
            log_a = geo_logprobs(logp, q_eps.log(), [lam])[0]
        if temperature == 0:
            nxt = int(log_a.argmax())
        else:
            weights = torch.softmax(log_a / temperature, dim=-1)
            nxt = int(torch.multinomial(weights, 1, generator=gen))
        if look.eos_id is not None and nxt == look.eos_id:
            break
        out.append(nxt)
        logp = look.extend(cache, [nxt], [0])[0]
    return AmplifiedSample(
        text=lm.tokenizer.decode(out, skip_special_tokens=True),
        token_ids=tuple(out),
        forward_calls=look.forward_calls,
        seconds=time.perf_counter() - began,
    )


# (context ids, step) -> log-probabilities [V] of the next token (float64)
NextLogprobs = Callable[[Sequence[int], int], torch.Tensor]


def sample_with(
    lm: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    next_logprobs: NextLogprobs,
    temperature: float = 1.0,
    seed: int = 0,
    reserve: int = 0,
) -> AmplifiedSample:
    """Sample a continuation token by token from `next_logprobs` (a lookahead distribution).

    Temperature 0 takes the argmax; otherwise a draw from a torch generator seeded with
    `seed` (global RNGs untouched). Stops at EOS. `reserve` tokens of the model's window are
    kept free for the lookahead's own depth. Each step recomputes the prefix: simple, and
    cheap next to the lookahead for the short continuations baselines are.
    """
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be 0 or more, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature must be 0 or more, got {temperature}")
    look = Lookahead(lm)
    ids = list(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    if not ids:
        ids = [look.start_id]
    max_new_tokens = min(max_new_tokens, max(0, look.max_length - reserve - len(ids)))
    gen = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    out: list[int] = []
    for step in range(max_new_tokens):
        log_a = next_logprobs([*ids, *out], step)
        if temperature == 0:
            nxt = int(log_a.argmax())
        else:
            weights = torch.softmax(log_a / temperature, dim=-1)
            nxt = int(torch.multinomial(weights, 1, generator=gen))
        if look.eos_id is not None and nxt == look.eos_id:
            break
        out.append(nxt)
    return AmplifiedSample(
        text=lm.tokenizer.decode(out, skip_special_tokens=True),
        token_ids=tuple(out),
        forward_calls=len(out) + 1,
        seconds=time.perf_counter() - began,
    )


def particle_next(
    lm: LoadedModel, particles: int, beta: float, depth: int, lam: float, seed: int
) -> NextLogprobs:
    """log of (1-λ)·p + λ·q_particle after a context: the particle-amplified model.

    Step s of a sample draws its particles from a stream seeded by (seed, s).
    """
    check_particles(particles, beta)
    if not (math.isfinite(lam) and 0 <= lam <= 1):
        raise UserError(f"lambda must lie in [0, 1], got {lam}")
    search = Particles(particles, beta)

    def next_logprobs(ids: Sequence[int], step: int) -> torch.Tensor:
        noise = particle_noise(1, 1, depth, particles, derived_seed(seed, step))
        ro = lookahead(
            lm.model,
            torch.tensor([list(ids)]),
            torch.tensor([[len(ids) - 1]]),
            search,
            depth,
            noise=noise,
            full=True,
            tree_tokens=DEFAULT_TREE_TOKENS,
        )
        assert ro.full_logp is not None
        logp = ro.full_logp[0, 0]
        q = ro.q_dense(logp.shape[-1])[0, 0]
        return ((1 - lam) * logp.exp() + lam * q).log()

    return next_logprobs


def sample_particle(
    lm: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    particles: int = 16,
    beta: float = 2.0,
    depth: int = 3,
    lam: float = 0.5,
    temperature: float = 1.0,
    seed: int = 0,
) -> AmplifiedSample:
    """Sample from the particle-amplified model (1-λ)p + λ q_particle (`particle_next`)."""
    if not isinstance(depth, int) or depth < 1:
        raise UserError(f"depth must be at least 1, got {depth}")
    nxt = particle_next(lm, particles, beta, depth, lam, seed)
    return sample_with(lm, prompt, max_new_tokens, nxt, temperature, seed, reserve=depth)

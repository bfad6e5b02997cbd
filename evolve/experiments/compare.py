"""Evolved texts against baselines, side by side: one row per method, scores from the store.

Evolution maximises pseudo-log-likelihood (PLL) under its masked LM, so a high PLL alone says
little: the comparison also asks an independent judge, the causal LM, how likely each
continuation is after the prompt, and puts model-free statistics (repetition, diversity,
length) beside both. The rows of a run:

- ``evolved best``: its fittest individual (the first of equals);
- ``evolved population``: every individual of its last generation (means over them);
- one row per baseline group: stored baselines of the run with the same method, model and
  parameters (the seeds of a sampler, the returned beams of a beam search);
- ``reference``: an optional human-written continuation.

Every model score is a row of the store's ``scores`` table, keyed by (text, prompt, scorer)
with scorer names ``pll/original/<mlm>``, ``pll/word_l2r/<mlm>`` and ``causal/<causal LM>``.
Scores already stored are read back (`evolve.store.ScoreBook`), among them every score the
run computed while evolving; only missing ones are computed (models load only then), so a
second comparison costs no model time and any text can later be judged by another model. The
model-score columns of the table are means over each row's texts and can be recomputed with
plain SQL (`COMPARE_SQL`, owned by the store: `evolve.store.experiments`); the word statistics
are cheap pure functions of the texts (`scoring.metrics`) and are recomputed each time.

A fair judge: evolved texts are written in the tokens of the run's proposer, and an uncased
MLM writes lower-case text without newlines, which the causal judge scores worse than the
cased text a baseline wrote (issue 14 saw -27.0 against -9.37 for the same words). So every
text is also judged after a round trip through the proposer's tokenizer (encode, then decode
after the prompt, exactly as evolved texts are made: `Representation.text_of`): the ``norm``
columns. Evolved texts are in that form already and are judged as they are;
`Comparison.normalisation` says
for the table's legend whether, and how, it changed the others. Texts are shown as written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from evolve.experiments.baselines import settings_label
from evolve.ga.representation import Representation
from evolve.store import LogStore, ScoreBook, ScorerFactory, TextScorer
from evolve.store.experiments import COMPARE_SQL as COMPARE_SQL  # re-exported here
from scoring import metrics
from scoring.devices import check_device
from scoring.errors import UserError
from scoring.names import PLL_VARIANTS, causal_scorer_name, pll_scorer_name


def default_scorer(name: str, device: str = "cpu") -> TextScorer:
    """The scorer a stored scorer name stands for, with its model loaded."""
    kind, _, rest = name.partition("/")
    if kind == "pll":
        from scoring.models import load_mlm
        from scoring.pll import PLLScorer

        variant, _, model = rest.partition("/")
        bf16 = model.endswith("/bf16")  # pll_scorer_name's suffix for bf16 scores
        model = model.removesuffix("/bf16")
        lm = load_mlm(model, device=device)
        return PLLScorer(lm, variant=variant, dtype="bf16" if bf16 else "fp32")  # type: ignore[arg-type]
    if kind == "causal":
        from scoring.causal import CausalScorer
        from scoring.models import load_causal

        return CausalScorer(load_causal(rest, device=device))
    raise UserError(f"unknown scorer {name!r}; expected pll/<variant>/<mlm> or causal/<model>")


@dataclass(frozen=True)
class Column:
    key: str  # field of CompareRow and of the JSON rows
    header: str  # terminal table header
    about: str  # what it is, for docs and --json


COLUMNS: tuple[Column, ...] = (
    Column("method", "method", "evolved best/population, greedy, beam, sample or reference"),
    Column("settings", "settings", "decoding parameters of a baseline group"),
    Column("n", "n", "texts in the row; every score below is a mean over them"),
    Column("pll_tok", "pll/tok", "PLL per MLM token, original variant (nats)"),
    Column("pll", "pll", "PLL total, original variant (nats)"),
    Column("pll_l2r_tok", "l2r/tok", "PLL per MLM token, word_l2r variant (nats)"),
    Column("pll_l2r", "l2r", "PLL total, word_l2r variant (nats)"),
    Column("causal_tok", "clm/tok", "causal LM log p(continuation | prompt) per token (nats)"),
    Column("causal", "clm", "causal LM log p(continuation | prompt), total (nats)"),
    Column("ppl", "ppl", "causal LM perplexity, exp(-clm/tok)"),
    Column(
        "norm_causal_tok",
        "n-clm/tok",
        "clm/tok of the text after a round trip through the proposer's tokenizer (the form "
        "evolved texts are written in: an uncased MLM lower-cases and drops newlines)",
    ),
    Column("norm_ppl", "n-ppl", "perplexity of the round-tripped text, exp(-n-clm/tok)"),
    Column("rep2", "rep-2", "share of repeated word bigrams within a text"),
    Column("rep3", "rep-3", "share of repeated word trigrams within a text"),
    Column("distinct1", "dist-1", "unique words / words across the row's texts"),
    Column("distinct2", "dist-2", "unique word bigrams / bigrams across the row's texts"),
    Column("self_bleu", "s-BLEU", "mean BLEU-4 of each text against the others (2+ texts)"),
    Column("words", "words", "length in words"),
    Column("mlm_tokens", "mlm tok", "length in MLM tokens"),
    Column("causal_tokens", "clm tok", "length in causal LM tokens"),
)


@dataclass(frozen=True)
class CompareRow:
    """One method's texts and the means of their scores (None where undefined)."""

    method: str
    settings: str
    params: dict[str, Any] | None  # a baseline group's stored parameters; None otherwise
    texts: tuple[str, ...]
    n: int
    pll_tok: float | None
    pll: float | None
    pll_l2r_tok: float | None
    pll_l2r: float | None
    causal_tok: float | None
    causal: float | None
    ppl: float | None
    norm_causal_tok: float | None
    norm_ppl: float | None
    rep2: float
    rep3: float
    distinct1: float
    distinct2: float
    self_bleu: float | None
    words: float
    mlm_tokens: float | None
    causal_tokens: float | None

    def cells(self) -> list[Any]:
        return [getattr(self, c.key) for c in COLUMNS]


@dataclass(frozen=True)
class Comparison:
    run_id: int
    prompt: str
    mlm: str
    causal: str
    reference: str | None
    rows: tuple[CompareRow, ...]
    scorers: tuple[str, ...]  # the scorer names of the model-score columns
    computed: dict[str, int] = field(default_factory=dict)  # texts newly scored, per scorer
    notes: tuple[str, ...] = ()
    normalisation: str = ""  # for the legend: what the round trip of the n- columns did
    normalised: dict[str, str] = field(default_factory=dict)  # baseline/reference text -> n-

    def headers(self) -> list[str]:
        return [c.header for c in COLUMNS]

    def table_rows(self) -> list[list[Any]]:
        return [row.cells() for row in self.rows]

    def sql_params(self) -> dict[str, Any]:
        """The named parameters of `COMPARE_SQL` that reproduce this comparison."""
        return {"run": self.run_id, "causal": self.causal, "reference": self.reference}

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "prompt": self.prompt,
            "mlm": self.mlm,
            "causal": self.causal,
            "reference": self.reference,
            "scorers": list(self.scorers),
            "columns": {c.key: c.about for c in COLUMNS},
            "rows": [
                {
                    **{c.key: getattr(r, c.key) for c in COLUMNS},
                    "params": r.params,
                    "texts": r.texts,
                }
                for r in self.rows
            ],
            "computed": self.computed,
            "notes": list(self.notes),
            "normalisation": self.normalisation,
            "normalised": self.normalised,
        }


def normalise_reference(prompt: str, reference: str) -> str:
    """A reference continuation as it follows the prompt: a space in front unless one is there.

    Users type ``yellow`` for the continuation of ``Cheddar is``; as a continuation it is
    `` yellow`` (and a causal LM's tokens differ for the two).
    """
    if not reference.strip():
        raise UserError("the reference continuation is empty")
    if reference[0].isspace() or not prompt or prompt[-1].isspace():
        return reference
    return " " + reference


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _per_token(score: dict[str, Any]) -> float | None:
    n = score.get("n_tokens")
    return score["total"] / n if n else None


@dataclass(frozen=True)
class _Group:
    method: str
    settings: str
    params: dict[str, Any] | None
    texts: tuple[str, ...]


def _groups(store: LogStore, run_id: int, reference: str | None) -> tuple[list[_Group], list[str]]:
    notes: list[str] = []
    best = store.best(run_id, 1)
    last = store.last_generation(run_id)
    if not best or last is None:
        raise UserError(f"run {run_id} has no scored generation yet; nothing to compare")
    population = store.population(run_id, last["generation"])
    groups = [
        _Group("evolved best", f"id {best[0]['id']}", None, (best[0]["text"],)),
        _Group(
            "evolved population",
            f"gen {last['generation']}",
            None,
            tuple(r["text"] for r in population),
        ),
    ]
    by_key: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
    for b in store.baselines(run_id=run_id):
        by_key.setdefault((b["method"], b["model"], json.dumps(b["params"])), []).append(b)
    for (method, _model, _), members in by_key.items():
        params = members[0]["params"]
        groups.append(
            _Group(method, settings_label(params), params, tuple(b["text"] for b in members))
        )
    if not by_key:
        notes.append(
            f"run {run_id} has no baselines yet: `evolve baseline --run {run_id}` adds greedy, "
            "beam search and sampling rows"
        )
    if reference is not None:
        groups.append(_Group("reference", "", None, (reference,)))
    return groups, notes


Normaliser = Callable[[str], str]


def round_trip(rep: Representation) -> Normaliser:
    """A continuation as the run's representation would write it: encoded into its tokens
    and decoded after the prompt (`Representation.text_of`)."""
    return lambda text: rep.text_of(rep.encode(text))


def run_normaliser(run: dict[str, Any], device: str = "cpu") -> Normaliser:
    """The round trip through the tokenizer of the run's proposer (its MLM unless the run's
    config says ``proposer: causal``)."""
    from scoring.models import load_model

    config = run.get("config") or {}
    causal = config.get("proposer") == "causal"
    name = (config.get("causal") or run["causal"]) if causal else run["mlm"]
    lm = load_model(name, "causal" if causal else "mlm", device=device)
    return round_trip(Representation.build(lm, run["prompt"]))


def _describe(changed: Sequence[tuple[str, str]], total: int, model: str) -> str:
    """The legend's sentence on what the round trip did to the non-evolved texts."""
    if not changed:
        return (
            f"n- columns: no baseline or reference text changes in a round trip through "
            f"{model}'s tokenizer, so they equal the as-written ones"
        )
    how = []
    if any(a != a.lower() and b == b.lower() for a, b in changed):
        how.append("lower-cased")
    if any("\n" in a and "\n" not in b for a, b in changed):
        how.append("newlines dropped")
    what = f" ({', '.join(how)})" if how else ""
    return (
        f"n- columns: every text judged after a round trip through {model}'s tokenizer, "
        f"the form evolved texts are written in; it changes {len(changed)} of {total} "
        f"baseline/reference texts{what}"
    )


def compare_run(
    store: LogStore,
    run_id: int,
    reference: str | None = None,
    causal: str | None = None,
    factory: ScorerFactory | None = None,
    device: str = "cpu",
    normaliser: Normaliser | None = None,
) -> Comparison:
    """Compare a run's evolved texts with its stored baselines (and a reference), see module doc.

    `causal` overrides the run's judge model; `factory` makes scorers from scorer names
    (default: `default_scorer` on `device`); `normaliser` is the round trip of the n-
    columns (default: `run_normaliser`).
    """
    check_device(device)  # before any scoring: a wrong --device is one line, not a traceback
    run = store.run(run_id)
    prompt: str = run["prompt"]
    judge = causal or run["causal"]
    if not judge:
        raise UserError(f"run {run_id} records no causal LM; give one with --causal")
    if reference is not None:
        reference = normalise_reference(prompt, reference)
    groups, notes = _groups(store, run_id, reference)
    book = ScoreBook(store, prompt, factory or (lambda name: default_scorer(name, device)))
    every = [t for g in groups for t in g.texts]
    names = (*(pll_scorer_name(v, run["mlm"]) for v in PLL_VARIANTS), causal_scorer_name(judge))
    others = [t for g in groups if not g.method.startswith("evolved") for t in g.texts]
    norm_of = normaliser or run_normaliser(run, device)
    norm = {t: t for t in every}  # evolved texts are in the proposer's form already
    norm.update({t: norm_of(t) for t in others})
    changed = [(t, norm[t]) for t in dict.fromkeys(others) if norm[t] != t]
    extra = [n for n in dict.fromkeys(norm.values()) if n not in norm]  # judged in one call
    scores = {
        name: book.get(name, [*every, *extra] if name == names[-1] else every) for name in names
    }
    original, l2r, clm = (scores[name] for name in names)
    rows = []
    for g in groups:
        texts = g.texts
        causal_tok = _mean([_per_token(clm[t]) for t in texts])
        norm_tok = _mean([_per_token(clm[norm[t]]) for t in texts])
        rows.append(
            CompareRow(
                method=g.method,
                settings=g.settings,
                params=g.params,
                texts=texts,
                n=len(texts),
                pll_tok=_mean([_per_token(original[t]) for t in texts]),
                pll=_mean([original[t]["total"] for t in texts]),
                pll_l2r_tok=_mean([_per_token(l2r[t]) for t in texts]),
                pll_l2r=_mean([l2r[t]["total"] for t in texts]),
                causal_tok=causal_tok,
                causal=_mean([clm[t]["total"] for t in texts]),
                ppl=math.exp(-causal_tok) if causal_tok is not None else None,
                norm_causal_tok=norm_tok,
                norm_ppl=math.exp(-norm_tok) if norm_tok is not None else None,
                rep2=math.fsum(metrics.rep_n(t, 2) for t in texts) / len(texts),
                rep3=math.fsum(metrics.rep_n(t, 3) for t in texts) / len(texts),
                distinct1=metrics.distinct_n(texts, 1),
                distinct2=metrics.distinct_n(texts, 2),
                self_bleu=metrics.self_bleu(texts),
                words=math.fsum(metrics.length_words(t) for t in texts) / len(texts),
                mlm_tokens=_mean([original[t]["n_tokens"] for t in texts]),
                causal_tokens=_mean([clm[t]["n_tokens"] for t in texts]),
            )
        )
    return Comparison(
        run_id=run_id,
        prompt=prompt,
        mlm=run["mlm"],
        causal=judge,
        reference=reference,
        rows=tuple(rows),
        scorers=names,
        computed=book.computed,
        notes=tuple(notes),
        normalisation=_describe(changed, len(set(others)), _proposer_model(run)),
        normalised={t: norm[t] for t in others},
    )


def _proposer_model(run: dict[str, Any]) -> str:
    config = run.get("config") or {}
    if config.get("proposer") == "causal":
        return str(config.get("causal") or run["causal"])
    return str(run["mlm"])

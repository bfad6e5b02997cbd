"""Model scores: the one record of every score of every text under every scorer.

A score is keyed by (text, prefix, scorer): the continuation, the context it was scored after
(a run's prompt; '' for none) and the scorer's name, e.g. ``pll/original/tiny-bert``,
``pll/original/tiny-bert/bf16`` or ``causal/smollm2-135m``. It is written once: a key already
stored keeps its first score (INSERT OR IGNORE), so a text scored by a run, by `evolve compare`
or by a later rescoring is never scored twice under the same scorer.

The engine writes a generation's scores inside that generation's transaction
(`LogStore.write_generation(..., scores=...)`), and links each scored text to the run in
`run_texts`; `scores_for_run` reads them back (what resume warms its caches from), and the read
APIs of individuals attach their scores from here. `ScoreBook` is the store-backed rescoring
piece: stored scores are read, only missing ones computed by a scorer made on demand, and stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlite_utils import Database

from evolve.store.core import (
    StoreCore,
    chunks,
    dumps,
    loads,
    now,
    prefix_id,
    put_texts,
    text_id,
)
from scoring.results import TokenScores


def insert_scores(
    db: Database,
    rows: Sequence[Mapping[str, Any]],
    run_id: int | None = None,
    generation: int | None = None,
) -> None:
    """Store score rows (inside the caller's transaction); an existing key keeps its score.

    Each row: text, prefix ('' or absent for none), scorer, total, n_tokens, per_token (list
    of floats, or None when not kept). With `run_id`, each text is also linked to the run in
    `run_texts` (first generation that scored it).
    """
    if not rows:
        return
    at = now()
    text_ids = put_texts(db, [r["text"] for r in rows])
    put_texts(db, sorted({r.get("prefix") or "" for r in rows} - {""}))
    db.table("scores").insert_all(
        (
            {
                "text_id": tid,
                "prefix_id": prefix_id(r.get("prefix") or ""),
                "scorer": r["scorer"],
                "total": r.get("total"),
                "n_tokens": r.get("n_tokens"),
                "per_token": (
                    dumps([float(x) for x in r["per_token"]])
                    if r.get("per_token") is not None
                    else None
                ),
                "created_at": at,
            }
            for tid, r in zip(text_ids, rows, strict=True)
        ),
        ignore=True,
    )
    if run_id is not None:
        db.table("run_texts").insert_all(
            (
                {"run_id": run_id, "text_id": tid, "generation": generation}
                for tid in dict.fromkeys(text_ids)
            ),
            ignore=True,
        )


def score_row(text: str, prefix: str, scorer: str, s: TokenScores) -> dict[str, Any]:
    """One score as the row `put_scores` / `write_generation(scores=...)` take."""
    return {
        "text": text,
        "prefix": prefix,
        "scorer": scorer,
        "total": float(s.total),
        "n_tokens": int(s.n_tokens),
        "per_token": list(s.token_logprobs),
    }


def to_token_scores(row: Mapping[str, Any]) -> TokenScores:
    """A stored score row (total, n_tokens, per_token) as TokenScores."""
    return TokenScores(
        total=float(row["total"]),
        token_logprobs=tuple(float(x) for x in row.get("per_token") or ()),
        n_tokens=int(row["n_tokens"]),
    )


def score_summary(total: float | None, n_tokens: int | None) -> dict[str, Any]:
    """What an individual's `scores` holds per scorer: total, n_tokens and mean per token
    (None for an empty text: JSON has no infinities)."""
    return {
        "total": total,
        "n_tokens": n_tokens,
        "mean": total / n_tokens if total is not None and n_tokens else None,
    }


def scores_of_individuals(db: Database, ids: Iterable[int]) -> dict[int, dict[str, dict[str, Any]]]:
    """{individual id: {scorer: score_summary}} under each individual's run prompt."""
    found: dict[int, dict[str, dict[str, Any]]] = {i: {} for i in ids}
    for chunk in chunks(list(found)):
        marks = ",".join("?" * len(chunk))
        for individual, scorer, total, n_tokens in db.conn.execute(
            "SELECT i.id, s.scorer, s.total, s.n_tokens FROM individuals i "
            "JOIN runs r ON r.id = i.run_id "
            "JOIN scores s ON s.text_id = i.text_id AND s.prefix_id = r.prompt_id "
            f"WHERE i.id IN ({marks}) ORDER BY i.id, s.scorer",
            chunk,
        ):
            found[individual][scorer] = score_summary(total, n_tokens)
    return found


class ScoresMixin(StoreCore):
    """The `scores` aggregate of `LogStore` (see module doc)."""

    def put_scores(self, rows: list[dict[str, Any]]) -> None:
        """Store scores of texts; a (text, prefix, scorer) already stored is kept as it is.

        Each row: text, prefix ('' for none), scorer, total, n_tokens, per_token (list).
        """
        with self._transaction():
            insert_scores(self.db, rows)

    def get_scores(self, texts: list[str], prefix: str, scorer: str) -> dict[str, dict[str, Any]]:
        """Stored scores of `texts` under (prefix, scorer), keyed by text; missing ones absent.

        Each: total, n_tokens, per_token (list, or None where the scorer's per-token parts
        were not kept) and created_at."""
        by_id = {text_id(t): t for t in texts}
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(by_id)):
            marks = ",".join("?" * len(chunk))
            for row in self._rows(
                f"SELECT text_id, total, n_tokens, per_token, created_at FROM scores "
                f"WHERE prefix_id = ? AND scorer = ? AND text_id IN ({marks})",
                [prefix_id(prefix), scorer, *chunk],
            ):
                found[by_id[row.pop("text_id")]] = {**row, "per_token": loads(row["per_token"])}
        return found

    def scores_for_run(self, run_id: int) -> dict[str, dict[str, dict[str, Any]]]:
        """{continuation text: {scorer: {total, n_tokens, per_token}}} of every text the run
        has: its individuals and every text scored with one of its generations (texts undone
        by Metropolis-Hastings, offspring not kept), under the run's prompt, every scorer."""
        self._require_run(run_id)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for text, scorer, total, n_tokens, per_token in self.db.conn.execute(
            """
            SELECT t.text, s.scorer, s.total, s.n_tokens, s.per_token
            FROM (
                SELECT text_id FROM individuals WHERE run_id = :run
                UNION SELECT text_id FROM run_texts WHERE run_id = :run
            ) x
            JOIN runs r ON r.id = :run
            JOIN scores s ON s.text_id = x.text_id AND s.prefix_id = r.prompt_id
            JOIN texts t ON t.id = x.text_id
            ORDER BY t.id, s.scorer
            """,
            {"run": run_id},
        ):
            out.setdefault(text, {})[scorer] = {
                "total": total,
                "n_tokens": n_tokens,
                "per_token": loads(per_token),
            }
        return out


# -- rescoring through the store --------------------------------------------------------------


class TextScorer(Protocol):
    """What rescoring needs of a scorer: `PLLScorer` and `CausalScorer` both fit."""

    def score(self, texts: Sequence[str], prefix: str = "") -> Sequence[TokenScores]: ...


ScorerFactory = Callable[[str], TextScorer]


class ScoreBook:
    """Scores of texts after one prefix: read from the store, computed and stored if missing.

    Scorers are made by `factory` (from a scorer name) only when a text lacks a stored score,
    so a book whose scores are all stored loads no model. `computed` counts the texts newly
    scored, per scorer.
    """

    def __init__(self, store: ScoresMixin, prefix: str, factory: ScorerFactory) -> None:
        self.store = store
        self.prefix = prefix
        self.factory = factory
        self.computed: dict[str, int] = {}
        self._scorers: dict[str, TextScorer] = {}

    def get(self, scorer: str, texts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{text: stored score row (total, n_tokens, per_token)} for every text given."""
        unique = list(dict.fromkeys(texts))
        found = self.store.get_scores(unique, self.prefix, scorer)
        missing = [t for t in unique if t not in found]
        self.computed[scorer] = self.computed.get(scorer, 0) + len(missing)
        if missing:
            if scorer not in self._scorers:
                self._scorers[scorer] = self.factory(scorer)
            results = self._scorers[scorer].score(missing, self.prefix)
            self.store.put_scores(
                [
                    score_row(text, self.prefix, scorer, r)
                    for text, r in zip(missing, results, strict=True)
                ]
            )
            found = self.store.get_scores(unique, self.prefix, scorer)
        return found

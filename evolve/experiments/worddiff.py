"""What an edit changed, from the texts alone: a word-level diff of a child against its
parents (no model loaded), shared by `evolve lineage` and the web pages (`evolve.web.highlight`).

The store records an edit's span in the child's continuation *tokens* of the run's model; a
reader who looks at many ancestors should not need that model's tokenizer to map tokens to
characters. Texts are compared at the word level instead (`difflib` on words and
punctuation marks), which is what a reader sees:

- one parent (a mutation, an MH rejection, a copy): the child's words that are not in the
  parent are marked as inserted, the parent's words that are gone as deleted;
- two parents (crossover, possibly followed by a mutation): each child word is attributed to
  the parent it matches (a diff against each parent); where a word matches both, the
  attribution keeps contiguous parts (few switches between parents), which is the shape one-
  and two-point crossover produce. Words in neither parent (seam repairs, a mutation after
  the crossover) are marked as inserted.

A word-level diff can differ from the token span at the edges (a refilled subword inside a
word marks the whole word) and marks nothing when a refill wrote back the same words.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# A word or a single punctuation mark, with the whitespace before it: joining the pieces gives
# back the text exactly, and the comparison ignores the whitespace.
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+$", re.UNICODE)

Kind = Literal["same", "insert", "delete", "parent0", "parent1"]
# A switch of source costs less than half an unexplained word, so a lone word of a parent
# between refilled words is still credited to that parent, and more than nothing, so a common
# word ("the") that both parents have stays with the part around it.
_SWITCH_COST = 0.3


@dataclass(frozen=True)
class Piece:
    """A piece of text (a word with its leading whitespace) and where it came from."""

    text: str
    kind: Kind


def words(text: str) -> list[str]:
    """The pieces of `text` (each word or punctuation mark with the whitespace before it)."""
    pieces = _PIECE.findall(text)
    assert "".join(pieces) == text, "word split must keep every character"
    return pieces


def _keys(pieces: Sequence[str]) -> list[str]:
    return [p.strip() for p in pieces]


def mutation_pieces(child: str, parent: str) -> list[Piece]:
    """The child's pieces marked against one parent: kept, inserted, or (parent's) deleted."""
    cw, pw = words(child), words(parent)
    out: list[Piece] = []
    matcher = difflib.SequenceMatcher(a=_keys(pw), b=_keys(cw), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.extend(Piece(w, "same") for w in cw[j1:j2])
            continue
        if tag in ("delete", "replace"):
            out.extend(Piece(w, "delete") for w in pw[i1:i2])
        if tag in ("insert", "replace"):
            out.extend(Piece(w, "insert") for w in cw[j1:j2])
    return out


def _matched(child: Sequence[str], parent: Sequence[str]) -> set[int]:
    """Indices of child pieces that the diff against `parent` matches."""
    matcher = difflib.SequenceMatcher(a=_keys(parent), b=_keys(child), autojunk=False)
    found: set[int] = set()
    for block in matcher.get_matching_blocks():
        found.update(range(block.b, block.b + block.size))
    return found


def crossover_pieces(child: str, parents: Sequence[str]) -> list[Piece]:
    """The child's pieces attributed to parent 0, parent 1, or neither (inserted).

    A small dynamic programme over the pieces picks, for each, a source that contains it
    (or 'insert' at cost 1), paying `_SWITCH_COST` each time the source changes.
    """
    cw = words(child)
    if not cw:
        return []
    choices: list[Kind] = ["parent0", "parent1", "insert"]
    labels: list[Kind] = choices[: len(parents)] + ["insert"]
    labels = list(dict.fromkeys(labels))
    matched = [_matched(cw, words(p)) for p in parents[:2]]

    def cost(i: int, label: Kind) -> float:
        if label == "insert":
            return 1.0
        return 0.0 if i in matched[int(label[-1])] else float("inf")

    best = [{lab: cost(0, lab) for lab in labels}]
    back: list[dict[Kind, Kind]] = [{}]
    for i in range(1, len(cw)):
        row: dict[Kind, float] = {}
        links: dict[Kind, Kind] = {}
        for lab in labels:
            prev = min(labels, key=lambda p: best[-1][p] + (_SWITCH_COST if p != lab else 0))
            row[lab] = best[-1][prev] + (_SWITCH_COST if prev != lab else 0) + cost(i, lab)
            links[lab] = prev
        best.append(row)
        back.append(links)
    lab = min(labels, key=lambda p: best[-1][p])
    chosen: list[Kind] = [lab]
    for i in range(len(cw) - 1, 0, -1):
        lab = back[i][lab]
        chosen.append(lab)
    chosen.reverse()
    return [Piece(w, k) for w, k in zip(cw, chosen, strict=True)]


def edit_pieces(child: str, parents: Sequence[str]) -> list[Piece]:
    """How `child` came from its parents' texts: no parent, one (mutation), two (crossover)."""
    if not parents:
        return [Piece(w, "same") for w in words(child)]
    if len(parents) == 1:
        return mutation_pieces(child, parents[0])
    return crossover_pieces(child, parents)

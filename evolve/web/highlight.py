"""Mark in a child's text what its edit changed, as HTML for the web pages.

The diff itself (words against the parents' texts, no model loaded) lives in
`evolve.experiments.worddiff`, which `evolve lineage` shares; this module only renders it.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from evolve.experiments.worddiff import (
    Kind,
    Piece,
    crossover_pieces,
    edit_pieces,
    mutation_pieces,
    words,
)

__all__ = [
    "Kind",
    "Piece",
    "crossover_pieces",
    "edit_pieces",
    "mutation_pieces",
    "to_html",
    "words",
]


def to_html(pieces: Sequence[Piece]) -> Markup:
    """Pieces as HTML: inserted words in <mark class="ins">, deleted ones in <del>, parents'
    parts in <span class="from-p0|from-p1">; whitespace stays outside the marks."""
    out: list[str] = []
    for piece in pieces:
        stripped = piece.text.lstrip()
        space = escape(piece.text[: len(piece.text) - len(stripped)])
        body = escape(stripped)
        if piece.kind == "same" or not stripped:
            out.append(f"{space}{body}")
        elif piece.kind == "insert":
            out.append(f'{space}<mark class="ins">{body}</mark>')
        elif piece.kind == "delete":
            out.append(f'{space}<del class="del">{body}</del>')
        else:
            out.append(f'{space}<span class="from-p{piece.kind[-1]}">{body}</span>')
    return Markup("".join(out))

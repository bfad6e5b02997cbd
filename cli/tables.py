"""Plain-text tables for the CLI: aligned columns, truncated cells, numbers right-aligned.

Every command prints its tables through `format_table` so that output looks the same
everywhere and stays readable in a terminal: long cells (continuations, prompts) are cut to a
width with an ellipsis, line breaks are shown as a visible `\\n`, floats get a fixed number of
decimals and numbers line up on the right. Written here rather than taken from a library
because it is short and the truncation and number rules are ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ELLIPSIS = "…"
MAX_WIDTH = 60  # widest cell before truncation; a continuation's first words stay visible
FLOAT_DIGITS = 3


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_cell(value: Any, width: int | None = MAX_WIDTH, digits: int = FLOAT_DIGITS) -> str:
    """One value as table text: None empty, floats to `digits` decimals, cut to `width`."""
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    text = text.replace("\r", "").replace("\n", "\\n").replace("\t", " ")
    if width is not None and len(text) > width:
        text = text[: max(width - 1, 0)] + ELLIPSIS
    return text


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    max_width: int | None = MAX_WIDTH,
    widths: Mapping[str, int | None] | None = None,
    digits: int = FLOAT_DIGITS,
) -> str:
    """Headers, a dashed rule and one line per row, columns separated by two spaces.

    `max_width` caps every column (None: no cap); `widths` overrides it per header name.
    A column whose values are all numbers (None allowed) is right-aligned, header included;
    in a mixed column only the numeric cells are.
    """
    n = len(headers)
    # Short rows are padded with empty cells and long ones cut, so every line has n columns.
    rows = [[*row[:n], *[None] * (n - len(row))] for row in map(list, rows)]
    caps = [(widths or {}).get(h, max_width) for h in headers]
    cells = [[format_cell(v, caps[i], digits) for i, v in enumerate(row)] for row in rows]
    numeric = [
        any(_is_number(row[i]) for row in rows)
        and all(row[i] is None or _is_number(row[i]) for row in rows)
        for i in range(n)
    ]
    head = [format_cell(h, caps[i]) for i, h in enumerate(headers)]
    col_widths = [max([len(head[i]), *(len(c[i]) for c in cells)]) for i in range(n)]

    def line(values: Sequence[str], right: Sequence[bool]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w)
            for v, w, r in zip(values, col_widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(head, numeric), line(["-" * w for w in col_widths], numeric)]
    for raw, formatted in zip(rows, cells, strict=True):
        right = [numeric[i] or _is_number(raw[i]) for i in range(n)]
        out.append(line(formatted, right))
    return "\n".join(out)

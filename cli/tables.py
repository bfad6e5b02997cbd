"""Plain-text tables for the CLI: aligned columns, truncated cells, numbers right-aligned.

Every command prints its tables through `format_table` so that output looks the same
everywhere and stays readable in a terminal: long cells (continuations, prompts) are cut to a
width with an ellipsis, line breaks are shown as a visible `\\n`, floats get a fixed number of
decimals and numbers line up on the right. Written here rather than taken from a library
because it is short and the truncation and number rules are ours.

Text read from a database is data, not terminal commands: a run database is a file people
share, and a prompt or name holding `ESC ] 0 ; ... BEL` (set the window title) or `ESC [ 2 J`
(clear the screen) must not reach the terminal as such. `visible` writes every control
character as an escape (`\\x1b`, `\\r`, `\\u202e`), and every human-readable line of stored
text goes through it; `--json` output stays exact (JSON escapes C0 controls itself).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ELLIPSIS = "…"
NULL = "NULL"  # how `evolve sql` shows SQL NULL, told apart from the empty string
MAX_WIDTH = 60  # widest cell before truncation; a continuation's first words stay visible
FLOAT_DIGITS = 3


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Characters a terminal acts on rather than shows, besides the C0/C1 controls (category Cc):
# line and paragraph separators, and the bidirectional embeddings, overrides and isolates that
# reorder what follows them on the screen ("Trojan Source", CVE-2021-42574).
_INVISIBLE = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str, tab: str = "\\t", newline: str = "\\n") -> str:
    """`text` with every control character written as an escape a terminal shows as text:
    newline as `newline`, tab as `tab`, carriage return `\\r`, others `\\x1b` or `\\u202e`."""
    if text.isprintable():  # the common case: nothing to escape (spaces are printable)
        return text
    out = []
    for ch in text:
        if ch == "\t":
            out.append(tab)
        elif ch == "\n":
            out.append(newline)
        elif ch in _INVISIBLE or unicodedata.category(ch) == "Cc":
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def escape(text: Any) -> str:
    """Stored text on one terminal line: line breaks and control characters made visible."""
    return visible(str(text))


def echo_json(value: Any) -> None:
    """`--json` output: indented, non-ASCII kept (JSON escapes control characters itself)."""
    import click

    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def format_cell(
    value: Any, width: int | None = MAX_WIDTH, digits: int = FLOAT_DIGITS, null: str = ""
) -> str:
    """One value as table text: None as `null`, floats to `digits` decimals, control
    characters made visible (a tab is a space), cut to `width`."""
    if width is not None and isinstance(value, str | bytes) and len(value) > width + 1:
        # Escapes only lengthen text, so the first width + 1 characters decide the cell; a
        # 16 MB value is not copied whole just to show 60 characters of it.
        value = value[: width + 1]
    if value is None:
        text = null
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = visible(str(value), tab=" ")
    if width is not None and len(text) > width:
        text = text[: max(width - 1, 0)] + ELLIPSIS
    return text


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    max_width: int | None = MAX_WIDTH,
    widths: Mapping[str, int | None] | None = None,
    digits: int = FLOAT_DIGITS,
    null: str = "",
) -> str:
    """Headers, a dashed rule and one line per row, columns separated by two spaces.

    `max_width` caps every column (None: no cap); `widths` overrides it per header name.
    A column whose values are all numbers (None allowed) is right-aligned, header included;
    in a mixed column only the numeric cells are. None is shown as `null` (empty by default).
    """
    n = len(headers)
    # Short rows are padded with empty cells and long ones cut, so every line has n columns.
    rows = [[*row[:n], *[None] * (n - len(row))] for row in map(list, rows)]
    caps = [(widths or {}).get(h, max_width) for h in headers]
    cells = [[format_cell(v, caps[i], digits, null) for i, v in enumerate(row)] for row in rows]
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

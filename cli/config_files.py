"""Run configs as TOML files: `evolve run --config FILE` reads one, `evolve config RUN` writes one.

The keys are the fields of `RunConfig` (top level) and of its nested configs, written as the
tables ``[mutation]``, ``[crossover]`` and ``[fitness]``; `RunConfig.from_dict` reads the
result, so an unknown key is refused with its name, as for a stored config. Python reads TOML
(`tomllib`) but does not write it; a config holds only strings, numbers, booleans and lists of
strings, so the small writer here is enough and needs no extra package. What it writes reads
back to the same values (tests/test_cli_config.py).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from cli.files import read_text_file
from scoring.errors import UserError


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a TOML file holds; a file that is not TOML is one UserError line.

    Only a regular file of at most a few MB is read (`cli.files`), and a UTF-8 byte-order
    mark at its start is accepted, as editors on Windows write one (TOML itself forbids it).
    """
    text = read_text_file(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from exc


# Bidirectional controls and line separators, written escaped so that a printed config shows
# them (TOML reads the escape back to the same character).
_BIDI = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or 0x7F <= code <= 0x9F or ch in _BIDI:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest repr that reads back to the same float
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, key) for v in value) + "]"
    raise UserError(f"config key {key!r} holds a {type(value).__name__}, which TOML cannot hold")


def to_toml(config: dict[str, Any], header: str = "") -> str:
    """A config mapping as TOML: plain keys first, then one table per nested mapping."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    for key, value in config.items():
        if key not in tables and value is not None:
            lines.append(f"{key} = {_value(value, key)}")
    for key, table in tables.items():
        lines.append("")
        lines.append(f"[{key}]")
        for sub, value in table.items():
            if isinstance(value, dict):
                raise UserError(f"config key {key}.{sub} is nested too deep for this writer")
            if value is not None:
                lines.append(f"{sub} = {_value(value, f'{key}.{sub}')}")
    return "\n".join(lines) + "\n"

"""Reading the small text files a user names (`--config`, `--prompt-file`, `sql --file`).

Such a file is read whole into memory, so what may be read is bounded before reading:

- only a regular file: `/dev/zero` would be read until the out-of-memory killer ends the
  process, a FIFO without a writer would block forever, and neither is a config or a query.
  The file is opened with O_NONBLOCK (so opening a FIFO returns at once) and checked with
  `fstat` on the opened descriptor, so what is checked is what is read;
- at most `MAX_TEXT_FILE_BYTES`: a config, a prompt or a query of more than a few MB is a
  mistake (a prompt must also fit a model's window of a few thousand tokens);
- UTF-8, with a byte-order mark at its start accepted and dropped (editors on Windows
  write one).

Standard input (`sql --file -`) may be a pipe; it is read up to the same bound.
"""

from __future__ import annotations

import codecs
import os
import stat
import sys
from pathlib import Path

from scoring.errors import UserError

MAX_TEXT_FILE_BYTES = 4 * 2**20  # 4 MiB: far above any config, prompt or query; a mistake above

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _what(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _too_big(name: str, limit: int) -> UserError:
    return UserError(f"{name} is larger than {limit // 2**20} MiB; give a smaller file")


def read_file_bytes(path: Path, limit: int = MAX_TEXT_FILE_BYTES) -> bytes:
    """The bytes of the regular file at `path`; UserError (one line) for anything else."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{path} is {_what(mode)}, not a regular file; give a file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise _too_big(str(path), limit)
    return data


def check_regular_file(path: Path) -> None:
    """UserError unless `path` is a regular file: for corpora read elsewhere (`amplify
    --file`, `stunt --train/--dev`), which may be large but never a device or a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is {_what(mode)}, not a regular file; give a file")


def read_stdin_bytes(limit: int = MAX_TEXT_FILE_BYTES) -> bytes:
    """Standard input, up to `limit` bytes; UserError if there is more."""
    try:
        data = sys.stdin.buffer.read(limit + 1)
    except OSError as exc:
        raise UserError(f"cannot read standard input: {exc.strerror}") from exc
    if len(data) > limit:
        raise _too_big("standard input", limit)
    return data


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 bytes as text, without a leading byte-order mark; UserError if not UTF-8."""
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + skip  # the byte's offset in the file
        raise UserError(f"{name} is not UTF-8 text ({exc.reason} at byte {at})") from exc


def read_text_file(path: Path, limit: int = MAX_TEXT_FILE_BYTES) -> str:
    """A bounded, regular UTF-8 file as text (see the module doc)."""
    return decode_text(read_file_bytes(path, limit), str(path))

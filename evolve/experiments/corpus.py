"""Offline English text from Debian packages, split once into train, dev and test.

No model hub or dataset server is reachable, so training text (for `evolve adapt-mlm`, the
masked LM made from SmolLM2, and for stunting studies) comes from Debian packages of English
prose that install from the Debian mirror:

- ``fortunes``: package ``fortunes`` (and ``fortunes-min``): quotes, poems, jokes, one entry
  between lines of ``%``; each file is a topic (``songs-poems``, ``literature``, ...).
- ``wordnet``: package ``wordnet-base``: every synset's gloss (definitions and example
  sentences), e.g. ``dog (noun): a member of the genus Canis ...``.
- ``devil``, ``jargon``: packages ``dict-devil`` (Bierce's *The Devil's Dictionary*) and
  ``dict-jargon`` (the Jargon File), in dictd's format; an entry is a headword's article.
- ``licenses``: the licence texts every Debian system has under common-licenses.

The split is fixed by content, never by a random draw, so every command and every session
sees the same held-out text: two whole fortune files are the test set (``literature`` and
``humorists``) and one the dev set (``wisdom``); entries of the other sources go to test or
dev by a hash of their key (2% each). Nothing of the dev or test split is ever trained on.

`ROOT_ENV` moves the root below which the Debian paths are looked up (tests point it at a
folder of small files shaped like the packages').
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scoring.errors import UserError

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
ROOT_ENV = "MLM_EVOLVE_CORPUS_ROOT"  # default "/": the Debian paths as installed

# Whole fortune files held out: a held-out file is a topic nobody trained on, which is a
# stricter test than held-out entries of trained topics.
TEST_FORTUNES = ("literature", "humorists")
DEV_FORTUNES = ("wisdom",)
HASH_TEST_PERCENT = 2  # entries of other sources in the test split (by key hash)
HASH_DEV_PERCENT = 2  # ... and in the dev split


@dataclass(frozen=True)
class Doc:
    """One entry of one source: ``key`` is stable (``fortunes/literature#12``)."""

    source: str
    key: str
    text: str


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # the Debian package to install when missing
    path: str  # below the corpus root


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("fortunes", "fortunes", "usr/share/games/fortunes"),
        Source("wordnet", "wordnet-base", "usr/share/wordnet"),
        Source("devil", "dict-devil", "usr/share/dictd/devil.dict.dz"),
        Source("jargon", "dict-jargon", "usr/share/dictd/jargon.dict.dz"),
        Source("licenses", "base-files", "usr/share/common-licenses"),
    )
}
DEFAULT_SOURCES: tuple[str, ...] = tuple(SOURCES)


def corpus_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or "/")


def split_of(doc: Doc) -> Split:
    """Which split ``doc`` belongs to (fixed by its source and key, see the module text)."""
    if doc.source == "fortunes":
        topic = doc.key.split("/", 1)[1].split("#", 1)[0]
        if topic in TEST_FORTUNES:
            return "test"
        if topic in DEV_FORTUNES:
            return "dev"
        return "train"
    bucket = int(hashlib.sha256(doc.key.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < HASH_TEST_PERCENT:
        return "test"
    if bucket < HASH_TEST_PERCENT + HASH_DEV_PERCENT:
        return "dev"
    return "train"


def load_corpus(split: Split, sources: Sequence[str] = DEFAULT_SOURCES) -> list[Doc]:
    """Every document of ``split`` from ``sources``, in a fixed order.

    UserError (one line, naming the Debian package to install) when a source is missing.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    out: list[Doc] = []
    for name in sources:
        out.extend(d for d in read_source(name) if split_of(d) == split)
    return out


def read_source(name: str) -> list[Doc]:
    """All documents of one source, whatever their split."""
    source = SOURCES.get(name)
    if source is None:
        raise UserError(f"unknown corpus source {name!r}; choose from {', '.join(SOURCES)}")
    path = corpus_root() / source.path
    if not path.exists():
        raise UserError(
            f"corpus source {name!r} is not installed ({path} is missing): "
            f"apt-get install {source.package}"
        )
    reader = {
        "fortunes": _fortunes,
        "wordnet": _wordnet,
        "devil": _dictd,
        "jargon": _dictd,
        "licenses": _licenses,
    }[name]
    docs = list(reader(name, path))
    if not docs:
        raise UserError(f"corpus source {name!r} at {path} holds no text")
    return docs


def tidy(text: str) -> str:
    """Tabs to spaces, no trailing spaces, no blank lines at either end."""
    lines = [line.replace("\t", "    ").rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def _fortunes(name: str, folder: Path) -> Iterator[Doc]:
    # A topic file has no extension; "*.dat" are indexes, "*.u8" links to the same text.
    for path in sorted(p for p in folder.iterdir() if p.is_file() and "." not in p.name):
        if path.is_symlink():
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        for i, entry in enumerate(re.split(r"\n%\n", raw.replace("\r\n", "\n"))):
            text = tidy(entry.strip("%\n"))
            if text:
                yield Doc(name, f"{name}/{path.name}#{i}", text)


def _wordnet(name: str, folder: Path) -> Iterator[Doc]:
    for pos in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{pos}"
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue  # the licence header of each data file
            fields, gloss = line.split(" | ", 1)
            parts = fields.split()
            # offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] ...
            words = [parts[4 + 2 * k].replace("_", " ") for k in range(int(parts[3], 16))]
            head = re.sub(r"\(\w+\)$", "", words[0])  # adjective markers such as "(a)"
            yield Doc(name, f"{name}/{pos}/{parts[0]}", f"{head} ({pos}): {gloss.strip()}")


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def _dictd(name: str, path: Path) -> Iterator[Doc]:
    """Articles of a dictd dictionary (``x.dict.dz`` beside ``x.index``), prose unwrapped."""
    index = path.with_name(path.name.removesuffix(".dict.dz") + ".index")
    data = gzip.decompress(path.read_bytes())
    seen: set[int] = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00database"):
            continue
        start, length = _b64(parts[1]), _b64(parts[2])
        if start in seen:  # several headwords may point at one article
            continue
        seen.add(start)
        article = data[start : start + length].decode("utf-8", errors="replace")
        text = _unwrap(_dedent_body(tidy(article)))
        if text:
            yield Doc(name, f"{name}/{parts[0]}", text)


def _licenses(name: str, folder: Path) -> Iterator[Doc]:
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue  # GPL -> GPL-3 and the like: the same text once
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, para in enumerate(re.split(r"\n[ \t]*\n", text)):
            para = _unwrap(tidy(para))
            if para:
                yield Doc(name, f"{name}/{path.name}#{i}", para)


def _dedent_body(text: str) -> str:
    """Remove the indentation that every line after the headword shares (the Jargon File
    indents whole articles; The Devil's Dictionary indents only its verse)."""
    head, _, body = text.partition("\n")
    lines = [line for line in body.split("\n") if line.strip()]
    if not lines:
        return text
    cut = min(len(line) - len(line.lstrip(" ")) for line in lines)
    return "\n".join([head, *(line[cut:] for line in body.split("\n"))])


def _unwrap(text: str) -> str:
    """Join hard-wrapped prose lines; keep breaks before indented lines (verse, lists)."""
    return re.sub(r"(?<!\n)\n(?=[^ \n])", " ", text)

"""Word boundaries in token id sequences, for any of the three common subword schemes.

PLL-word-l2r (Kauf & Ivanova 2023) masks the later pieces of a word together with the
scored piece, and word-boundary crossover cuts only between words, so both need to know
which tokens begin a word. The three schemes mark this differently:

- WordPiece (BERT): a piece that continues a word starts with ``##``.
- byte-level BPE (GPT-2, RoBERTa, SmolLM2): a piece that begins a word after a space starts
  with ``Ġ`` (the byte-level spelling of a space; ``Ċ`` is a newline).
- SentencePiece (ALBERT, XLM-R, T5, Llama 2): a piece that begins a word starts with ``▁``.

Byte-level BPE and SentencePiece only mark spaces, so punctuation is handled separately: a
token made of punctuation only begins a word, and so does the token right after it
("(re)organising" is four words: "(", "re", ")", "organising"). A piece such as ``'t`` in
"weren't" is not all punctuation and stays part of its word. A whitespace-only token (a bare
``Ġ``, a newline) begins a word and the pieces after it continue that word, as the space in
``Ġthe`` does (so " (" spelled ``Ġ`` ``(`` is one word). Special tokens and the first
token always begin a word.
"""

from __future__ import annotations

import contextlib
import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Scheme = Literal["wordpiece", "bytelevel", "sentencepiece"]

_SP_MARK = "\u2581"  # SentencePiece's word-start marker "▁"


@dataclass
class _TokenizerInfo:
    """What word_starts needs to know about one tokenizer, computed once."""

    scheme: Scheme
    continuation_prefix: str  # "##" for WordPiece
    special_ids: frozenset[int]
    byte_decoder: dict[str, int] | None  # byte-level alphabet -> byte value
    # id -> (begins with whitespace or a word marker, punctuation only, whitespace only)
    token_kind: dict[int, tuple[bool, bool, bool]] = field(default_factory=dict)


_info_cache: weakref.WeakKeyDictionary[Any, _TokenizerInfo] = weakref.WeakKeyDictionary()


def _is_punct_char(ch: str) -> bool:
    # BERT's notion of punctuation: ASCII symbols plus every Unicode P* category.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the byte-level alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def detect_scheme(tokenizer: Any) -> Scheme:
    """Which subword scheme a (fast) tokenizer uses: from its backend, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model_name = type(backend.model).__name__
        pre = repr(backend.pre_tokenizer) + repr(backend.decoder)
        if model_name == "WordPiece":
            return "wordpiece"
        if "ByteLevel" in pre:
            return "bytelevel"
        if "Metaspace" in pre:
            return "sentencepiece"
    vocab = tokenizer.get_vocab()
    counts: dict[Scheme, int] = {
        "wordpiece": sum(t.startswith("##") for t in vocab),
        "bytelevel": sum(t.startswith("Ġ") for t in vocab),
        "sentencepiece": sum(t.startswith(_SP_MARK) for t in vocab),
    }
    return max(counts, key=counts.__getitem__)


def _info(tokenizer: Any) -> _TokenizerInfo:
    try:
        return _info_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    scheme = detect_scheme(tokenizer)
    prefix = "##"
    if scheme == "wordpiece":
        backend = getattr(tokenizer, "backend_tokenizer", None)
        prefix = getattr(getattr(backend, "model", None), "continuing_subword_prefix", "##")
    byte_decoder = None
    if scheme == "bytelevel":
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
    info = _TokenizerInfo(
        scheme=scheme,
        continuation_prefix=prefix or "##",
        special_ids=frozenset(int(i) for i in tokenizer.all_special_ids),
        byte_decoder=byte_decoder,
    )
    with contextlib.suppress(TypeError):  # not weak-referenceable: recompute next time
        _info_cache[tokenizer] = info
    return info


def _token_text(info: _TokenizerInfo, token: str) -> str:
    """The surface text of one token (leading space included where the scheme marks one)."""
    if info.scheme == "bytelevel" and info.byte_decoder is not None:
        if all(c in info.byte_decoder for c in token):
            raw = bytes(info.byte_decoder[c] for c in token)
            return raw.decode("utf-8", errors="replace")
        return token  # an added token spelled in plain text
    if info.scheme == "sentencepiece":
        return token.replace(_SP_MARK, " ")
    return token


def _kind(info: _TokenizerInfo, tokenizer: Any, token_id: int) -> tuple[bool, bool, bool]:
    """(marked as a word start, punctuation only, whitespace only) for one token id."""
    cached = info.token_kind.get(token_id)
    if cached is not None:
        return cached
    token = tokenizer.convert_ids_to_tokens(token_id)
    if token is None:
        token = ""
    if info.scheme == "wordpiece":
        marked = not token.startswith(info.continuation_prefix)
        text = token if marked else token[len(info.continuation_prefix) :]
    else:
        text = _token_text(info, token)
        marked = text[:1].isspace()
    body = text.strip()
    punct = bool(body) and all(_is_punct_char(c) for c in body)
    kind = (marked, punct, not body and bool(text))
    info.token_kind[token_id] = kind
    return kind


def word_starts(tokenizer: Any, ids: Sequence[int]) -> list[bool]:
    """Whether each token in ``ids`` begins a new word (see the module docstring)."""
    info = _info(tokenizer)
    starts: list[bool] = []
    prev_breaks = True  # the first token begins a word
    prev_space = False  # the previous token was whitespace only: it began this word
    for raw_id in ids:
        token_id = int(raw_id)
        if token_id in info.special_ids:
            starts.append(True)
            prev_breaks, prev_space = True, False
            continue
        marked, punct, space = _kind(info, tokenizer, token_id)
        starts.append(prev_breaks or marked or (punct and not prev_space))
        prev_breaks, prev_space = punct, space
    return starts

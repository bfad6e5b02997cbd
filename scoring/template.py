"""How a tokenizer wraps one sequence in special tokens: ``head + ids + tail``.

Masked-LM scorers and proposers build their model inputs as special head + prompt +
continuation + special tail, with the continuation at a known offset. transformers 5 fast
tokenizers lack ``build_inputs_with_special_tokens``, so the template is read off the
tokenizer once, by encoding a probe text with and without special tokens.

User text (prompts, seed texts, texts to score) is encoded by `text_ids`: as text, always.
By default a tokenizer turns the literal string ``[MASK]`` (BERT), ``<mask>`` (RoBERTa) or
``<filename>`` (the mask of the decoder MLM on SmolLM2), and ``[SEP]``, ``[CLS]``,
``<|endoftext|>``, into their special ids, so a prompt quoting them put a real mask or
separator into the fitness context. `split_special_tokens=True` encodes them as the
characters they are made of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of user text, without special tokens added and with none read from it."""
    return [
        int(i)
        for i in tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ]


def texts_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """`text_ids` of several texts in one tokenizer call."""
    found = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
    return [[int(i) for i in ids] for ids in found["input_ids"]]


def special_template(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special ids the tokenizer puts before and after a single sequence."""
    probe = "hello world"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            return tuple(full[:start]), tuple(full[start + n :])
    cls = getattr(tokenizer, "cls_token_id", None)
    sep = getattr(tokenizer, "sep_token_id", None)
    return ((cls,) if cls is not None else ()), ((sep,) if sep is not None else ())


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Every id the tokenizer treats as special: its named special tokens and every added
    token flagged special (SmolLM2's ``<file_sep>``, ``<jupyter_code>``, ... are neither
    prose nor in ``all_special_ids``)."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, token in added.items() if getattr(token, "special", False)}
    return frozenset(ids)


@dataclass(frozen=True)
class InputTemplate:
    """A tokenizer's single-sequence template: model input = ``head + ids + tail``."""

    head: tuple[int, ...]
    tail: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> InputTemplate:
        head, tail = special_template(tokenizer)
        return cls(tuple(int(i) for i in head), tuple(int(i) for i in tail))

    @property
    def n_special(self) -> int:
        return len(self.head) + len(self.tail)

    def build(self, prompt_ids: Sequence[int], cont_ids: Sequence[int]) -> list[int]:
        """The model input for a prompt and its continuation."""
        return [*self.head, *prompt_ids, *cont_ids, *self.tail]

    def offset(self, prompt_ids: Sequence[int]) -> int:
        """Input position of continuation token 0 (continuation index i is at offset + i)."""
        return len(self.head) + len(prompt_ids)

    def continuation(self, input_ids: Sequence[int], prompt_ids: Sequence[int]) -> list[int]:
        """The continuation ids back out of a (filled) model input."""
        end = len(input_ids) - len(self.tail)
        return [int(i) for i in input_ids[self.offset(prompt_ids) : end]]

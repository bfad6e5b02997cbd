"""The token representation of individuals: one tokenizer for the whole run, and text at the edges.

An individual is a list of token ids of ONE tokenizer, the proposer's: the MLM's for
``--proposer mlm`` and the causal LM's for ``--proposer causal``. The variation operators,
the proposer and the lineage records (spans, cut points) all speak those ids, so no edit ever
has to be translated.

A scorer whose model has another tokenizer reads an individual through text: the ids are
decoded after the prompt (`Representation.text_of`, the continuation with the spacing it has
after the prompt) and the text is encoded with the scorer's tokenizer, prompt and
continuation separately, exactly as `PLLScorer.score` / `CausalScorer.score` tokenise text.
That conversion is a pure function of the ids, so scores stay cacheable by ids. Where the
scorer's model is the representation's, its ids are scored as they are (no round trip: a
proposer may produce a non-canonical split such as ``Ġche`` ``ese``, and the fitness is the
log-probability of exactly those tokens). Starts made as text (seed texts, baseline
decodings) are encoded once into the representation when the population is made.

The prompt is never part of an individual; it is the fixed context `prompt_ids` in the same
tokens. For a causal tokenizer, which has no mask token, a stand-in id marks the positions a
fill request asks for (`placeholder_id`); the causal proposer never reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evolve.ga.proposers import InputTemplate
from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.template import text_ids


@dataclass(frozen=True)
class Representation:
    """The tokenizer individuals are written in, with the prompt in the same tokens."""

    lm: LoadedModel  # the model whose tokenizer this is (the proposer's model)
    prompt: str
    prompt_ids: tuple[int, ...]  # the prompt without special tokens
    template: InputTemplate  # special tokens around prompt + continuation in a model input
    placeholder_id: int  # what unfilled positions hold: the mask id, or a stand-in
    prompt_decoded: str  # decode(prompt_ids): text_of cuts it off the decoded full text

    @classmethod
    def build(cls, lm: LoadedModel, prompt: str) -> Representation:
        tok = lm.tokenizer
        prompt_ids = tuple(text_ids(tok, prompt))
        if not prompt_ids:
            raise UserError("the prompt has no tokens under this model's tokenizer")
        if lm.kind == "mlm":
            placeholder = tok.mask_token_id
        else:
            placeholder = next(
                (
                    getattr(tok, a)
                    for a in ("pad_token_id", "eos_token_id", "unk_token_id")
                    if getattr(tok, a, None) is not None
                ),
                None,
            )
        if placeholder is None:
            raise UserError(f"{lm.name!r} has no mask, pad, EOS or UNK token to mark a gap with")
        return cls(
            lm=lm,
            prompt=prompt,
            prompt_ids=prompt_ids,
            template=InputTemplate.from_tokenizer(tok),
            placeholder_id=int(placeholder),
            prompt_decoded=tok.decode(list(prompt_ids)),
        )

    @property
    def kind(self) -> str:
        """``mlm`` or ``causal``: whose tokens these are."""
        return self.lm.kind

    @property
    def tokenizer(self) -> object:
        return self.lm.tokenizer

    def encode(self, text: str) -> list[int]:
        """A continuation text as representation ids (no special tokens)."""
        return text_ids(self.lm.tokenizer, text)

    def text_of(self, ids: Sequence[int]) -> str:
        """The continuation as text, with the spacing it has after the prompt."""
        tok = self.lm.tokenizer
        full = tok.decode([*self.prompt_ids, *ids])
        if full.startswith(self.prompt_decoded):
            return full[len(self.prompt_decoded) :]
        return " " + tok.decode(list(ids))

    def check_window(self, max_len: int) -> None:
        """UserError when prompt + the longest continuation does not fit the model."""
        need = len(self.prompt_ids) + max_len + self.template.n_special
        window = self.lm.max_length
        if need > window:
            raise UserError(
                f"prompt ({len(self.prompt_ids)} tokens) + max_len ({max_len}) + "
                f"{self.template.n_special} special tokens = {need} exceeds the model window "
                f"of {window}"
            )

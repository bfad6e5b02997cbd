"""Continuing a prompt with a causal LM's own decoding: greedy, beam search and sampling.

Two users: the baselines that evolved texts are compared with (`evolve.experiments.
baselines`, which adds the lookahead methods and stores the texts) and a run's generation 0
(`--init beam|greedy|sample`, wired in `evolve.api`). Both decode here, so the GA's side never
needs the experiments.

Decisions that make every text comparable and repeatable:

- The prompt is tokenised without special tokens (`prompt_ids`), exactly as
  `scoring.causal.CausalScorer` conditions on it, so the texts come from the distribution
  the judge scores.
- ``min_new_tokens = max_new_tokens``: every method writes exactly `new_tokens` tokens
  (end-of-text cannot stop it early).
- A fresh ``GenerationConfig`` per call: the model's own generation defaults (a stored top_k
  of 50, a repetition penalty) would otherwise leak into the texts silently.
- The prompt's key/value cache is shared with the run's scorer and proposer
  (`scoring.causal.PrefixCache`): ``generate()`` gets it and runs only the prompt's last token
  and the new ones, instead of the whole prompt once per beam.
- Each call seeds every generator with its own seed (`scoring.rng.seed_everything`) just
  before ``generate()``, so a stored seed alone reproduces its text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scoring.causal import prefix_cache_of
from scoring.errors import UserError
from scoring.models import LoadedModel
from scoring.rng import SEED_MAX, seed_everything
from scoring.template import text_ids

DECODING_METHODS = ("greedy", "beam", "sample")  # what `decode` does; one generate() call each
DEFAULT_NEW_TOKENS = 20  # without a run: about the length of a default evolved continuation

# Upper bounds: every beam is a row of every forward pass, so memory grows with the width,
# and each sample is one generate() call of its own.
MAX_BEAMS = 1024
MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class Decoding:
    """The settings of greedy, beam search and sampling (each method reads its own)."""

    new_tokens: int = DEFAULT_NEW_TOKENS
    num_beams: int = 4  # a common beam width
    length_penalty: float = 1.0  # transformers' default; moot here, as all beams end equally long
    no_repeat_ngram_size: int = 0  # 0 = off: plain beam search, repetitions included
    num_return_sequences: int = 1  # beam search as it is used: its single best beam
    temperature: float = 1.0  # the model's own distribution
    top_k: int = 0  # 0 = no cut; top_p trims the tail instead
    top_p: float = 0.9  # nucleus sampling (Holtzman et al. 2020), a common default
    typical_p: float = 1.0  # 1.0 = off; e.g. 0.95 for locally typical sampling (Meister et al.)
    samples: int = 5  # sampled texts (one seed each): enough for distinct-n and self-BLEU
    seed: int = 0  # the first sample's seed; greedy and beam record it too

    def validate(self) -> Decoding:
        """Check every setting but the temperature's range (the caller's: the GA's bounds);
        raise UserError with a one-line message. Returns self."""
        _require(self.new_tokens >= 1, f"new_tokens must be at least 1 (got {self.new_tokens})")
        _require(self.num_beams >= 1, f"num_beams must be at least 1 (got {self.num_beams})")
        _require(
            self.num_beams <= MAX_BEAMS,
            f"num_beams must be at most {MAX_BEAMS} (got {self.num_beams})",
        )
        _require(
            1 <= self.num_return_sequences <= self.num_beams,
            f"num_return_sequences must lie within [1, num_beams={self.num_beams}] "
            f"(got {self.num_return_sequences})",
        )
        _require(math.isfinite(self.length_penalty), "length_penalty must be finite")
        _require(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0 (0 = off)")
        _require(self.top_k >= 0, f"top_k must be >= 0 (0 = no cut; got {self.top_k})")
        _require(0 < self.top_p <= 1, f"top_p must lie within (0, 1] (got {self.top_p})")
        _require(
            0 < self.typical_p <= 1, f"typical_p must lie within (0, 1] (got {self.typical_p})"
        )
        _require(self.samples >= 1, f"samples must be at least 1 (got {self.samples})")
        _require(
            self.samples <= MAX_SAMPLES,
            f"samples must be at most {MAX_SAMPLES} (got {self.samples})",
        )
        _require(
            self.seed >= 0 and self.seed + self.samples - 1 <= SEED_MAX,
            f"seed + samples must stay within [0, 2**63-1] (got seed {self.seed})",
        )
        return self

    def params(self, method: str) -> dict[str, Any]:
        """The decoding parameters stored with each text of `method` (seed aside)."""
        base: dict[str, Any] = {"new_tokens": self.new_tokens}
        if method == "beam":
            base.update(
                num_beams=self.num_beams,
                length_penalty=self.length_penalty,
                no_repeat_ngram_size=self.no_repeat_ngram_size,
                num_return_sequences=self.num_return_sequences,
            )
        elif method == "sample":
            base.update(
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                typical_p=self.typical_p,
            )
        return base

    def seeds(self, sampled: bool) -> list[int]:
        """The seed of each call: one per sample (`seed`, `seed + 1`, ...) for a sampling
        method, else `seed` alone (greedy and beam search are deterministic)."""
        return [self.seed + i for i in range(self.samples)] if sampled else [self.seed]

    def texts_per_call(self, method: str) -> int:
        """How many texts one call of `method` writes: beam search keeps its returns."""
        return self.num_return_sequences if method == "beam" else 1


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def prompt_ids(lm: LoadedModel, prompt: str, new_tokens: int, model: str) -> list[int]:
    """The prompt's ids under `lm`'s tokenizer; UserError (naming `model`) when it has none
    or when it and `new_tokens` more do not fit the model's window."""
    ids = text_ids(lm.tokenizer, prompt)
    if not ids:
        raise UserError("the prompt has no tokens under the causal LM's tokenizer")
    if len(ids) + new_tokens > lm.max_length:
        raise UserError(
            f"prompt ({len(ids)} tokens) + {new_tokens} new tokens exceeds "
            f"{model}'s window of {lm.max_length}"
        )
    return ids


def decode(
    lm: LoadedModel, prompt_ids: Sequence[int], method: str, settings: Decoding, seed: int
) -> list[str]:
    """The continuations one ``generate()`` call makes with `method` (one of
    `DECODING_METHODS`; several texts for beam search with returns), seeded with `seed`."""
    import torch
    from transformers import GenerationConfig

    if method not in DECODING_METHODS:
        raise ValueError(f"decode does {', '.join(DECODING_METHODS)}, not {method!r}")
    tok = lm.tokenizer
    eos = eos_ids(lm)
    options: dict[str, Any] = {
        "max_new_tokens": settings.new_tokens,
        "min_new_tokens": settings.new_tokens,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else eos[0],
        "eos_token_id": eos,
    }
    if method == "greedy":
        options.update(do_sample=False, num_beams=1)
    elif method == "beam":
        options.update(
            do_sample=False,
            num_beams=settings.num_beams,
            length_penalty=settings.length_penalty,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
            num_return_sequences=settings.num_return_sequences,
        )
    else:
        options.update(
            do_sample=True,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            typical_p=settings.typical_p,
        )
    input_ids = torch.tensor([list(prompt_ids)], device=lm.device)
    # The prompt but its last token comes from the model's shared prefix cache (run once per
    # run and model, see `scoring.causal.PrefixCache`), one copy per beam: generate() then
    # runs only the last prompt token and the new ones.
    past = None
    if len(prompt_ids) > 1:
        rows = settings.num_beams if method == "beam" else 1
        past = prefix_cache_of(lm).get(prompt_ids[:-1]).cache_for(rows)
    hf: Any = lm.model  # a transformers causal LM: generate() is not typed on nn.Module
    seed_everything(seed)
    with torch.inference_mode():
        output = hf.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            past_key_values=past,
            generation_config=GenerationConfig(**options),
        )
    return [continuation_text(lm, prompt_ids, row[len(prompt_ids) :].tolist()) for row in output]


def eos_ids(lm: LoadedModel) -> list[int]:
    """End-of-text ids of tokenizer and generation config, those the vocabulary holds.

    All of them, so that min_new_tokens suppresses every way to stop early; out-of-vocabulary
    ones (a GPT-2 config's default 50256 on a small vocabulary) are dropped.
    """
    found: list[int] = []
    configured = getattr(lm.model.generation_config, "eos_token_id", None)
    for value in (lm.tokenizer.eos_token_id, configured):
        for i in value if isinstance(value, list | tuple) else [value]:
            if i is not None and int(i) not in found:
                found.append(int(i))
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or len(lm.tokenizer))
    found = [i for i in found if 0 <= i < vocab]
    if not found:
        raise UserError(f"{lm.name!r} has no end-of-text token, so generation cannot be bounded")
    return found


def continuation_text(lm: LoadedModel, prompt_ids: Sequence[int], new_ids: list[int]) -> str:
    """The new tokens as text, with the spacing they have after the prompt.

    Decoding the new ids alone would drop a leading space under SentencePiece tokenizers;
    decoding prompt + continuation and cutting the decoded prompt off keeps it everywhere.
    """
    tok = lm.tokenizer
    options = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    head = tok.decode(list(prompt_ids), **options)
    full = tok.decode([*prompt_ids, *new_ids], **options)
    if full.startswith(head):
        return full[len(head) :]
    return tok.decode(new_ids, **options)

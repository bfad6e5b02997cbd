"""A decoder LM used as a masked LM: bidirectional attention and the one-position shift.

Masked next-token prediction (MNTP, as in LLM2Vec, BehnamGhader et al. 2024) turns a causal
LM into a masked LM with two changes and no new weights:

- **Bidirectional attention.** The decoder body gets a 4D boolean attention mask
  ``[batch, 1, L, L]`` instead of its causal one, so every position sees the whole text
  (Llama-family code in transformers uses a 4D mask as given). Padded keys are hidden; a
  padded query row keeps its own key so no row is empty.
- **The shift.** Token i is predicted from the hidden state at position i - 1, so the LM
  head keeps its next-token role and an untrained model already predicts something sensible.
  The model's "hidden state at i" as the rest of the code sees it (`DecoderMLMBody`) is the
  decoder's hidden state at i - 1; position 0 holds a start token that is never predicted.

The mask token is ``<filename>`` (SmolLM2's id 6: a special token that never occurs in prose),
the start token ``<|endoftext|>`` (documents began after it in pretraining). Both are set on
the tokenizer (`prepare_tokenizer`), so `scoring.template`, `scoring.pll.PLLScorer`, the MLM
proposer and every other masked-LM user see an ordinary masked LM: ``tokenizer.mask_token_id``,
a special head ``(<|endoftext|>,)``, ``model(input_ids, attention_mask).logits`` and the
``base_model`` / ``lm_head`` split that `scoring.heads.split_model` looks for.

**Prefix attention** (``attention="prefix"``, how `scoring.pll.PLLScorer` scores with such a
model): the start token and the prompt attend only to each other, the continuation to
everything. The prompt's hidden states then do not depend on the continuation, so one pass
over the prompt serves every masked copy of every continuation of it
(`DecoderMLM.prompt_states`, `DecoderMLM.continuation_hidden`), at the cost of a slightly
different model. Training mixes both kinds of mask (`evolve adapt-mlm`). A plain forward
pass (the MLM proposer's fills) always attends fully.

A trained adapter lives in a folder with ``decoder_mlm.json`` (this format; see
`DecoderMLMSpec`) beside a PEFT LoRA adapter (``adapter_config.json`` and
``adapter_model.safetensors``); `scoring.models` loads such a folder as a masked LM.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from scoring.errors import ModelLoadError

MASK_TOKEN = "<filename>"
START_TOKEN = "<|endoftext|>"
SPEC_FILE = "decoder_mlm.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FORMAT = 1

Attention = Literal["full", "prefix"]
ATTENTIONS: tuple[Attention, ...] = ("full", "prefix")


@dataclass(frozen=True)
class DecoderMLMSpec:
    """What ``decoder_mlm.json`` holds: how to rebuild the masked LM from its base."""

    base: str  # the causal LM the adapter applies to: a preset, folder or hub id
    mask_token: str = MASK_TOKEN
    start_token: str = START_TOKEN
    attention: Attention = "full"  # how the scorers use it; prefix mode is an opt-in speed-up
    format: int = FORMAT
    training: dict[str, Any] = field(default_factory=dict)  # the card: data, steps, numbers

    @classmethod
    def read(cls, folder: Path) -> DecoderMLMSpec:
        path = folder / SPEC_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("base"), str):
            raise ModelLoadError(f"{path} is not a decoder-MLM spec (no 'base' model named)")
        if raw.get("format", FORMAT) != FORMAT:
            raise ModelLoadError(f"{path}: unknown format {raw.get('format')!r} (want {FORMAT})")
        attention = raw.get("attention", "full")
        if attention not in ATTENTIONS:
            raise ModelLoadError(f"{path}: attention must be one of {', '.join(ATTENTIONS)}")
        training = raw.get("training", {})
        return cls(
            base=raw["base"],
            mask_token=str(raw.get("mask_token", MASK_TOKEN)),
            start_token=str(raw.get("start_token", START_TOKEN)),
            attention=attention,
            training=training if isinstance(training, dict) else {},
        )

    def write(self, folder: Path) -> None:
        (folder / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def is_decoder_mlm_folder(path: str | Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def prepare_tokenizer(tokenizer: Any, spec: DecoderMLMSpec) -> Any:
    """Give a decoder's tokenizer the mask token and the start-token template (in place)."""
    from tokenizers.processors import TemplateProcessing

    vocab = tokenizer.get_vocab()
    for token in (spec.mask_token, spec.start_token):
        if token not in vocab:
            raise ModelLoadError(f"the base tokenizer has no token {token!r}")
    tokenizer.add_special_tokens({"mask_token": spec.mask_token})
    start_id = int(tokenizer.convert_tokens_to_ids(spec.start_token))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError("a decoder masked LM needs a fast (tokenizers) tokenizer")
    backend.post_processor = TemplateProcessing(
        single=f"{spec.start_token} $A",
        pair=f"{spec.start_token} $A $B",
        special_tokens=[(spec.start_token, start_id)],
    )
    return tokenizer


def attention_mask_4d(
    keep: torch.Tensor,
    segments: torch.Tensor | None = None,
    prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """The boolean ``[B, 1, L, L]`` mask: query i may attend key j.

    ``keep`` [B, L]: real (1/True) or padding (0) positions. ``segments`` [B, L] (optional):
    positions attend only within their own segment (documents packed into one row).
    ``prompt`` [B, L] bool (optional): prompt positions attend only to prompt positions.
    A padded query row keeps its own key, so no softmax row is empty.
    """
    k = keep.bool()
    allowed = k[:, None, :].expand(-1, k.shape[1], -1).clone()  # [B, Lq, Lk]
    if segments is not None:
        allowed &= segments[:, :, None] == segments[:, None, :]
    if prompt is not None:
        p = prompt.bool()
        allowed &= ~p[:, :, None] | p[:, None, :]
    eye = torch.eye(k.shape[1], dtype=torch.bool, device=k.device)
    allowed |= eye & ~k[:, :, None]
    return allowed[:, None]


def shift_hidden(hidden: torch.Tensor) -> torch.Tensor:
    """Position i gets the hidden state of i - 1 (position 0 keeps its own: never predicted)."""
    return torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)


class DecoderMLMBody(torch.nn.Module):
    """The decoder with bidirectional attention, its output shifted by one position.

    Always full attention: a forward pass does not know where a prompt ends. Prefix
    attention is the scorers' mode (`DecoderMLM.prompt_states`), not the body's.
    """

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor]:
        keep = (
            attention_mask
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        mask = attention_mask_4d(keep)
        hidden = self.decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return (shift_hidden(hidden),)


@dataclass
class MaskedOutput:
    logits: torch.Tensor


@dataclass(frozen=True)
class PromptStates:
    """A prompt (start token included) run once with prefix attention."""

    ids: tuple[int, ...]
    cache: Any  # the decoder's past_key_values for ``ids``, one row; never extended itself
    last_hidden: torch.Tensor  # [hidden]: predicts the first token after the prompt


PROMPT_CACHE_SIZE = 8  # prompts kept per model: a run has one; a notebook a few


class DecoderMLM(torch.nn.Module):
    """A causal LM presented as a masked LM (see the module docstring).

    ``base_model`` (the shifted bidirectional body) and ``lm_head`` make the split that
    `scoring.heads.split_model` finds, so scorers apply the head at the scored positions only.
    """

    def __init__(self, causal: torch.nn.Module, spec: DecoderMLMSpec) -> None:
        super().__init__()
        inner: Any = causal
        decoder = getattr(inner, "model", None)
        lm_head = getattr(inner, "lm_head", None)
        if not isinstance(decoder, torch.nn.Module) or not isinstance(lm_head, torch.nn.Module):
            raise ModelLoadError(
                f"{spec.base!r} has no decoder body and LM head (model.model, model.lm_head) "
                "to build a masked LM from"
            )
        self.body = DecoderMLMBody(decoder)
        self.lm_head = lm_head
        self.spec = spec
        self._prompts: OrderedDict[tuple[int, ...], PromptStates] = OrderedDict()
        self._prompt_version = -1
        config = type(inner.config).from_dict(inner.config.to_dict())
        config.architectures = ["DecoderMLM"]  # neither ForCausalLM nor ForMaskedLM: ours
        self.config = config

    @property
    def base_model(self) -> DecoderMLMBody:
        return self.body

    @property
    def attention(self) -> Attention:
        """How PLL scores with it: ``full``, or ``prefix`` (the prompt computed once)."""
        return self.spec.attention

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def get_input_embeddings(self) -> torch.nn.Module:
        decoder: Any = self.body.decoder
        return decoder.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> MaskedOutput:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask)[0]
        return MaskedOutput(logits=self.lm_head(hidden))

    # -- prefix attention: the prompt once, every continuation after it ----------------------

    def prompt_states(self, ids: Sequence[int]) -> PromptStates:
        """The prompt's keys/values and last hidden state, computed once per prompt (LRU of
        `PROMPT_CACHE_SIZE`, forgotten when any weight changes in place)."""
        from scoring.causal import MIN_PREFIX_ROWS, weights_version

        key = tuple(int(i) for i in ids)
        if not key:
            raise ValueError("a prompt needs at least one token (the start token)")
        version = weights_version(self)
        if version != self._prompt_version:
            self._prompts.clear()
            self._prompt_version = version
        hit = self._prompts.get(key)
        if hit is not None:
            self._prompts.move_to_end(key)
            return hit
        device = next(self.parameters()).device
        # A short prompt runs as several identical rows: one-row matrix products take other
        # CPU kernels, whose rounding differs from a batch's (as in `scoring.causal`).
        copies = -(-MIN_PREFIX_ROWS // len(key))
        ids_t = torch.tensor([key] * copies, dtype=torch.long, device=device)
        mask = attention_mask_4d(torch.ones_like(ids_t, dtype=torch.bool))
        with torch.inference_mode():
            out = self.body.decoder(input_ids=ids_t, attention_mask=mask, use_cache=True)
        cache = out.past_key_values
        if copies > 1:
            cache.batch_select_indices(torch.tensor([0], device=device))
        state = PromptStates(key, cache, out.last_hidden_state[0, -1])
        self._prompts[key] = state
        if len(self._prompts) > PROMPT_CACHE_SIZE:
            self._prompts.popitem(last=False)
        return state

    def continuation_hidden(
        self, states: PromptStates, ids: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Shifted hidden states [rows, n, hidden] of continuations ``ids`` [rows, n] after the
        cached prompt: entry k predicts continuation token k (k = 0 from the prompt's last
        position). ``keep`` [rows, n] marks real (not padding) tokens. Equals the prefix
        attention model run on prompt + continuation, without running the prompt again."""
        from scoring.causal import expand_rows

        rows, n = ids.shape
        p = len(states.ids)
        real = torch.ones_like(ids, dtype=torch.bool) if keep is None else keep.bool()
        mask = torch.ones((rows, 1, n, p + n), dtype=torch.bool, device=ids.device)
        mask[:, 0, :, p:] = real[:, None, :]
        mask[:, 0, :, p:] |= torch.eye(n, dtype=torch.bool, device=ids.device) & ~real[:, :, None]
        positions = torch.arange(p, p + n, device=ids.device).expand(rows, n)
        hidden = self.body.decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=expand_rows(states.cache, rows),
            use_cache=True,
        ).last_hidden_state
        first = states.last_hidden.to(hidden.dtype).expand(rows, 1, -1)
        return torch.cat([first, hidden[:, :-1]], dim=1)


def load_decoder_mlm(
    folder: Path, base: torch.nn.Module, base_tokenizer: Any, attention: Attention | None = None
) -> tuple[DecoderMLM, Any, DecoderMLMSpec]:
    """Apply the LoRA adapter in ``folder`` to ``base`` (a fresh causal LM, changed in place:
    the adapter is merged into its weights), and wrap it as a `DecoderMLM` (``attention``:
    the spec's unless given).

    One-line `ModelLoadError` for a missing or corrupt adapter.
    """
    spec = DecoderMLMSpec.read(folder)
    if attention is not None:
        spec = replace(spec, attention=attention)
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise ModelLoadError(f"decoder-MLM folder {str(folder)!r} has no {name}")
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise ModelLoadError("loading a decoder-MLM adapter needs the peft package") from exc
    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 deprecated name
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = PeftModel.from_pretrained(base, str(folder), is_trainable=False)
        merged = peft_model.merge_and_unload()
    except Exception as exc:  # safetensors, peft and torch each raise their own kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"cannot apply the adapter in {str(folder)!r}: {type(exc).__name__}: {first}"
        ) from exc
    tokenizer = prepare_tokenizer(base_tokenizer, spec)
    return DecoderMLM(merged, spec).eval(), tokenizer, spec

"""Masked-LM heads: find the vocabulary projection so it runs only where it is needed.

The MLM head (transform + vocabulary projection) is the costliest single matmul of a masked
LM's forward pass, and PLL scoring and MLM proposing need its output at one position per row
only. `split_model` finds ``(body, head)`` with ``head(body(x)) == model(x).logits`` for the
common architectures, checked on a probe input, so callers can gather the hidden states of
the wanted positions first (`logits_at`). Architectures where no candidate reproduces the
model's own logits fall back to the full logits: exact, only slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from scoring.models import LoadedModel

Head = Callable[[torch.Tensor], torch.Tensor]
Split = tuple[torch.nn.Module, Head]


def pad_id(lm: LoadedModel) -> int:
    """The id to pad masked-LM inputs with."""
    # RoBERTa derives position ids from the pad id given in its config: pad with exactly that.
    cfg_pad = getattr(lm.model.config, "pad_token_id", None)
    if cfg_pad is not None:
        return int(cfg_pad)
    tok_pad = getattr(lm.tokenizer, "pad_token_id", None)
    return int(tok_pad) if tok_pad is not None else 0


def mlm_logits(output: Any) -> torch.Tensor:
    """The vocabulary logits of a masked LM's output (``*ForPreTraining`` names them apart)."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.prediction_logits


def _head_candidates(model: torch.nn.Module) -> list[Head]:
    """Known MLM heads that act on each position independently (so they can be gathered)."""
    out: list[Head] = []
    cls = getattr(model, "cls", None)
    if cls is not None and hasattr(cls, "predictions"):  # BERT, MegatronBERT, ...
        out.append(cls.predictions)
    if cls is not None and not hasattr(cls, "predictions"):  # DeBERTa-v2 legacy head
        out.append(cls)
    lm_head = getattr(model, "lm_head", None)
    if isinstance(lm_head, torch.nn.Module):  # RoBERTa, XLM-R, CamemBERT, MPNet, ...
        out.append(lm_head)
    predictions = getattr(model, "predictions", None)
    if isinstance(predictions, torch.nn.Module):  # ALBERT
        out.append(predictions)
    if all(hasattr(model, a) for a in ("vocab_transform", "vocab_layer_norm", "vocab_projector")):
        m: Any = model  # DistilBERT

        def distil(h: torch.Tensor) -> torch.Tensor:
            act = m.activation(m.vocab_transform(h))
            return m.vocab_projector(m.vocab_layer_norm(act))

        out.append(distil)
    if hasattr(model, "generator_predictions") and hasattr(model, "generator_lm_head"):
        m2: Any = model  # ELECTRA generator

        def electra(h: torch.Tensor) -> torch.Tensor:
            return m2.generator_lm_head(m2.generator_predictions(h))

        out.append(electra)
    head, decoder = getattr(model, "head", None), getattr(model, "decoder", None)
    if isinstance(head, torch.nn.Module) and isinstance(decoder, torch.nn.Module):
        hd, dec = head, decoder  # ModernBERT

        def modern(h: torch.Tensor) -> torch.Tensor:
            return dec(hd(h))

        out.append(modern)
    return out


def split_model(lm: LoadedModel, probe: list[int]) -> Split | None:
    """Find (body, head) with head(body(x)) == model(x).logits, checked on a probe input.

    Returns None for architectures where no candidate reproduces the model's own logits;
    callers then use the full logits (exact, only slower).
    """
    model = lm.model
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        return None
    ids = torch.tensor([probe], device=lm.device)
    with torch.inference_mode():
        try:
            want = mlm_logits(model(input_ids=ids))[0]
            hidden = body(input_ids=ids)[0][0]
        except (TypeError, ValueError, RuntimeError):
            return None
        for head in _head_candidates(model):
            try:
                got = head(hidden)
            except (TypeError, ValueError, RuntimeError):
                continue
            if got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                return body, head
    return None


def logits_at(
    lm: LoadedModel,
    split: Split | None,
    ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Vocabulary logits [len(rows), V] at ``(rows[i], positions[i])`` of one batch.

    With a split model the head runs on the gathered positions only; without one the full
    logits are computed and gathered. The caller chooses the grad/autocast context.
    """
    if split is not None:
        body, head = split
        hidden = body(input_ids=ids, attention_mask=attention_mask)[0]
        return head(hidden[rows, positions])
    return mlm_logits(lm.model(input_ids=ids, attention_mask=attention_mask))[rows, positions]

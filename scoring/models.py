"""Load masked and causal language models by preset, hub name or local folder.

Everything that touches `from_pretrained` lives here, so the rest of the code gets a
`LoadedModel` (model + tokenizer + where it came from) and never cares about the origin.
Which names are presets and how a name becomes a folder is `scoring.presets`.

``trust_remote_code`` stays off: a model that needs custom code is refused rather than
executed.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from scoring.decoder_mlm import DecoderMLMSpec, is_decoder_mlm_folder, load_decoder_mlm
from scoring.devices import resolve_device
from scoring.errors import ModelLoadError
from scoring.presets import (
    KIND_WORD,
    PRESETS,
    Kind,
    cache_root,
    preset_hint,
    preset_status,
    resolve_source,
)

__all__ = [
    "DEFAULT_CAUSAL",
    "DEFAULT_MLM",
    "Kind",
    "LoadedModel",
    "ModelLoadError",
    "cache_root",
    "check_kind",
    "in_bf16",
    "load_causal",
    "load_fresh",
    "load_mlm",
    "load_model",
    "preset_status",
    "resolve_source",
]

DEFAULT_MLM = "tiny-bert"
DEFAULT_CAUSAL = "smollm2-135m"


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with its tokenizer."""

    name: str  # what the user asked for
    kind: Kind
    model: torch.nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerBase (untyped upstream)
    source: str  # folder or hub id actually loaded

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """Longest sequence (in tokens, special tokens included) the model accepts."""
        cfg = self.model.config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            n = n - 2 if n else n  # RoBERTa offsets positions by padding_idx + 1
        return int(n) if n else 512


_MLM_SUFFIXES = ("ForMaskedLM", "ForPreTraining")


def _check_architectures(name: str, kind: Kind, archs: list[str]) -> None:
    """Refuse a model whose config names only architectures of the other kind."""
    is_mlm_arch = any(a.endswith(_MLM_SUFFIXES) for a in archs)
    is_causal_arch = any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)
    if kind == "mlm" and is_causal_arch and not is_mlm_arch:
        raise ModelLoadError(f"{name!r} is a causal LM ({archs[0]}), not a masked LM")
    if kind == "causal" and is_mlm_arch and not is_causal_arch:
        raise ModelLoadError(f"{name!r} is a masked LM ({archs[0]}), not a causal LM")


def _check_kind(name: str, kind: Kind, model: torch.nn.Module, tokenizer: object) -> None:
    if kind == "mlm" and getattr(tokenizer, "mask_token_id", None) is None:
        raise ModelLoadError(f"{name!r} has no mask token, so it cannot be used as a masked LM")
    _check_architectures(name, kind, list(getattr(model.config, "architectures", None) or []))


def check_kind(name: str, kind: Kind) -> None:
    """Refuse, without loading or converting anything, a model that cannot be `kind`.

    For an option that names a model the command does not load now (a run records its
    judge model for later comparisons): a preset of the other kind, a file, a folder without
    config.json, or one whose config.json names only the other kind's architectures. Hub ids
    pass; loading checks them, and the mask token, fully.
    """
    if not name or not name.strip():
        raise ModelLoadError(f"empty model name; presets: {preset_hint()}")
    preset = PRESETS.get(name)
    if preset is not None:
        if preset.kind != kind:
            raise ModelLoadError(
                f"preset {name!r} is a {KIND_WORD[preset.kind]}, not a {KIND_WORD[kind]}"
            )
        return
    source = resolve_source(name, kind)  # no preset: only checks the folder, if it is one
    if is_decoder_mlm_folder(source):
        if kind != "mlm":
            raise ModelLoadError(f"{name!r} is a masked LM (a decoder-MLM adapter), not a {KIND_WORD[kind]}")
        return
    config = Path(source) / "config.json"
    if not config.exists():
        return  # a hub id
    try:
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read {config}: {exc}") from exc
    _check_architectures(name, kind, [str(a) for a in archs])


_cache: dict[tuple[str, Kind, str], LoadedModel] = {}
_lock = threading.Lock()


def load_model(name: str, kind: Kind, device: str = "cpu") -> LoadedModel:
    """Load (once per process) a masked or causal LM by preset, folder or hub id
    (``device="auto"``: CUDA when available, see `scoring.devices.resolve_device`)."""
    device = resolve_device(device)
    key = (name, kind, device)
    with _lock:
        if key in _cache:
            return _cache[key]
        loaded = _load_uncached(name, kind, device)
        _cache[key] = loaded
        return loaded


def load_fresh(name: str, kind: Kind, device: str = "cpu") -> LoadedModel:
    """A new copy of a model, shared with nobody (`load_model` caches one per process): for
    training it, or merging an adapter into its weights."""
    return _load_uncached(name, kind, resolve_device(device))


def load_mlm(name: str = DEFAULT_MLM, device: str = "cpu") -> LoadedModel:
    return load_model(name, "mlm", device)


def load_causal(name: str = DEFAULT_CAUSAL, device: str = "cpu") -> LoadedModel:
    return load_model(name, "causal", device)


_bf16: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def in_bf16(lm: LoadedModel) -> LoadedModel:
    """``lm`` with a bfloat16 copy of its model (made once per model object, kept while the
    model lives); the fp32 model stays as it is for the scorers, which must be exact.

    A copy converted once rather than autocast: autocast casts every weight again on each
    forward pass, which cost ~30% of bf16's gain on small passes (SmolLM2, one CPU core).
    """
    if next(lm.model.parameters()).dtype == torch.bfloat16:
        return lm
    with _lock:
        model = _bf16.get(lm.model)
        if model is None:
            model = _bf16[lm.model] = copy.deepcopy(lm.model).to(torch.bfloat16).eval()
    return replace(lm, model=model)


def _load_uncached(name: str, kind: Kind, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not name or not name.strip():
        raise ModelLoadError(f"empty model name; presets: {preset_hint()}")
    source = resolve_source(name, kind)
    if kind == "mlm" and is_decoder_mlm_folder(source):
        return _load_decoder_mlm(name, Path(source), device)
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights not used" chatter is expected here
    hf_logging.disable_progress_bar()
    try:
        try:
            # Local folder or hub cache first: without a network a hub lookup retries for ~40 s.
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = auto.from_pretrained(source, dtype=torch.float32, local_files_only=True)
        except OSError:
            if Path(source).exists() or _offline():
                raise
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = auto.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.rstrip(". ")  # we end the sentence ourselves
        if "Unrecognized configuration class" in first or "Unrecognized model" in first:
            other: Kind = "causal" if kind == "mlm" else "mlm"
            first = f"its architecture has no {KIND_WORD[kind]} head (is it a {KIND_WORD[other]}?)"
        raise ModelLoadError(
            f"cannot load {name!r} as a {KIND_WORD[kind]}: {first}. Presets: {preset_hint()}"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    _check_kind(name, kind, model, tokenizer)
    # Mark transformers' generic "sequence length is longer than the specified maximum"
    # warning as already given: every caller checks lengths against `LoadedModel.max_length`
    # and refuses a too-long input with one clear line, which the warning would precede.
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True
    if kind == "causal" and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # generate() and batching need a pad id
    model.eval().to(device)
    return LoadedModel(name=name, kind=kind, model=model, tokenizer=tokenizer, source=source)


def _load_decoder_mlm(name: str, folder: Path, device: str) -> LoadedModel:
    """A decoder-MLM adapter folder: its base causal LM (a fresh copy: the adapter is merged
    into the weights) with the adapter applied, presented as a masked LM."""
    spec = DecoderMLMSpec.read(folder)
    if spec.base == name:
        raise ModelLoadError(f"{str(folder)!r} names itself as its base model")
    base = _load_uncached(spec.base, "causal", "cpu")
    preset = PRESETS.get(name)
    attention: Any = preset.attention if preset is not None and preset.attention else None
    model, tokenizer, _ = load_decoder_mlm(folder, base.model, base.tokenizer, attention)
    model.to(device)
    return LoadedModel(name=name, kind="mlm", model=model, tokenizer=tokenizer, source=str(folder))


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )

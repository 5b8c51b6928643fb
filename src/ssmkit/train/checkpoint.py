"""Checkpoints: model weights as safetensors, trainer state and config beside them.

Each save writes a new folder ``ckpt-<step>.tmp`` (every file fsynced), renames it to
``ckpt-<step>`` and then atomically replaces the ``LATEST`` pointer (and ``BEST``, when the
checkpoint is the best by validation so far), so an interruption at any moment leaves the
previous checkpoints intact. The run's manifest (``run.json``) lists the checkpoints this run
wrote: rotation removes only those, never a folder the trainer did not write, and never the
ones ``LATEST`` or ``BEST`` name.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from safetensors.torch import load_file, save

from .._io import atomic_write, atomic_write_json, atomic_write_text, fsync_dir

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "CheckpointError", "MANIFEST",
           "TRAINER_STATE_KEYS", "read_manifest"]

MANIFEST = "run.json"
TRAINER_STATE_KEYS = ("optimizer", "step", "rng")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupt."""


def read_manifest(run_dir) -> Dict[str, Any]:
    """The run's manifest: ``{"checkpoints": [names this run wrote]}`` (empty if absent)."""
    p = Path(run_dir) / MANIFEST
    if not p.is_file():
        return {"checkpoints": []}
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
            raise ValueError("no checkpoint list")
    except ValueError as exc:
        raise CheckpointError(f"run manifest {str(p)!r} is corrupt: {exc}") from None
    return data


def _write_manifest(run_dir: Path, names: List[str]) -> None:
    atomic_write_json(run_dir / MANIFEST, {"written_by": "ssmkit train", "checkpoints": sorted(set(names))})


def _pointer(run_dir: Path, name: str):
    p = run_dir / name
    return p.read_text().strip() if p.is_file() else None


def save_checkpoint(run_dir, step: int, model: torch.nn.Module, trainer_state: Dict[str, Any], config: Dict[str, Any],
                    keep: int = 1, best: bool = False) -> Path:
    """Write ``ckpt-<step>`` into ``run_dir`` and point ``LATEST`` (and ``BEST`` if ``best``) at it;
    then remove this run's older checkpoints beyond the ``keep`` most recent (``LATEST`` and
    ``BEST`` are always kept)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}"
    final, tmp = run_dir / name, run_dir / f"{name}.tmp"
    owned = read_manifest(run_dir)["checkpoints"]
    if final.exists() and name not in owned:
        raise CheckpointError(f"{str(final)!r} exists but was not written by this run; it is left untouched")
    _write_manifest(run_dir, owned + [name])  # listed before it exists: a crash leaves no unlisted folder
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(tmp / "model.safetensors", save(state, metadata={"step": str(step)}))
    atomic_write(tmp / "trainer.pt", lambda fh: torch.save(trainer_state, fh))
    atomic_write_json(tmp / "config.json", config)
    if final.exists():  # this run's own folder for the same step (written before a crash): replaced
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    atomic_write_text(run_dir / "LATEST", name + "\n")
    if best:
        atomic_write_text(run_dir / "BEST", name + "\n")
    protected = {name, _pointer(run_dir, "BEST"), _pointer(run_dir, "LATEST")}
    olds = sorted(n for n in set(owned) if n not in protected and (run_dir / n).is_dir())
    doomed = olds[: max(0, len(olds) - (keep - 1))]
    for n in doomed:
        shutil.rmtree(run_dir / n, ignore_errors=True)
    if doomed:
        _write_manifest(run_dir, [n for n in owned + [name] if n not in doomed])
    return final


def latest_checkpoint(path, which: str = "latest") -> Path:
    """The checkpoint folder for ``path``: a run folder (via its ``LATEST`` pointer, or ``BEST``
    when ``which="best"`` and the run has one) or a ``ckpt-*`` folder itself."""
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    pointer = "BEST" if which == "best" and (p / "BEST").is_file() else "LATEST"
    if (p / pointer).is_file():
        name = (p / pointer).read_text().strip()
        p = p / name
        if not p.is_dir():
            raise CheckpointError(f"checkpoint pointer {pointer} names {name!r}, which is missing")
    if not (p / "model.safetensors").is_file() or not (p / "config.json").is_file():
        raise CheckpointError(f"{str(p)!r} is not a checkpoint (model.safetensors and config.json expected)")
    return p


def load_checkpoint(path, load_trainer_state: bool = True, which: str = "latest"
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    """``(model_state, trainer_state, config)``; a corrupt or incomplete file raises :class:`CheckpointError`."""
    p = latest_checkpoint(path, which)
    try:
        weights = load_file(str(p / "model.safetensors"))
    except Exception as exc:
        raise CheckpointError(f"checkpoint weights {str(p / 'model.safetensors')!r} are corrupt: {exc}") from None
    try:
        config = json.loads((p / "config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError(f"expected a mapping, got {type(config).__name__}")
    except Exception as exc:
        raise CheckpointError(f"checkpoint config {str(p / 'config.json')!r} is corrupt: {exc}") from None
    trainer_state: Dict[str, Any] = {}
    if load_trainer_state:
        where = str(p / "trainer.pt")
        try:
            trainer_state = torch.load(p / "trainer.pt", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"checkpoint trainer state {where!r} is missing or corrupt: {exc}") from None
        if not isinstance(trainer_state, dict):
            raise CheckpointError(f"checkpoint trainer state {where!r} is corrupt: not a mapping")
        missing = [k for k in TRAINER_STATE_KEYS if k not in trainer_state]
        if missing:
            raise CheckpointError(f"checkpoint trainer state {where!r} is corrupt: it lacks {', '.join(missing)}")
    return weights, trainer_state, config

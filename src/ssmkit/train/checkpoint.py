"""Checkpoints: model weights as safetensors, trainer state and config beside them.

Each save writes a new folder ``ckpt-<step>.tmp``, renames it to ``ckpt-<step>`` and then
atomically replaces the ``LATEST`` pointer (temp file + ``os.replace``), so an interruption
at any moment leaves the previous checkpoint intact; older folders are removed only after.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupt."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir, step: int, model: torch.nn.Module, trainer_state: Dict[str, Any], config: Dict[str, Any],
                    keep: int = 1) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f"ckpt-{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(run_dir / "LATEST", final.name + "\n")
    olds = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp") and p != final)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(path) -> Path:
    """The checkpoint folder for ``path``: a run folder (via ``LATEST``) or a ``ckpt-*`` folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if (p / "LATEST").is_file():
        name = (p / "LATEST").read_text().strip()
        p = p / name
        if not p.is_dir():
            raise CheckpointError(f"checkpoint pointer LATEST names {name!r}, which is missing")
    if not (p / "model.safetensors").is_file() or not (p / "config.json").is_file():
        raise CheckpointError(f"{str(p)!r} is not a checkpoint (model.safetensors and config.json expected)")
    return p


def load_checkpoint(path, load_trainer_state: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    """``(model_state, trainer_state, config)``; a corrupt file raises :class:`CheckpointError`."""
    p = latest_checkpoint(path)
    try:
        weights = load_file(str(p / "model.safetensors"))
    except Exception as exc:
        raise CheckpointError(f"checkpoint weights {str(p / 'model.safetensors')!r} are corrupt: {exc}") from None
    try:
        config = json.loads((p / "config.json").read_text())
    except Exception as exc:
        raise CheckpointError(f"checkpoint config {str(p / 'config.json')!r} is corrupt: {exc}") from None
    trainer_state: Dict[str, Any] = {}
    if load_trainer_state:
        try:
            trainer_state = torch.load(p / "trainer.pt", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"checkpoint trainer state {str(p / 'trainer.pt')!r} is missing or corrupt: {exc}") from None
    return weights, trainer_state, config

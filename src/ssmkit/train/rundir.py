"""The run folder policy: what training may write where, and how it cleans up after itself.

- A new run writes only into a folder that does not exist yet or is empty; a folder holding
  anything else (another run, a user's files, ``ckpt-*`` folders of unknown origin) is refused,
  so training never deletes or overwrites what it did not write.
- A run that fails before its first checkpoint (divergence, a bad option found late) removes
  exactly the files it created, and the folder if it created it: the folder is left as found.
- Resuming truncates ``metrics.jsonl`` to the rows up to the checkpoint's step (atomically), so
  after an interruption and ``--resume`` every step appears once.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from .._io import atomic_write_text
from .checkpoint import CheckpointError

__all__ = ["RunFolder", "MetricsLog", "truncate_metrics"]


class RunFolder:
    """Checks ``path`` for a new run or a resume and remembers what this run created."""

    def __init__(self, path, resume: bool):
        self.path = Path(path)
        self.resume = resume
        self.created_dir = False
        self.checkpointed = False  # set once this run has written a checkpoint

    def check(self) -> None:
        """Refuse a folder this run may not use (no side effects)."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise ValueError(f"out_dir {str(p)!r} is a file, not a folder")
        has_ckpt = (p / "LATEST").is_file()
        if self.resume:
            if not has_ckpt:
                raise CheckpointError(f"nothing to resume in {str(p)!r} (no checkpoint found)")
            return
        if has_ckpt:
            raise ValueError(f"{str(p)!r} already holds a run: pass --resume to continue it or choose another --out")
        if p.is_dir():
            names = sorted(c.name for c in p.iterdir())
            if names:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                raise ValueError(f"{str(p)!r} is not empty and holds no checkpoint ({shown}): a new run is written only "
                                 f"into a new or empty folder; choose another --out or remove those files yourself")

    def create(self) -> None:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            self.created_dir = True

    def abandon(self) -> None:
        """After a failure: a new run that wrote no checkpoint yet removes everything in its folder
        (the folder was new or empty when it started) and the folder itself if it made it."""
        if self.resume or self.checkpointed or not self.path.is_dir():
            return
        for c in self.path.iterdir():
            if c.is_dir() and not c.is_symlink():
                shutil.rmtree(c, ignore_errors=True)
            else:
                c.unlink(missing_ok=True)
        if self.created_dir:
            self.path.rmdir()


def _rows(path: Path) -> List[str]:
    return path.read_text().splitlines() if path.is_file() else []


def truncate_metrics(path, step: int) -> int:
    """Keep the rows of ``path`` logged at or before ``step`` (and drop a torn last line);
    rewrite atomically. Returns the number of rows removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in _rows(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(l + "\n" for l in kept))
    return dropped


class MetricsLog:
    """Appends one JSON row per call to ``metrics.jsonl``; a context manager, so the file is
    closed on every path (errors included). ``path=None``: a no-op (non-main processes)."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self._fh = None

    def __enter__(self) -> "MetricsLog":
        if self.path is not None:
            self._fh = open(self.path, "a")
        return self

    def write(self, row: Dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            try:
                os.fsync(self._fh.fileno())
            except OSError:
                pass
            self._fh.close()
            self._fh = None

    def __exit__(self, *exc) -> None:
        self.close()

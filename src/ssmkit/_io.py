"""Crash-safe file writes shared by every package that saves files.

:func:`atomic_write` writes to a temporary file beside the target, flushes and fsyncs it, then
renames it over the target with ``os.replace`` (atomic on POSIX and Windows) and fsyncs the
folder, so a reader sees either the old file or the complete new one, never a torn write, even
after a crash or a ``kill -9``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "fsync_dir"]

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
    """Make a rename inside folder ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, data: Union[bytes, Callable[[Any], None]]) -> Path:
    """Replace ``path`` atomically with ``data`` (bytes, or a function that writes to a binary
    file object, e.g. ``lambda fh: fig.savefig(fh, format="png")``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """:func:`atomic_write` of ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")

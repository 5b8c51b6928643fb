"""Time-series classification from UCR/UEA archive files given by path (Dau et al. 2019).

- ``.tsv`` / ``.txt`` / ``.csv`` (the UCR 2018 format): one series per line, the label in the first
  column, then the values; variable-length series are padded with ``NaN`` in the files, and
  the trailing ``NaN`` are dropped here (the batch is re-padded with a mask).
- ``.arff`` (univariate): numeric attributes then the class attribute last.

Labels (strings or numbers) are mapped to 0..C-1 in sorted order, the same map for train and
test. Values are z-normalised per series unless ``normalize=False``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Tuple

import torch

from .base import Task
from .synthetic import TensorDataset

__all__ = ["ucr", "read_ucr"]


class _SeqDataset(TensorDataset):
    pass


def _read_delimited(path: Path) -> Tuple[List[str], List[List[float]]]:
    labels, rows = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line:
            continue
        parts = line.replace(",", " ").replace("\t", " ").split()
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"{path}: line {i + 1} has a non-numeric value") from None
        labels.append(parts[0])
        rows.append(values)
    return labels, rows


def _read_arff(path: Path) -> Tuple[List[str], List[List[float]]]:
    labels, rows, in_data = [], [], False
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        if line.lower().startswith("@data"):
            in_data = True
            continue
        if not in_data:
            if line.lower().startswith("@attribute") and "relational" in line.lower():
                raise ValueError(f"{path}: multivariate (relational) ARFF is not supported; use the .ts or per-dimension files")
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            values = [float("nan") if v == "?" else float(v) for v in parts[:-1]]
        except ValueError:
            raise ValueError(f"{path}: data line {i + 1} has a non-numeric value") from None
        labels.append(parts[-1].strip("'\""))
        rows.append(values)
    return labels, rows


def read_ucr(path) -> Tuple[List[str], List[torch.Tensor]]:
    """Labels and series (each a float tensor of its own length) from one archive file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"time-series file {str(p)!r} does not exist")
    labels, rows = _read_arff(p) if p.suffix.lower() == ".arff" else _read_delimited(p)
    if not rows:
        raise ValueError(f"{p}: no series found")
    series = []
    for i, r in enumerate(rows):
        while r and math.isnan(r[-1]):
            r = r[:-1]
        if not r:
            raise ValueError(f"{p}: series {i + 1} is empty")
        t = torch.tensor(r, dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{p}: series {i + 1} has NaN or infinite values inside it")
        series.append(t)
    return labels, series


def ucr(seed: int = 0, train_path: str = "", test_path: str = "", normalize: bool = True) -> Task:
    """A classification task from a UCR/UEA train file and test file."""
    if not train_path or not test_path:
        raise ValueError("ucr needs train_path and test_path (UCR .tsv or .arff files)")
    ltr, xtr = read_ucr(train_path)
    lte, xte = read_ucr(test_path)
    classes = sorted(set(ltr) | set(lte), key=lambda s: (float(s), s) if _isnum(s) else (math.inf, s))
    index = {c: i for i, c in enumerate(classes)}

    def prep(xs):
        out = []
        for x in xs:
            if normalize and len(x) > 1:
                x = (x - x.mean()) / x.std().clamp(min=1e-8)
            out.append(x.unsqueeze(-1))
        return out

    train = _SeqDataset(prep(xtr), torch.tensor([index[l] for l in ltr]))
    test = _SeqDataset(prep(xte), torch.tensor([index[l] for l in lte]))
    max_len = max(len(x) for x in xtr + xte)
    return Task("ucr", "classify", train, test, d_input=1, num_classes=len(classes), max_len=max_len,
                description=f"UCR/UEA files {Path(train_path).name}, {Path(test_path).name}")


def _isnum(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False

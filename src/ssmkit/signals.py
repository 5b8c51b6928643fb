"""Test signals for the HiPPO memories: built-in ones generated from a seed, or a column of a CSV file.

- ``whitenoise``: band-limited white noise, random Fourier coefficients up to ``bandlimit``
  cycles over the record (the test signal of the HiPPO paper, Gu et al. 2020);
- ``sine``: a sum of three sinusoids of at most ``bandlimit`` cycles;
- ``steps``: a piecewise-constant signal with 12 random levels;
- a path to a ``.csv`` file: its first column (:func:`read_csv_column`).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from ._checks import check_float, check_int

__all__ = ["SIGNALS", "make_signal", "read_csv_column"]

SIGNALS = ("whitenoise", "sine", "steps")


def make_signal(name: str, length: int, seed: int = 0, bandlimit: float = 8.0) -> torch.Tensor:
    """A built-in test signal of ``length`` samples (float64), or one read from a CSV file
    (``name`` a path ending in ``.csv``; ``length`` is then ignored)."""
    if not isinstance(name, (str, Path)):
        raise TypeError(f"signal must be one of {', '.join(SIGNALS)} or a path to a .csv file, got {name!r}")
    name = str(name)
    if name in SIGNALS:
        check_int("length", length, minimum=2)
        check_int("seed", seed)
        check_float("bandlimit", bandlimit, low=0.0, low_open=True)
    g = torch.Generator().manual_seed(seed)
    t = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    if name == "whitenoise":
        K = max(1, int(bandlimit))
        k = torch.arange(1, K + 1, dtype=torch.float64)
        a, b = torch.randn(2, K, generator=g, dtype=torch.float64) / math.sqrt(K)
        return (a[:, None] * torch.cos(2 * math.pi * k[:, None] * t) + b[:, None] * torch.sin(2 * math.pi * k[:, None] * t)).sum(0)
    if name == "sine":
        f = torch.tensor([1.0, 0.45, 1.0], dtype=torch.float64) * bandlimit * torch.tensor([0.25, 0.6, 1.0], dtype=torch.float64)
        return torch.sin(2 * math.pi * f[0] * t) + 0.6 * torch.sin(2 * math.pi * f[1] * t + 1.0) + 0.3 * torch.cos(2 * math.pi * f[2] * t)
    if name == "steps":
        levels = torch.randn(12, generator=g, dtype=torch.float64)
        return levels[(t * 12).long().clamp(max=11)]
    if Path(name).suffix.lower() != ".csv":
        raise ValueError(f"unknown signal {name!r}; expected one of {', '.join(SIGNALS)} or a path to a .csv file")
    return read_csv_column(name)


def read_csv_column(path) -> torch.Tensor:
    """The first column of a UTF-8 CSV file as a float64 tensor: at least 2 finite numbers; a
    header row is skipped, empty rows are ignored; anything else is a ValueError naming the file."""
    name = str(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"signal file {name!r} does not exist")
    if not path.is_file():
        raise ValueError(f"signal file {name!r} is not a regular file")
    values = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if not row or not row[0].strip():
                    continue
                try:
                    values.append(float(row[0]))
                except ValueError:
                    if i == 0:
                        continue  # header
                    raise ValueError(f"signal file {name!r}: row {i + 1} is not a number: {row[0]!r}") from None
    except UnicodeDecodeError:
        raise ValueError(f"signal file {name!r} is not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise ValueError(f"signal file {name!r} is not a valid CSV file: {exc}") from None
    if len(values) < 2:
        raise ValueError(f"signal file {name!r} must hold at least 2 numbers in its first column, found {len(values)}")
    u = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(u).all()):
        raise ValueError(f"signal file {name!r} contains NaN or infinite values")
    return u

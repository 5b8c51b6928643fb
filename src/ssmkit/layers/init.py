"""Parameter initialisations shared by several layer families."""
from __future__ import annotations

import math

import torch

from .._checks import check_dt_range, check_positive_int

__all__ = ["log_uniform_dt"]


def log_uniform_dt(n: int, dt_min: float, dt_max: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``log Δ`` for ``n`` channels, uniform in ``[log dt_min, log dt_max]`` (the S4 papers' init).

    The range is checked once here (``0 < dt_min <= dt_max``), so every layer applies the same rule.
    ``dtype`` is the dtype the random numbers are drawn in (it changes which numbers a seed gives).
    """
    check_positive_int("n", n)
    lo, hi = check_dt_range(dt_min, dt_max)
    return torch.rand(n, dtype=dtype) * (math.log(hi) - math.log(lo)) + math.log(lo)

"""Parameter initialisations shared by several layer families."""
from __future__ import annotations

import math

import torch

from .._checks import check_dt_range, check_float, check_positive_int

__all__ = ["log_uniform_dt", "mimetic_A_log", "tie_rows_", "MAMBA_INITS"]


def log_uniform_dt(n: int, dt_min: float, dt_max: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``log Δ`` for ``n`` channels, uniform in ``[log dt_min, log dt_max]`` (the S4 papers' init).

    The range is checked once here (``0 < dt_min <= dt_max``), so every layer applies the same rule.
    ``dtype`` is the dtype the random numbers are drawn in (it changes which numbers a seed gives).
    """
    check_positive_int("n", n)
    lo, hi = check_dt_range(dt_min, dt_max)
    return torch.rand(n, dtype=dtype) * (math.log(hi) - math.log(lo)) + math.log(lo)


#: the initialisations a Mamba-family layer accepts as ``init=...``
MAMBA_INITS = ("default", "mimetic")


def mimetic_A_log(shape, a_min: float = 1e-3, a_max: float = 0.05,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``log |A|`` for the mimetic initialisation: ``|A|`` log-uniform in ``[a_min, a_max]``.

    Mimetic initialisation (Trockman, Harutyunyan, Kolter, Kumar & Bhojanapalli 2024, "Mimetic
    Initialization Helps State Space Models Learn to Recall", arXiv 2410.11135) starts a selective
    SSM close to linear attention: the state should barely decay, ``a_t = exp(Δ_t A) ≈ 1``, so that
    the output ``y_t = Σ_{s<=t} (Π_{s<r<=t} a_r) (C_tᵀ B_s) Δ_s x_s`` weighs every past token by the
    "attention score" ``C_tᵀ B_s`` rather than by its distance. With ``A = -|A|`` and a step
    ``Δ <= dt_max`` the per-step decay is at least ``exp(-dt_max · a_max)``, i.e. at least
    ``exp(-0.005) ≈ 0.995`` with the defaults (``dt_max = 0.1``), against ``exp(-0.1 · N)`` for
    the S4D-Real init ``A_n = -(n + 1)``. ``|A|`` stays strictly positive so the layer can still
    learn to forget (``A = -exp(A_log)`` keeps its sign during training).
    """
    lo = check_float("a_min", a_min, low=0.0, low_open=True)
    hi = check_float("a_max", a_max, low=lo)
    u = torch.rand(shape, dtype=dtype)
    return u * (math.log(hi) - math.log(lo)) + math.log(lo)


def tie_rows_(weight: torch.Tensor, src: slice, dst: slice) -> torch.Tensor:
    """Copy the rows ``weight[src]`` onto ``weight[dst]`` in place (no autograd) and return
    ``weight``. The mimetic initialisation uses it to make the projection that gives ``C_t`` equal
    to the one that gives ``B_t`` (``W_C = W_B``), so ``C_tᵀ B_s = x_tᵀ W_Bᵀ W_B x_s`` behaves like
    attention with tied query and key: largest for ``x_s`` aligned with ``x_t`` (Trockman et al.
    2024, arXiv 2410.11135)."""
    with torch.no_grad():
        weight[dst].copy_(weight[src])
    return weight


def check_pair(name: str, v) -> tuple:
    """A ``(low, high)`` pair of reals with ``0 < low <= high`` (e.g. ``mimetic_A_range``)."""
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {v!r}")
    lo = check_float(name, v[0], low=0.0, low_open=True)
    hi = check_float(name, v[1], low=lo)
    return lo, hi

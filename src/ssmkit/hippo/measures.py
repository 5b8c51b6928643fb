"""HiPPO transition matrices ``(A, B)`` for the continuous-time memory ``x' = A x + B u``.

Gu, Dao, Ermon, Rudra, Ré, "HiPPO: Recurrent Memory with Optimal Polynomial Projections"
(NeurIPS 2020), §2–3 and Appendix D. Every measure keeps the coefficients ``c_n(t)`` of the
best L2 approximation of the history of ``u`` in an orthonormal basis ``g_n`` (see
:func:`ssmkit.hippo.basis`); differentiating in ``t`` closes into the linear ODE below.

==========  =====================================  ==============================================
measure     history kept (weight)                  ODE
==========  =====================================  ==============================================
``legt``    sliding window [t-θ, t], uniform       ``x' = A x + B u`` (Legendre, translated)
``lmu``     the same, in the LMU basis             ``x' = A x + B u`` (docs/math.md §1.3: LegT, rescaled)
``legs``    whole history [0, t], uniform          ``x' = (1/t) A x + (1/t) B u`` (Legendre, scaled)
``lagt``    all of (-∞, t], weight e^{-(t-s)}      ``x' = A x + B u`` (Laguerre, translated)
``fout``    sliding window [t-θ, t], uniform       ``x' = A x + B u`` (Fourier, translated)
==========  =====================================  ==============================================
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._checks import check_choice, check_positive, check_positive_int

__all__ = ["MEASURES", "transition"]

MEASURES = ("legt", "lmu", "legs", "lagt", "fout")


def _legt(N: int, theta: float, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    # A_nk = -(1/θ) √((2n+1)(2k+1)) · (1 if k <= n else (-1)^(n-k)),  B_n = (1/θ) √(2n+1)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    row, col = n[:, None], n[None, :]
    sign = torch.where(col <= row, torch.ones(()), (-1.0) ** (row - col))
    A = -(r[:, None] * r[None, :]) * sign / theta
    B = r / theta
    return A.to(dtype), B.to(dtype)


def _lmu(N: int, theta: float, dtype):
    # docs/math.md §1.3: the LegT system after the change of basis x -> diag(√(2n+1)) x,
    # A_nk = -(2n+1)/θ · (1 if k <= n else (-1)^(n-k)),  B_n = (2n+1)/θ.
    # Its state is the LegT memory expanded in the unnormalised shifted Legendre
    # polynomials P_n(2s - 1). (Voelker et al.'s original LMU also flips the sign of every
    # odd coefficient, i.e. expands in P_n(1 - 2s); the two differ by diag((-1)^n).)
    n = torch.arange(N, dtype=torch.float64)
    row, col = n[:, None], n[None, :]
    sign = torch.where(col <= row, torch.ones(()), (-1.0) ** (row - col))
    A = -(2 * row + 1) * sign / theta
    B = (2 * n + 1) / theta
    return A.to(dtype), B.to(dtype)


def _legs(N: int, dtype):
    # A_nk = -√((2n+1)(2k+1)) (k < n), -(n+1) (k = n), 0 (k > n);  B_n = √(2n+1)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
    return A.to(dtype), r.to(dtype)


def _lagt(N: int, dtype):
    # A = I/2 - tril(ones) (diagonal -1/2, -1 below), B = 1: the coefficients of u(t - τ)
    # in the orthonormal Laguerre functions L_n(τ) e^{-τ/2} on τ >= 0.
    A = torch.eye(N, dtype=torch.float64) / 2 - torch.tril(torch.ones(N, N, dtype=torch.float64))
    B = torch.ones(N, dtype=torch.float64)
    return A.to(dtype), B.to(dtype)


def _fout(N: int, theta: float, dtype):
    # Basis on the window σ ∈ [0, 1]: g_0 = 1, g_{2k-1} = √2 cos(2πkσ), g_{2k} = √2 sin(2πkσ).
    # d/dt c = (1/θ) [ -D c + e u(t) - e u(t-θ) ] with D_nm = <g_n', g_m> and e_n = g_n(0) = g_n(1)
    # (HiPPO App. D.3). The truncated Fourier series converges at the window's ends to the mean
    # of the two endpoints, so u(t-θ) ≈ 2 eᵀc - u(t): A = -(D + 2 e eᵀ)/θ, B = 2e/θ.
    # (Using eᵀc for u(t-θ) instead, A = -(D + e eᵀ)/θ, B = e/θ, reconstructs a periodic test
    # signal about 12x worse at N = 64: see tests/test_hippo.py.)
    A = torch.zeros(N, N, dtype=torch.float64)
    e = torch.zeros(N, dtype=torch.float64)
    e[0] = 1.0
    for n in range(1, N):
        k = (n + 1) // 2
        if n % 2 == 1:  # cos_k
            e[n] = 2.0**0.5
        else:  # sin_k: g_cos' = -2πk g_sin and g_sin' = 2πk g_cos, so -D couples the pair
            A[n - 1, n] = 2 * torch.pi * k
            A[n, n - 1] = -2 * torch.pi * k
    A = (A - 2 * e[:, None] * e[None, :]) / theta
    B = 2 * e / theta
    return A.to(dtype), B.to(dtype)


def transition(measure: str, N: int, dtype: torch.dtype = torch.float64, *, theta: float = 1.0):
    """HiPPO matrices ``(A, B)`` of shape (N, N) and (N,) for ``measure`` (HiPPO paper normalisation).

    ``theta`` is the window length of the translated measures (``legt``, ``lmu``, ``fout``);
    ``legs`` is scale-free (its ODE is ``x' = (1/t)(A x + B u)``) and ``lagt`` has unit timescale.
    Computed in float64, returned in ``dtype``. With ``r_n = √(2n+1)``:

    - ``legt``: ``A_nk = -r_n r_k/θ · (1 if k ≤ n else (-1)^(n-k))``, ``B_n = r_n/θ``
    - ``lmu``:  ``A_nk = -(2n+1)/θ · (1 if k ≤ n else (-1)^(n-k))``, ``B_n = (2n+1)/θ``
      (LegT in the basis ``diag(r_n)``)
    - ``legs``: ``A_nk = -r_n r_k`` (k < n), ``-(n+1)`` (k = n), 0 (k > n); ``B_n = r_n``
    - ``lagt``: ``A_nk = -1/2`` (k = n), ``-1`` (k < n), 0 (k > n); ``B_n = 1``
    - ``fout``: ``A = -(D + 2 e eᵀ)/θ``, ``B = 2e/θ`` with ``D_nm = ⟨g_n', g_m⟩`` (the 2πk
      rotation of each cos/sin pair) and ``e_n = g_n(0)`` (1, then √2 for cos, 0 for sin)

    >>> A, B = transition("legs", 4)
    >>> torch.linalg.eigvals(A).real.sort().values
    tensor([-4., -3., -2., -1.], dtype=torch.float64)
    """
    check_choice("measure", measure, MEASURES)
    check_positive_int("N", N)
    check_positive("theta", theta)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if measure == "legt":
        return _legt(N, theta, dtype)
    if measure == "lmu":
        return _lmu(N, theta, dtype)
    if measure == "legs":
        return _legs(N, dtype)
    if measure == "lagt":
        return _lagt(N, dtype)
    return _fout(N, theta, dtype)

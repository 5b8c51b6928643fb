"""Conversions between state-space and transfer-function forms of LTI systems (docs/math.md §8).

Any discrete system ``(Ā, B̄, C)`` has a truncated generating function
``Σ_{k<L} K_k z^k = C (I - Ā^L z^L)(I - zĀ)^{-1} B̄`` which at the L-th roots of unity equals
``C̃ (I - zĀ)^{-1} B̄ = b(z)/a(z)`` with ``C̃ = C (I - Ā^L)``, ``a`` the characteristic
polynomial of ``Ā`` (reversed: ``1 + a_1 z + … + a_N z^N``) and
``b(λ) = det(λI - Ā + B̄C̃) - det(λI - Ā)`` (matrix determinant lemma). The companion
realisation of ``(a, b)`` — first row ``-a``, ones on the subdiagonal, ``B̄ = e_1``,
``C = C̃ (I - Ā^L)^{-1}`` — has the same kernel for k < L.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._checks import check_positive_int, check_tensor
from .rational import rational_kernel

__all__ = ["poly_from_roots", "ss_to_tf", "companion", "tf_to_ss"]


def poly_from_roots(roots: torch.Tensor) -> torch.Tensor:
    """Monic polynomial coefficients (highest power first, leading 1 dropped) from roots (..., N).

    Real or complex ``roots`` (any floating dtype); the result has their dtype."""
    check_tensor("roots", roots, floating=True, complex_ok=True)
    if roots.dim() < 1:
        raise ValueError("roots must have shape (..., N), got a 0-dimensional tensor")
    N = roots.shape[-1]
    c = torch.zeros(*roots.shape[:-1], N + 1, dtype=roots.dtype, device=roots.device)
    c[..., 0] = 1
    for i in range(N):
        # multiply by (λ - r_i): c_j <- c_j - r_i c_{j-1}
        c = c - torch.nn.functional.pad(c[..., :-1], (1, 0)) * roots[..., i : i + 1]
    return c[..., 1:]


def _check_ssm(Ad, Bd, C):
    check_tensor("Ad", Ad, floating=True, complex_ok=True)
    if Ad.dim() < 2 or Ad.shape[-1] != Ad.shape[-2]:
        raise ValueError(f"Ad must have shape (..., N, N), got {tuple(Ad.shape)}")
    N = Ad.shape[-1]
    check_tensor("Bd", Bd, shape=tuple(Ad.shape[:-1]), floating=True, complex_ok=True)
    check_tensor("C", C, shape=tuple(Ad.shape[:-1]), floating=True, complex_ok=True)
    return N


def ss_to_tf(Ad: torch.Tensor, Bd: torch.Tensor, C: torch.Tensor, L: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Transfer function ``(a, b)`` (each (..., N), real) of the length-L kernel of ``(Ā, B̄, C)``.

    ``Ad`` (..., N, N), ``Bd`` and ``C`` (..., N), real or complex (a complex system must have a
    real kernel, e.g. conjugate pairs of modes). Computed through eigenvalues in the input's
    precision: use float64/complex128 for small errors.
    """
    N = _check_ssm(Ad, Bd, C)
    check_positive_int("L", L)
    cdtype = torch.complex128 if Ad.dtype in (torch.float64, torch.complex128) else torch.complex64
    Ad, Bd, C = Ad.to(cdtype), Bd.to(cdtype), C.to(cdtype)
    I = torch.eye(N, dtype=cdtype, device=Ad.device)
    Ct = (C.unsqueeze(-2) @ (I - torch.linalg.matrix_power(Ad, L))).squeeze(-2)  # C̃ = C (I - Ā^L)
    a = poly_from_roots(torch.linalg.eigvals(Ad))
    full = poly_from_roots(torch.linalg.eigvals(Ad - Bd.unsqueeze(-1) * Ct.unsqueeze(-2)))
    b = full - a
    return a.real.to(Ad.real.dtype), b.real.to(Ad.real.dtype)


def companion(a: torch.Tensor) -> torch.Tensor:
    """Companion matrix (..., N, N): first row ``-a``, ones on the subdiagonal."""
    check_tensor("a", a, floating=True, complex_ok=True)
    if a.dim() < 1:
        raise ValueError("a must have shape (..., N), got a 0-dimensional tensor")
    N = a.shape[-1]
    M = torch.zeros(*a.shape[:-1], N, N, dtype=a.dtype, device=a.device)
    M[..., 0, :] = -a
    if N > 1:
        idx = torch.arange(N - 1, device=a.device)
        M[..., idx + 1, idx] = 1
    return M


def tf_to_ss(a: torch.Tensor, b: torch.Tensor, L: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Companion realisation ``(Ā, B̄, C)`` of ``b(z)/a(z)`` whose kernel for k < L is the
    truncated one: ``B̄ = e_1``, ``C = b (I - Ā^L)^{-1}``. Half-precision inputs are computed in
    float32 and returned in their dtype; no systems in (``a`` of shape (0, N)) gives none out.

    For N ≤ L, ``C`` is computed without a matrix power: with ``B̄ = e_1`` the states
    ``Ā^k e_1 = (g_k, g_{k-1}, …, g_{k-N+1})`` hold the impulse response g of ``1/a(z)``, so
    ``K_k = Σ_i C_i g_{k-i}``, i.e. ``K(z) = C(z)/a(z)`` to order N, and
    ``C_i = Σ_{m≤i} a_m K_{i-m}`` (``a_0 = 1``) from the first N lags of the FFT kernel
    :func:`ssmkit.kernels.rational_kernel`. Powers of the (very non-normal) companion matrix lose
    digits when poles cluster near the unit circle; this route keeps the kernel's accuracy.
    """
    check_tensor("a", a, floating=True)
    if a.dim() < 1:
        raise ValueError("a must have shape (..., N), got a 0-dimensional tensor")
    check_tensor("b", b, shape=tuple(a.shape), floating=True)
    check_positive_int("L", L)
    N = a.shape[-1]
    if a.numel() == 0:  # no systems (or N = 0): nothing to realise
        return companion(a), torch.zeros_like(a), torch.zeros_like(a)
    # computed in float32 at least (FFTs and solves have no half-precision CPU path)
    dtype = a.dtype
    a, b = a.to(torch.promote_types(dtype, torch.float32)), b.to(torch.promote_types(dtype, torch.float32))
    Ad = companion(a)
    if N <= L:
        K = rational_kernel(a, b, L)[..., :N]
        C = K.clone()  # m = 0 term (a_0 = 1)
        for m in range(1, N):
            C[..., m:] = C[..., m:] + a[..., m - 1 : m] * K[..., : N - m]
    else:
        I = torch.eye(N, dtype=a.dtype, device=a.device)
        M = I - torch.linalg.matrix_power(Ad, L)
        # C M = b  <=>  Mᵀ Cᵀ = bᵀ
        C = torch.linalg.solve(M.transpose(-1, -2), b.unsqueeze(-1)).squeeze(-1)
    Ad, C, a = Ad.to(dtype), C.to(dtype), a.to(dtype)
    Bd = torch.zeros_like(a)
    Bd[..., 0] = 1
    return Ad, Bd, C

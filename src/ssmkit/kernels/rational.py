"""The RTF kernel from a rational transfer function (Parnichkun et al. 2024; docs/math.md §8.2).

``K̂(z) = (b_1 + b_2 z + … + b_N z^{N-1}) / (1 + a_1 z + … + a_N z^N)`` evaluated at the L-th
roots of unity gives ``FFT_L(K)``: ``K = irfft(rfft(b) / rfft([1, a]))``, O(L log L) time and
O(L) memory per channel whatever the state size N.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import FULL_PRECISION, check_positive_int, check_tensor, value_checks_enabled

__all__ = ["rational_kernel", "rational_kernel_ref", "fold"]


def fold(p: torch.Tensor, L: int) -> torch.Tensor:
    """Reduce polynomial coefficients (..., M) modulo ``z^L - 1``: (..., L).

    At the L-th roots of unity ``z^L = 1``, so coefficient ``j`` adds onto ``j mod L``; this keeps
    the kernel exact when ``N + 1 > L``.
    """
    M = p.shape[-1]
    if M <= L:
        return torch.nn.functional.pad(p, (0, L - M))
    pad = (-M) % L
    p = torch.nn.functional.pad(p, (0, pad))
    return p.reshape(*p.shape[:-1], -1, L).sum(-2)


def rational_kernel(a: torch.Tensor, b: torch.Tensor, L: int, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kernel ``K`` (..., L) of ``h0 + b(z)/a(z)`` truncated to L terms.

    ``a``: (..., N) denominator coefficients ``a_1..a_N`` (the leading 1 is implicit);
    ``b``: (..., N) numerator coefficients ``b_1..b_N``; ``h0``: (...,) optional feed-through
    added to ``K_0``. ``b`` is the numerator of the *truncated* generating function, i.e. it
    encodes ``C̃ = C (I - Ā^L)`` (see :mod:`ssmkit.lti`).
    """
    check_tensor("a", a, dtypes=FULL_PRECISION)
    check_tensor("b", b, dtypes=FULL_PRECISION)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"a and b must have shape (..., N), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have the same number of coefficients N, got {a.shape[-1]} and {b.shape[-1]}")
    check_positive_int("L", L)
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    try:
        lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError:
        raise ValueError(f"a and b must have broadcastable leading dimensions, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}") from None
    if h0 is not None:
        check_tensor("h0", h0, shape=tuple(lead), dtypes=FULL_PRECISION)
    if lead.numel() == 0:  # an empty batch: no kernel to compute (the FFT refuses 0 rows)
        return torch.zeros(*lead, L, dtype=dtype, device=a.device)
    one = torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)
    den = torch.fft.rfft(fold(torch.cat([one, a], -1), L), n=L)
    # a zero of the denominator up to its rounding error (~(N+1) eps Σ|coefficients|): a pole on the circle
    tol = (a.shape[-1] + 1) * torch.finfo(dtype).eps * (1 + a.detach().abs().sum(-1, keepdim=True))
    if value_checks_enabled() and den.numel() and bool((den.detach().abs() <= tol).any()):
        raise ValueError("a: the denominator 1 + a_1 z + … + a_N z^N vanishes at an L-th root of unity (a pole on "
                         "the unit circle), so the kernel is not finite; keep the poles inside the unit circle")
    num = torch.fft.rfft(fold(b, L), n=L)
    K = torch.fft.irfft(num / den, n=L)
    if value_checks_enabled() and K.numel() and not bool(torch.isfinite(K).all()):
        raise ValueError("a: the kernel is not finite (a pole on or next to the unit circle)")
    if h0 is not None:
        K = K.clone()
        K[..., 0] = K[..., 0] + h0
    return K


def rational_kernel_ref(a: torch.Tensor, b: torch.Tensor, L: int) -> torch.Tensor:
    """Reference for :func:`rational_kernel` (without ``h0``): the companion realisation of
    ``b(z)/a(z)`` (first row ``-a``, ones below the diagonal, ``B̄ = e_1``) with
    ``C = b (I - Ā^L)^{-1}``, powered step by step: ``K_k = C Ā^k B̄``. O(L N²), float64 advised."""
    check_tensor("a", a, dtypes=FULL_PRECISION)
    check_tensor("b", b, shape=tuple(a.shape), dtypes=FULL_PRECISION)
    check_positive_int("L", L)
    N = a.shape[-1]
    Ad = torch.zeros(*a.shape[:-1], N, N, dtype=a.dtype, device=a.device)
    Ad[..., 0, :] = -a
    idx = torch.arange(N - 1, device=a.device)
    Ad[..., idx + 1, idx] = 1
    I = torch.eye(N, dtype=a.dtype, device=a.device)
    C = torch.linalg.solve((I - torch.linalg.matrix_power(Ad, L)).transpose(-1, -2), b.unsqueeze(-1))[..., 0]
    x = torch.zeros_like(a)
    x[..., 0] = 1
    out = []
    for _ in range(L):
        out.append((C * x).sum(-1))
        x = (Ad @ x.unsqueeze(-1))[..., 0]
    return torch.stack(out, -1)

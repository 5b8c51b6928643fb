"""The RTF kernel from a rational transfer function (Parnichkun et al. 2024; docs/math.md §8.2).

``K̂(z) = (b_1 + b_2 z + … + b_N z^{N-1}) / (1 + a_1 z + … + a_N z^N)`` evaluated at the L-th
roots of unity gives ``FFT_L(K)``: ``K = irfft(rfft(b) / rfft([1, a]))``, O(L log L) time and
O(L) memory per channel whatever the state size N.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_positive_int, check_tensor

__all__ = ["rational_kernel", "fold"]


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
    check_tensor("a", a, floating=True)
    check_tensor("b", b, floating=True)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have the same number of coefficients N, got {a.shape[-1]} and {b.shape[-1]}")
    check_positive_int("L", L)
    one = torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)
    den = torch.fft.rfft(fold(torch.cat([one, a], -1), L), n=L)
    num = torch.fft.rfft(fold(b, L), n=L)
    K = torch.fft.irfft(num / den, n=L)
    if h0 is not None:
        check_tensor("h0", h0, shape=tuple(K.shape[:-1]), floating=True)
        K = K.clone()
        K[..., 0] = K[..., 0] + h0
    return K

"""Causal (linear, not circular) convolution by FFT.

``y_k = Σ_{j≤k} K_j u_{k-j} + D u_k`` for k = 0..L-1, computed with both signals zero-padded
to length 2L so that the circular convolution of the FFT equals the linear one (docs/math.md §4.2).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_tensor

__all__ = ["fftconv", "causal_conv_ref"]


def fftconv(u: torch.Tensor, K: torch.Tensor, D: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal convolution of ``u`` (B, L, H) with per-channel kernels ``K`` (H, Lk) -> (B, L, H).

    Kernels shorter than L are zero-extended; longer ones are truncated to L. ``D`` (H,) adds
    the skip term ``D u``. O(L log L) time per channel.
    """
    check_tensor("u", u, ndim=3, floating=True)
    H = u.shape[-1]
    check_tensor("K", K, ndim=2, floating=True)
    if K.shape[0] != H:
        raise ValueError(f"K must have shape ({H}, L) to match u's {H} channels, got {tuple(K.shape)}")
    L = u.shape[1]
    if L == 0:
        raise ValueError("u must have length >= 1")
    n = 2 * L
    K = K[:, :L]
    Uf = torch.fft.rfft(u, n=n, dim=1)  # (B, n/2+1, H)
    Kf = torch.fft.rfft(K, n=n, dim=-1).transpose(0, 1)  # (n/2+1, H)
    y = torch.fft.irfft(Uf * Kf, n=n, dim=1)[:, :L]
    if D is not None:
        check_tensor("D", D, shape=(H,), floating=True)
        y = y + u * D
    return y


def causal_conv_ref(u: torch.Tensor, K: torch.Tensor, D: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same convolution by the definition (O(L²)): the reference for :func:`fftconv`."""
    B, L, H = u.shape
    y = torch.zeros_like(u)
    for k in range(L):
        for j in range(min(k + 1, K.shape[1])):
            y[:, k] += K[:, j] * u[:, k - j]
    if D is not None:
        y = y + u * D
    return y

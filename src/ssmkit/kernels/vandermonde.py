"""Kernels and state maps of diagonal SSMs (S4D), by Vandermonde products (MATH.md §5).

For ``Ā = diag(λ̄)`` the kernel ``K_k = Σ_n C_n B̄_n λ̄_n^k`` is a Vandermonde matrix-vector
product. Modes come in conjugate pairs and only one of each is stored, so real outputs are
``2 Re(·)``. Powers are formed as ``exp(k · log λ̄)`` in chunks of the length axis, so peak
memory is O(H·N·chunk) instead of O(H·N·L).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor

__all__ = ["vandermonde_kernel", "vandermonde_kernel_ref", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 1024


def vandermonde_kernel(log_dA: torch.Tensor, CB: torch.Tensor, L: int, chunk: int = DEFAULT_CHUNK,
                       conj_pairs: bool = True) -> torch.Tensor:
    """``K_k = 2 Re Σ_n CB_n exp(k · log_dA_n)`` (or without ``2 Re`` if ``conj_pairs=False``).

    ``log_dA``: (..., M) complex, the log of the discrete eigenvalues (``Δλ`` for ZOH);
    ``CB``: (..., M) complex, ``C_n B̄_n``. Returns (..., L), real when ``conj_pairs``.
    Peak extra memory: one (..., M, chunk) complex block.
    """
    check_tensor("log_dA", log_dA, floating=True, complex_ok=True)
    check_tensor("CB", CB, floating=True, complex_ok=True)
    check_positive_int("L", L)
    check_positive_int("chunk", chunk)
    log_dA, CB = torch.broadcast_tensors(log_dA, CB)
    rdtype = log_dA.real.dtype
    out = []
    for start in range(0, L, chunk):
        k = torch.arange(start, min(L, start + chunk), dtype=rdtype, device=log_dA.device)
        V = torch.exp(log_dA.unsqueeze(-1) * k)  # (..., M, chunk)
        out.append(torch.einsum("...m,...ml->...l", CB, V))
    K = torch.cat(out, dim=-1)
    return 2 * K.real if conj_pairs else K


def vandermonde_kernel_ref(dA: torch.Tensor, CB: torch.Tensor, L: int, conj_pairs: bool = True) -> torch.Tensor:
    """Reference: the full (..., M, L) matrix of powers ``dA^k`` by cumulative products."""
    powers = torch.cumprod(torch.cat([torch.ones_like(dA).unsqueeze(-1), dA.unsqueeze(-1).expand(*dA.shape, L - 1)], -1), -1)
    K = (CB.unsqueeze(-1) * powers).sum(-2)
    return 2 * K.real if conj_pairs else K

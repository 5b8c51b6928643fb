"""Kernels of diagonal SSMs (S4D) as Vandermonde products (docs/math.md §7).

For ``Ā = diag(e^{w})`` the kernel ``K_k = Σ_n CB_n e^{k w_n}`` is a Vandermonde
matrix-vector product. Modes usually come in conjugate pairs and only one of each is stored,
so real outputs are ``2 Re(·)``.

Instead of one complex exponential per (mode, lag), lags are split as ``k = q c + j``
(``0 ≤ j < c``): ``e^{k w} = e^{q c w} · e^{j w}``, so

    K_{q c + j} = Σ_n (CB_n e^{q c w_n}) · T_{n j},   T_{n j} = e^{j w_n},

one batched (⌈L/c⌉ × M) @ (M × c) matrix product. With ``c = ⌈√L⌉`` that is
``O(M √L)`` exponentials and ``O(M √L)`` extra memory per channel (plus the (…, L) output),
instead of ``M L`` of each; autograd saves only these small factors, so training is bounded
the same way. Each power is the product of two exponentials, a relative error of a few ulp.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks import check_positive_int, check_tensor

__all__ = ["vandermonde_kernel", "vandermonde_kernel_ref", "default_block"]


def default_block(L: int) -> int:
    """Block length ``c = ⌈√L⌉`` (at least 1): balances the two factors' sizes."""
    return max(1, math.isqrt(L - 1) + 1) if L > 1 else 1


def vandermonde_kernel(log_dA: torch.Tensor, CB: torch.Tensor, L: int, chunk: Optional[int] = None,
                       conj_pairs: bool = True) -> torch.Tensor:
    """``K_k = 2 Re Σ_n CB_n exp(k · log_dA_n)``, k = 0..L-1 (without ``2 Re`` if ``conj_pairs=False``).

    ``log_dA``: (..., M) complex (or real), the log of the discrete eigenvalues (``Δλ`` for ZOH);
    ``CB``: (..., M), ``C_n B̄_n``; leading dims broadcast. Returns (..., L): real when
    ``conj_pairs``, complex otherwise (a general diagonal system, e.g. odd N with a real mode).
    ``chunk``: the block length c (default ``⌈√L⌉``); extra memory is O(M (c + L/c)) per channel.
    """
    check_tensor("log_dA", log_dA, floating=True, complex_ok=True)
    check_tensor("CB", CB, floating=True, complex_ok=True)
    check_positive_int("L", L)
    c = default_block(L) if chunk is None else check_positive_int("chunk", chunk)
    c = min(c, L)
    log_dA, CB = torch.broadcast_tensors(log_dA, CB)
    cdtype = torch.promote_types(torch.promote_types(log_dA.dtype, CB.dtype), torch.complex64)
    w, CB = log_dA.to(cdtype), CB.to(cdtype)
    rdtype = w.real.dtype
    lead, M = w.shape[:-1], w.shape[-1]
    w, CB = w.reshape(-1, M), CB.reshape(-1, M)  # (G, M)
    Q = -(-L // c)
    j = torch.arange(c, dtype=rdtype, device=w.device)
    q = torch.arange(Q, dtype=rdtype, device=w.device) * c
    T = torch.exp(w.unsqueeze(-1) * j)  # (G, M, c)
    W = CB.unsqueeze(-1) * torch.exp(w.unsqueeze(-1) * q)  # (G, M, Q)
    if conj_pairs:
        # 2 Re(Σ_n W_n T_n) = Σ_n 2 Re W_n Re T_n - 2 Im W_n Im T_n: one real product over 2M
        Wr = 2 * torch.cat([W.real, -W.imag], dim=1)  # (G, 2M, Q)
        Tr = torch.cat([T.real, T.imag], dim=1)  # (G, 2M, c)
        K = Wr.transpose(1, 2) @ Tr  # (G, Q, c)
    else:
        K = W.transpose(1, 2) @ T
    return K.reshape(*lead, Q * c)[..., :L]


def vandermonde_kernel_ref(dA: torch.Tensor, CB: torch.Tensor, L: int, conj_pairs: bool = True) -> torch.Tensor:
    """Reference: the full (..., M, L) matrix of powers ``dA^k`` by cumulative products."""
    powers = torch.cumprod(torch.cat([torch.ones_like(dA).unsqueeze(-1), dA.unsqueeze(-1).expand(*dA.shape, L - 1)], -1), -1)
    K = (CB.unsqueeze(-1) * powers).sum(-2)
    return 2 * K.real if conj_pairs else K

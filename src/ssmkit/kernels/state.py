"""States of a dense LTI system from the convolution view, without stepping (docs/lti.md).

For ``x_k = Ā x_{k-1} + B̄ u_k`` (``Ā`` (H, N, N), ``B̄`` (H, N), one system per channel):

- the final state ``x_L = Ā^L x_0 + Σ_{k<L} Ā^{L-1-k} B̄ u_k``
  (:func:`ssm_final_state`);
- the response to an initial state, ``y_k = C Ā^{k+1} x_0`` for k = 0..L-1
  (:func:`ssm_initial_response`).

Both split the lags into blocks of T: with the state kernel ``S_j = Ā^j B̄`` (j < T) the
contribution of block q is ``s_q = Σ_{j<T} S_j u_{(q+1)T-1-j}`` (one batched product over the
whole sequence, O(B L H N)), and ``x_L = Σ_q (Ā^T)^{Q-1-q} s_q`` is reduced pairwise in
⌈log₂ Q⌉ levels. Powers come from repeated squaring, so the Python-level work is O(log L)
operations instead of L steps. With ``T = max(4N, ⌈√L⌉)`` the block reduction, O(B (L/T) H N²),
costs at most a quarter of the block sums' O(B L H N).

Right padding: sequence b's state after its own ``lengths[b]`` tokens is obtained by rotating
its real tokens to the end of the window (zeros in front contribute nothing) and
``Ā^{l_b} x_0`` by binary powers applied to the vector.

:func:`ssm_final_state_ref` and :func:`ssm_initial_response_ref` step the recurrence: the
references these are tested against.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks import check_positive_int, check_tensor

__all__ = ["ssm_final_state", "ssm_initial_response", "ssm_final_state_ref", "ssm_initial_response_ref"]


def _block_length(L: int, N: int) -> int:
    return max(1, min(L, max(4 * N, math.isqrt(max(L - 1, 0)) + 1)))


def _powers_doubling(A: torch.Tensor, V: torch.Tensor, T: int) -> torch.Tensor:
    """``[V, A V, A² V, …]`` for T terms: V (H, N, 1) -> (H, N, T), in O(log T) products."""
    out, P = V, A
    while out.shape[-1] < T:
        out = torch.cat([out, P @ out], dim=-1)
        P = P @ P
    return out[..., :T]


def _check_system(Ad, Bd, u, x0):
    check_tensor("Ad", Ad, ndim=3, floating=True, complex_ok=True)
    H, N, N2 = Ad.shape
    if N != N2:
        raise ValueError(f"Ad must have shape (H, N, N), got {tuple(Ad.shape)}")
    if Bd is not None:
        check_tensor("Bd", Bd, shape=(H, N), floating=True, complex_ok=True)
    if u is not None:
        check_tensor("u", u, ndim=3, floating=True)
        if u.shape[-1] != H:
            raise ValueError(f"u must have shape (batch, length, {H}), got {tuple(u.shape)}")
    if x0 is not None:
        check_tensor("x0", x0, ndim=3, floating=True, complex_ok=True)
        if tuple(x0.shape[1:]) != (H, N):
            raise ValueError(f"x0 must have shape (batch, {H}, {N}), got {tuple(x0.shape)}")
    return H, N


def _apply_power(Ad: torch.Tensor, x: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """``Ā^{e_b} x_b`` for per-batch exponents ``exps`` (B,): binary powers applied to vectors."""
    e = exps.clone()
    P = Ad
    bits = int(exps.max()).bit_length() if exps.numel() else 0
    for i in range(bits):
        use = ((e >> i) & 1).bool()[:, None, None]
        x = torch.where(use, torch.einsum("hnm,bhm->bhn", P, x), x)
        if i + 1 < bits:
            P = P @ P
    return x


def ssm_final_state(Ad: torch.Tensor, Bd: torch.Tensor, u: torch.Tensor, x0: Optional[torch.Tensor] = None,
                    lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x_L = Ā^L x_0 + Σ_{k<L} Ā^{L-1-k} B̄ u_k`` per batch row and channel.

    ``Ad`` (H, N, N), ``Bd`` (H, N) real or complex; ``u`` (B, L, H) real; ``x0`` (B, H, N) or
    None (zero); ``lengths`` (B,) int: the number of real tokens of each row (right padding;
    None: all L). Returns (B, H, N) in the promoted dtype of ``Ad``, ``Bd`` and ``x0``.
    """
    H, N = _check_system(Ad, Bd, u, x0)
    bsz, L, _ = u.shape
    dtype = torch.promote_types(Ad.dtype, Bd.dtype)
    if x0 is not None:
        dtype = torch.promote_types(dtype, x0.dtype)
    Ad, Bd = Ad.to(dtype), Bd.to(dtype)
    if bsz == 0 or L == 0:
        return (x0.to(dtype).clone() if x0 is not None else torch.zeros(bsz, H, N, dtype=dtype, device=u.device))
    if lengths is not None:  # rotate each row so that its real tokens end at L - 1
        idx = (torch.arange(L, device=u.device)[None, :] + lengths[:, None]) % L
        u = torch.gather(u, 1, idx[..., None].expand(-1, -1, H))
    T = _block_length(L, N)
    Q = -(-L // T)
    S = _powers_doubling(Ad, Bd.unsqueeze(-1), T)  # (H, N, T): S_j = Ā^j B̄
    u = torch.nn.functional.pad(u, (0, 0, Q * T - L, 0))  # zeros in front
    r = u.reshape(bsz, Q, T, H).flip(2).to(dtype)  # r[b, q, j] = u[(q+1)T - 1 - j]
    s = torch.einsum("bqjh,hnj->bqhn", r, S)  # (B, Q, H, N)
    P = torch.linalg.matrix_power(Ad, T) if Q > 1 else None
    while s.shape[1] > 1:
        if s.shape[1] % 2:
            s = torch.cat([torch.zeros_like(s[:, :1]), s], dim=1)
        s = torch.einsum("hnm,bqhm->bqhn", P, s[:, 0::2]) + s[:, 1::2]
        if s.shape[1] > 1:
            P = P @ P
    x = s[:, 0]
    if x0 is not None:
        exps = torch.full((bsz,), L, device=u.device, dtype=torch.long) if lengths is None else lengths.long()
        x = x + _apply_power(Ad, x0.to(dtype), exps)
    return x


def ssm_initial_response(Ad: torch.Tensor, C: torch.Tensor, x0: torch.Tensor, L: int) -> torch.Tensor:
    """``y_k = C Ā^{k+1} x_0`` for k = 0..L-1: (B, L, H) (complex if the system is).

    ``Ad`` (H, N, N), ``C`` (H, N), ``x0`` (B, H, N). Blocks of T lags: ``C Ā^j`` (j < T) and
    ``Ā^{qT+1} x_0`` (q < Q), each built by doubling, then one product.
    """
    H, N = _check_system(Ad, None, None, x0)
    check_tensor("C", C, shape=(H, N), floating=True, complex_ok=True)
    check_positive_int("L", L)
    dtype = torch.promote_types(torch.promote_types(Ad.dtype, C.dtype), x0.dtype)
    Ad, C, x0 = Ad.to(dtype), C.to(dtype), x0.to(dtype)
    bsz = x0.shape[0]
    T = _block_length(L, N)
    Q = -(-L // T)
    Crow = _powers_doubling(Ad.transpose(-1, -2), C.unsqueeze(-1), T)  # (H, N, T): (C Ā^j)ᵀ
    X = torch.einsum("hnm,bhm->bhn", Ad, x0).unsqueeze(-1)  # (B, H, N, 1): Ā x0
    P = torch.linalg.matrix_power(Ad, T) if Q > 1 else None
    while X.shape[-1] < Q:  # X[..., q] = Ā^{qT+1} x0
        X = torch.cat([X, torch.einsum("hnm,bhmq->bhnq", P, X)], dim=-1)
        if X.shape[-1] < Q:
            P = P @ P
    X = X[..., :Q]
    y = torch.einsum("hnj,bhnq->bqjh", Crow, X)  # (B, Q, T, H)
    return y.reshape(bsz, Q * T, H)[:, :L]


def ssm_final_state_ref(Ad, Bd, u, x0=None, lengths=None):
    """Reference for :func:`ssm_final_state`: the recurrence, token by token."""
    bsz, L, H = u.shape
    dtype = torch.promote_types(Ad.dtype, Bd.dtype) if x0 is None else torch.promote_types(
        torch.promote_types(Ad.dtype, Bd.dtype), x0.dtype)
    x = torch.zeros(bsz, H, Ad.shape[-1], dtype=dtype) if x0 is None else x0.to(dtype)
    for k in range(L):
        new = torch.einsum("hnm,bhm->bhn", Ad.to(dtype), x) + Bd.to(dtype) * u[:, k, :, None].to(dtype)
        x = new if lengths is None else torch.where((k < lengths)[:, None, None], new, x)
    return x


def ssm_initial_response_ref(Ad, C, x0, L):
    """Reference for :func:`ssm_initial_response`: step the zero-input recurrence."""
    dtype = torch.promote_types(torch.promote_types(Ad.dtype, C.dtype), x0.dtype)
    x, out = x0.to(dtype), []
    for _ in range(L):
        x = torch.einsum("hnm,bhm->bhn", Ad.to(dtype), x)
        out.append((C.to(dtype) * x).sum(-1))
    return torch.stack(out, dim=1)

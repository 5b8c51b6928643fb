"""The S4 kernel of a diagonal-plus-low-rank system through its generating function
(Gu, Goel, Ré 2021, "Efficiently Modeling Long Sequences with Structured State Spaces", §3.3,
Alg. 1; docs/math.md §6).

For the bilinear discretization of ``A = Λ - P Q*`` (``(PQ*)_{nm} = Σ_r P_{rn} conj(Q_{rm})``)
the truncated generating function at the L-th roots of unity ``z_j = exp(-2πij/L)`` is

    K̂(z) = C̃ (I - zĀ)^{-1} B̄ = Δ C̃ [x I - s A]^{-1} B,   x = 1 - z,  s = (Δ/2)(1 + z),

where ``C̃ = C (I - Ā^L)`` is learned directly. With ``R = x I - sΛ`` diagonal, Woodbury gives

    K̂ = Δ [ k(C̃,B) - s k(C̃,P) (I + s k(Q̄,P))^{-1} k(Q̄,B) ],   k(u,v) = Σ_n u_n v_n / (x - sλ_n)

— Cauchy sums, O(N) per frequency and never a matrix power. (Writing the resolvent with
``x, s`` rather than ``g(z) = (2/Δ)(1-z)/(1+z)`` keeps z = -1 finite.) With ``conj_pairs`` only
one mode of each conjugate pair is stored and the other is summed explicitly,
``k = Σ_n v_n/(x - sλ_n) + v̄_n/(x - sλ̄_n)``, so the kernel is real: ``K = irfft(K̂)`` from the
L/2 + 1 non-negative frequencies. Without it the N modes are a general complex system
(any N, odd included) and ``K = ifft(K̂)`` from all L frequencies.

Memory: frequencies are processed in chunks of ``chunk``; each chunk's Cauchy matrices are
(H, M, chunk), so peak extra memory is O(H·M·chunk + H·L) whatever L. Under autograd every
chunk is recomputed in the backward pass (activation checkpointing) instead of being kept, so
training is bounded the same way.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .._checks import check_positive, check_positive_int, check_tensor

__all__ = ["cauchy", "cauchy_conj", "dplr_kernel", "DEFAULT_FREQ_CHUNK"]

DEFAULT_FREQ_CHUNK = 512


def cauchy(v: torch.Tensor, x: torch.Tensor, s: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Σ_n v_n/(x_j - s_j λ_n)``: ``v`` (H, K, M), ``lam`` (H, M), ``x`` (J,), ``s`` (H, J) -> (H, K, J)."""
    den = x - s.unsqueeze(1) * lam.unsqueeze(-1)  # (H, M, J)
    return torch.einsum("hkm,hmj->hkj", v, 1 / den)


def cauchy_conj(v: torch.Tensor, x: torch.Tensor, s: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Σ_n v_n/(x_j - s_j λ_n) + conj(v_n)/(x_j - s_j conj(λ_n))``.

    ``v`` (H, K, M), ``lam`` (H, M), ``x`` (J,), ``s`` (H, J) -> (H, K, J).
    """
    return cauchy(v, x, s, lam) + cauchy(v.conj(), x, s, lam.conj())


def _khat_chunk(V, lam, dt, j, L: int, r: int, conj_pairs: bool):
    """``K̂`` (H, J) at frequencies ``j`` (J,) from the stacked Cauchy numerators ``V``."""
    H = V.shape[0]
    z = torch.exp(torch.complex(torch.zeros_like(j), -2 * math.pi * j / L))  # (J,)
    x = 1 - z
    s = (dt.unsqueeze(-1) / 2) * (1 + z)  # (H, J)
    k = (cauchy_conj if conj_pairs else cauchy)(V, x, s, lam)  # (H, 1 + 2r + r², J)
    k_cb = k[:, 0]
    k_cp = k[:, 1:1 + r]
    k_qb = k[:, 1 + r:1 + 2 * r]
    k_qp = k[:, 1 + 2 * r:].reshape(H, r, r, -1)  # [a, b] = k(Q̄_a, P_b)
    if r == 1:
        corr = k_cp[:, 0] * k_qb[:, 0] / (1 + s * k_qp[:, 0, 0])
    else:
        W = torch.eye(r, dtype=k.dtype, device=k.device)[..., None] + s[:, None, None, :] * k_qp  # (H, r, r, J)
        sol = torch.linalg.solve(W.permute(0, 3, 1, 2), k_qb.permute(0, 2, 1).unsqueeze(-1))[..., 0]  # (H, J, r)
        corr = (k_cp.permute(0, 2, 1) * sol).sum(-1)
    return dt.unsqueeze(-1) * (k_cb - s * corr)


def dplr_kernel(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, Ct: torch.Tensor, dt: torch.Tensor, L: int,
                Q: torch.Tensor | None = None, chunk: int = DEFAULT_FREQ_CHUNK, conj_pairs: bool = True) -> torch.Tensor:
    """Kernel (H, L) of the bilinear DPLR system ``A = Λ - P Q*`` with learned ``C̃ = C (I - Ā^L)``.

    ``Lambda`` (H, M), ``P`` and ``Q`` (r, H, M) (``Q = P`` by default), ``B`` and ``Ct`` (H, M)
    complex; ``dt`` (H,) positive steps. ``conj_pairs=True``: the M modes are the kept half of
    conjugate pairs (real system of N = 2M states) and the kernel is real. ``conj_pairs=False``:
    a general complex system of N = M states; the kernel is complex.
    """
    for name, t in (("Lambda", Lambda), ("B", B), ("Ct", Ct)):
        check_tensor(name, t, ndim=2, floating=True, complex_ok=True)
    H, M = Lambda.shape
    check_tensor("B", B, shape=(H, M))
    check_tensor("Ct", Ct, shape=(H, M))
    check_tensor("P", P, shape=(None, H, M), floating=True, complex_ok=True)
    Q = P if Q is None else check_tensor("Q", Q, shape=tuple(P.shape), floating=True, complex_ok=True)
    check_tensor("dt", dt, shape=(H,), floating=True)
    check_positive("dt", dt.detach())
    check_positive_int("L", L)
    check_positive_int("chunk", chunk)
    r = P.shape[0]
    rdtype = dt.dtype
    cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
    # Cauchy numerators, stacked: k(C̃,B), k(C̃,P_a), k(Q̄_a,B), k(Q̄_a,P_b)
    Qc = Q.conj()
    v_cb = (Ct * B).unsqueeze(1)  # (H, 1, M)
    v_cp = (Ct.unsqueeze(0) * P).permute(1, 0, 2)  # (H, r, M)
    v_qb = (Qc * B.unsqueeze(0)).permute(1, 0, 2)  # (H, r, M)
    v_qp = (Qc.unsqueeze(1) * P.unsqueeze(0)).permute(2, 0, 1, 3).reshape(H, r * r, M)  # (H, r*r, M)
    V = torch.cat([v_cb, v_cp, v_qb, v_qp], dim=1).to(cdtype)
    lam = Lambda.to(cdtype)
    J = L // 2 + 1 if conj_pairs else L
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (V, lam, dt))
    out = []
    for start in range(0, J, chunk):
        j = torch.arange(start, min(J, start + chunk), dtype=rdtype, device=Lambda.device)
        if recompute:
            out.append(checkpoint(_khat_chunk, V, lam, dt, j, L, r, conj_pairs, use_reentrant=False))
        else:
            out.append(_khat_chunk(V, lam, dt, j, L, r, conj_pairs))
    Khat = torch.cat(out, dim=-1)
    return torch.fft.irfft(Khat, n=L) if conj_pairs else torch.fft.ifft(Khat, n=L)

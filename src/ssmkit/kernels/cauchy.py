"""The S4 kernel of a diagonal-plus-low-rank system through its generating function
(Gu, Goel, Ré 2021, "Efficiently Modeling Long Sequences with Structured State Spaces", §3.3,
Alg. 1; MATH.md §4).

For the bilinear discretization of ``A = Λ - P Q*`` the truncated generating function at the
L-th roots of unity ``z_j = exp(-2πij/L)`` is

    K̂(z) = C̃ (I - zĀ)^{-1} B̄ = Δ C̃ [x I - s A]^{-1} B,   x = 1 - z,  s = (Δ/2)(1 + z),

where ``C̃ = C (I - Ā^L)`` is learned directly. With ``R = x I - sΛ`` diagonal, Woodbury gives

    K̂ = Δ [ k(C,B) - s k(C,P) (I + s k(Q,P))^{-1} k(Q,B) ],   k(a,b) = Σ_n a_n* b_n / (x - sλ_n)

— Cauchy sums, O(N) per frequency and never a matrix power. (Writing the resolvent with
``x, s`` rather than ``g(z) = (2/Δ)(1-z)/(1+z)`` keeps z = -1 finite.) Conjugate modes are
summed explicitly from the kept half: ``k = Σ_n v_n/(x - sλ_n) + v̄_n/(x - sλ̄_n)``.
``K = irfft(K̂)``. Frequencies are processed in chunks, so peak memory is O(H·N·chunk).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive_int, check_tensor

__all__ = ["cauchy_conj", "dplr_kernel", "DEFAULT_FREQ_CHUNK"]

DEFAULT_FREQ_CHUNK = 512


def cauchy_conj(v: torch.Tensor, x: torch.Tensor, s: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Σ_n v_n/(x_j - s_j λ_n) + conj(v_n)/(x_j - s_j conj(λ_n))``.

    ``v`` (H, K, M), ``lam`` (H, M), ``x`` (J,), ``s`` (H, J) -> (H, K, J).
    """
    den = x - s.unsqueeze(1) * lam.unsqueeze(-1)  # (H, M, J)
    denc = x - s.unsqueeze(1) * lam.conj().unsqueeze(-1)
    return torch.einsum("hkm,hmj->hkj", v, 1 / den) + torch.einsum("hkm,hmj->hkj", v.conj(), 1 / denc)


def dplr_kernel(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, Ct: torch.Tensor, dt: torch.Tensor, L: int,
                Q: torch.Tensor | None = None, chunk: int = DEFAULT_FREQ_CHUNK) -> torch.Tensor:
    """Real kernel (H, L) of the bilinear DPLR system with learned ``C̃`` (kept conjugate half).

    ``Lambda`` (H, M), ``P`` and ``Q`` (r, H, M) (``Q = P`` by default), ``B`` and ``Ct`` (H, M)
    complex; ``dt`` (H,) positive steps.
    """
    for name, t in (("Lambda", Lambda), ("B", B), ("Ct", Ct)):
        check_tensor(name, t, ndim=2, floating=True, complex_ok=True)
    check_tensor("P", P, ndim=3, floating=True, complex_ok=True)
    check_positive_int("L", L)
    Q = P if Q is None else Q
    H, M = Lambda.shape
    r = P.shape[0]
    rdtype = dt.dtype
    cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
    # v vectors: k(C,B), k(C,P_a), k(Q_a,B), k(Q_a,P_b)
    Qc = Q.conj()
    v_cb = (Ct * B).unsqueeze(1)  # (H, 1, M)
    v_cp = (Ct.unsqueeze(0) * P).permute(1, 0, 2)  # (H, r, M)
    v_qb = (Qc * B.unsqueeze(0)).permute(1, 0, 2)  # (H, r, M)
    v_qp = (Qc.unsqueeze(1) * P.unsqueeze(0)).permute(2, 0, 1, 3).reshape(H, r * r, M)  # (H, r*r, M): [a, b]
    V = torch.cat([v_cb, v_cp, v_qb, v_qp], dim=1).to(cdtype)
    J = L // 2 + 1
    out = []
    for start in range(0, J, chunk):
        j = torch.arange(start, min(J, start + chunk), dtype=rdtype, device=Lambda.device)
        z = torch.exp(torch.complex(torch.zeros_like(j), -2 * math.pi * j / L))  # (Jc,)
        x = 1 - z
        s = (dt.unsqueeze(-1) / 2) * (1 + z)  # (H, Jc)
        k = cauchy_conj(V, x, s, Lambda.to(cdtype))  # (H, 1 + 3r... , Jc)
        k_cb = k[:, 0]
        k_cp = k[:, 1:1 + r]
        k_qb = k[:, 1 + r:1 + 2 * r]
        k_qp = k[:, 1 + 2 * r:].reshape(H, r, r, -1)
        if r == 1:
            corr = k_cp[:, 0] * k_qb[:, 0] / (1 + s * k_qp[:, 0, 0])
        else:
            W = torch.eye(r, dtype=cdtype, device=Lambda.device)[..., None] + s[:, None, None, :] * k_qp  # (H, r, r, Jc)
            sol = torch.linalg.solve(W.permute(0, 3, 1, 2), k_qb.permute(0, 2, 1).unsqueeze(-1))[..., 0]  # (H, Jc, r)
            corr = (k_cp.permute(0, 2, 1) * sol).sum(-1)
        out.append(dt.unsqueeze(-1) * (k_cb - s * corr))
    Khat = torch.cat(out, dim=-1)
    return torch.fft.irfft(Khat, n=L)

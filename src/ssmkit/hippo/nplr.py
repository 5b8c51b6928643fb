"""Normal-plus-low-rank (NPLR) form of the HiPPO matrices (Gu, Goel, Ré 2021, S4 §3.1, Thm. 1).

HiPPO-LegS is not stably diagonalisable, but ``A + P Pᵀ`` is normal for a low-rank ``P``:

- ``legs``: ``P_n = √(n + ½)`` (rank 1): ``A + PPᵀ = -½ I + (skew-symmetric)``
- ``legt``: ``P = [r, (-1)^n r]/√2`` with ``r_n = √(2n+1)`` (rank 2): ``A + PPᵀ`` is skew-symmetric

so ``A = V (Λ - P̃ P̃*) V*`` with unitary ``V``, ``P̃ = V* P``. The eigendecomposition is done
in float64 through the Hermitian matrix ``i (A + PPᵀ - cI)`` (c the common real part), which
is accurate even where the eigenvectors of ``A`` itself are not. Eigenvalues come in conjugate
pairs; one of each is kept (``M = N/2`` modes, so N must be even), and the discarded half is
the complex conjugate of the kept one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_choice, check_positive_int
from .measures import transition

__all__ = ["NPLR", "nplr", "low_rank_correction"]


@dataclass
class NPLR:
    """``A = V (diag(Λ) - P Pᵀ...)`` over both conjugate halves; fields hold the kept half.

    Lambda: (M,) complex eigenvalues with positive imaginary part; P: (r, M) = V* P;
    B: (M,) = V* B; V: (N, M) orthonormal eigenvectors.
    """

    Lambda: torch.Tensor
    P: torch.Tensor
    B: torch.Tensor
    V: torch.Tensor

    def full(self):
        """``(Λ, P, B, V)`` with the conjugate half appended: (N,), (r, N), (N,), (N, N)."""
        cat = lambda x: torch.cat([x, x.conj()], dim=-1)
        return cat(self.Lambda), cat(self.P), cat(self.B), cat(self.V)

    def dense_A(self) -> torch.Tensor:
        """``V (diag(Λ) - Σ_r P_r P_r*) V*``: equals the HiPPO ``A`` (real up to rounding)."""
        lam, P, _, V = self.full()
        inner = torch.diag(lam) - P.transpose(0, 1) @ P.conj()
        return V @ inner @ V.conj().T


def low_rank_correction(measure: str, N: int) -> torch.Tensor:
    """``P`` (r, N) such that ``A + Pᵀ P`` is normal (float64)."""
    check_choice("measure", measure, ("legs", "legt"))
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        return torch.sqrt(n + 0.5).unsqueeze(0)
    r = torch.sqrt(2 * n + 1)
    return torch.stack([r, r * (-1.0) ** n]) / 2**0.5


def nplr(measure: str, N: int) -> NPLR:
    """The NPLR form of the HiPPO ``measure`` (``legs`` or ``legt``) of even order ``N``."""
    check_positive_int("N", N)
    if N % 2:
        raise ValueError(f"N must be even: conjugate pairs of modes are kept one each, got N={N}")
    A, B = transition(measure, N)
    P = low_rank_correction(measure, N)  # (r, N)
    S = A + P.T @ P
    c = torch.diagonal(S).mean()
    # i (S - cI) is Hermitian: real eigenvalues w, S x = (c - i w) x
    w, V = torch.linalg.eigh(1j * (S - c * torch.eye(N, dtype=torch.float64)).to(torch.complex128))
    lam = c - 1j * w
    keep = torch.argsort(lam.imag)[N // 2:]  # positive imaginary parts
    keep = keep[torch.argsort(lam.imag[keep])]
    Vh = V[:, keep]
    if bool((lam.imag[keep] <= 0).any()):
        raise ValueError(f"the {measure} NPLR spectrum for N={N} has real eigenvalues; use another N")
    return NPLR(Lambda=lam[keep], P=P.to(torch.complex128) @ Vh.conj(), B=Vh.conj().T @ B.to(torch.complex128), V=Vh)

"""The reference LTI kernel ``K_k = C Ā^k B̄`` by repeated products (docs/math.md §4.1)."""
from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor

__all__ = ["naive_kernel"]


def naive_kernel(Ad: torch.Tensor, Bd: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """``K_k = C Ā^k B̄`` for k = 0..L-1 by L matrix-vector products.

    ``Ad`` (..., N, N), ``Bd`` (..., N), ``C`` (..., N), leading dims broadcast -> (..., L).
    Real or complex; O(L N²) time. Obviously correct, used to check the fast kernels.
    """
    check_tensor("Ad", Ad, floating=True, complex_ok=True)
    if Ad.dim() < 2 or Ad.shape[-1] != Ad.shape[-2]:
        raise ValueError(f"Ad must have shape (..., N, N), got {tuple(Ad.shape)}")
    N = Ad.shape[-1]
    check_tensor("Bd", Bd, floating=True, complex_ok=True)
    check_tensor("C", C, floating=True, complex_ok=True)
    if Bd.shape[-1] != N or C.shape[-1] != N:
        raise ValueError(f"Bd and C must end in N={N}, got {tuple(Bd.shape)} and {tuple(C.shape)}")
    check_positive_int("L", L)
    v = Bd
    out = []
    for _ in range(L):
        out.append((C * v).sum(-1))
        v = (Ad @ v.unsqueeze(-1)).squeeze(-1)
    return torch.stack(out, dim=-1)

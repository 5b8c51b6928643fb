"""The reference LTI kernel ``K_k = C Ā^k B̄`` by repeated products (docs/math.md §4.1)."""
from __future__ import annotations

import torch

from .._checks import FULL_PRECISION, check_positive_int, check_tensor

KERNEL_DTYPES = FULL_PRECISION + (torch.complex64, torch.complex128)

__all__ = ["naive_kernel"]


def naive_kernel(Ad: torch.Tensor, Bd: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """``K_k = C Ā^k B̄`` for k = 0..L-1 by L matrix-vector products.

    ``Ad`` (..., N, N), ``Bd`` (..., N), ``C`` (..., N), leading dims broadcast -> (..., L).
    Real or complex, float32/64 (half precision is refused by name), promoted to a common
    dtype; O(L N²) time. Obviously correct, used to check the fast kernels.
    """
    check_tensor("Ad", Ad, dtypes=KERNEL_DTYPES)
    if Ad.dim() < 2 or Ad.shape[-1] != Ad.shape[-2]:
        raise ValueError(f"Ad must have shape (..., N, N), got {tuple(Ad.shape)}")
    N = Ad.shape[-1]
    check_tensor("Bd", Bd, dtypes=KERNEL_DTYPES)
    check_tensor("C", C, dtypes=KERNEL_DTYPES)
    if Bd.dim() < 1 or Bd.shape[-1] != N:
        raise ValueError(f"Bd must have shape (..., {N}), got {tuple(Bd.shape)}")
    if C.dim() < 1 or C.shape[-1] != N:
        raise ValueError(f"C must have shape (..., {N}), got {tuple(C.shape)}")
    check_positive_int("L", L)
    dtype = torch.promote_types(torch.promote_types(Ad.dtype, Bd.dtype), C.dtype)
    Ad, Bd, C = Ad.to(dtype), Bd.to(dtype), C.to(dtype)
    v = Bd
    out = []
    for _ in range(L):
        out.append((C * v).sum(-1))
        v = (Ad @ v.unsqueeze(-1)).squeeze(-1)
    return torch.stack(out, dim=-1)

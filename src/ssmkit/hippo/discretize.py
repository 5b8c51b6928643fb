"""Discretization of ``x' = A x + B u`` with step ``dt``, input held constant over a step.

- forward Euler:  ``Ā = I + dt A``,                 ``B̄ = dt B``
- backward Euler: ``Ā = (I - dt A)^{-1}``,          ``B̄ = dt (I - dt A)^{-1} B``
- bilinear:       ``Ā = (I - dt A/2)^{-1}(I + dt A/2)``, ``B̄ = dt (I - dt A/2)^{-1} B``
- zero-order hold (exact for piecewise-constant u): ``Ā = e^{dt A}``, ``B̄ = A^{-1}(e^{dt A} - I) B``,
  computed as a block of ``exp([[A, B], [0, 0]] dt)`` so a singular ``A`` is fine.

Gu et al. 2020 (HiPPO) §3.4 and App. B.3; the LegS time-varying forms are in
:mod:`ssmkit.hippo.legs`.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .._checks import FULL_PRECISION, check_choice, check_positive, check_tensor

# the solves and matrix exponentials need full precision: half precision is refused by name
_DTYPES = FULL_PRECISION + (torch.complex64, torch.complex128)

__all__ = ["METHODS", "discretize"]

METHODS = ("forward_euler", "backward_euler", "bilinear", "zoh")


def discretize(
    A: torch.Tensor, B: torch.Tensor, dt: Union[float, torch.Tensor], method: str = "bilinear"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Discrete ``(Ā, B̄)`` of the continuous system ``(A, B)``.

    ``A``: (N, N); ``B``: (N,). ``dt``: a positive float, or a tensor of positive steps of any
    shape S, giving ``Ā`` of shape S + (N, N) and ``B̄`` of shape S + (N,) (e.g. one step per
    channel: dt of shape (H,) gives (H, N, N)). Real or complex ``A`` and ``B`` (float32/64, complex64/128).
    """
    check_tensor("A", A, ndim=2, dtypes=_DTYPES)
    N = A.shape[0]
    if A.shape != (N, N):
        raise ValueError(f"A must be square (N, N), got {tuple(A.shape)}")
    check_tensor("B", B, shape=(N,), dtypes=_DTYPES)
    check_choice("method", method, METHODS)
    check_positive("dt", dt)
    dtype = torch.promote_types(A.dtype, B.dtype)
    A, B = A.to(dtype), B.to(dtype)
    if isinstance(dt, torch.Tensor):
        dt = dt.to(device=A.device, dtype=A.real.dtype if A.is_complex() else A.dtype)
        shape = tuple(dt.shape)
    else:
        dt = torch.tensor(float(dt), dtype=A.real.dtype if A.is_complex() else A.dtype, device=A.device)
        shape = ()
    dtA = dt[..., None, None] * A  # S + (N, N)
    dtB = dt[..., None] * B  # S + (N,)
    I = torch.eye(N, dtype=dtype, device=A.device).expand(shape + (N, N))
    if method == "forward_euler":
        return I + dtA, dtB
    if method == "backward_euler":
        M = I - dtA
        return torch.linalg.solve(M, I), torch.linalg.solve(M, dtB[..., None])[..., 0]
    if method == "bilinear":
        M = I - dtA / 2
        return torch.linalg.solve(M, I + dtA / 2), torch.linalg.solve(M, dtB[..., None])[..., 0]
    # zoh: exp([[A, B], [0, 0]] dt) = [[e^{dtA}, ∫_0^dt e^{sA} ds B], [0, 1]]
    M = torch.zeros(shape + (N + 1, N + 1), dtype=dtype, device=A.device)
    M[..., :N, :N] = dtA
    M[..., :N, N] = dtB
    E = torch.linalg.matrix_exp(M)
    return E[..., :N, :N], E[..., :N, N]

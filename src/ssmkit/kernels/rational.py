"""The RTF kernel from a rational transfer function (Parnichkun et al. 2024; docs/math.md §8.2).

``K̂(z) = (b_1 + b_2 z + … + b_N z^{N-1}) / (1 + a_1 z + … + a_N z^N)`` evaluated at the L-th
roots of unity gives ``FFT_L(K)``: ``K = irfft(rfft(b) / rfft([1, a]))``, O(L log L) time and
O(L) memory per channel whatever the state size N.

Its gradient: with ``q`` the sequence whose spectrum is ``Q = 1/â`` (â the spectrum of the
folded ``[1, a]``), ``K = p_b ⊛ q`` (circular convolution of length L, p_b the folded b), so
for the kernel's gradient ``g`` (spectrum ``G``)

    ∂p_b = g ⋆ q = irfft(G · conj(Q)),    ∂p_a = -irfft(G · conj(K̂ Q))     (⋆: correlation).

``method="fused"`` computes the kernel and this backward as one autograd function: one rfft and
one irfft each way over both polynomials at once (autograd through the complex division runs
about a dozen operations on the spectra: 475 against 345 µs forward + backward at H 64, N 64,
L 196); first-order reverse-mode gradients only. ``method="torch"`` differentiates the composition with autograd
(any order, forward mode too). ``"auto"`` (the default) is ``fused`` except under forward-mode AD
or a torch.func transform.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .._checks import FULL_PRECISION, check_choice, check_positive_int, check_tensor, value_checks_enabled
from ..ops import _native

__all__ = ["rational_kernel", "rational_kernel_ref", "fold"]


def fold(p: torch.Tensor, L: int) -> torch.Tensor:
    """Reduce polynomial coefficients (..., M) modulo ``z^L - 1``: (..., L).

    At the L-th roots of unity ``z^L = 1``, so coefficient ``j`` adds onto ``j mod L``; this keeps
    the kernel exact when ``N + 1 > L``.
    """
    M = p.shape[-1]
    if M <= L:
        return torch.nn.functional.pad(p, (0, L - M))
    pad = (-M) % L
    p = torch.nn.functional.pad(p, (0, pad))
    return p.reshape(*p.shape[:-1], -1, L).sum(-2)


_POLE_MESSAGE = ("a: the denominator 1 + a_1 z + … + a_N z^N vanishes at an L-th root of unity (a pole on the "
                 "unit circle), so the kernel is not finite; keep the poles inside the unit circle")
_NOT_FINITE_MESSAGE = "a: the kernel is not finite (a pole on or next to the unit circle)"


def _pole_tolerance(a: torch.Tensor) -> torch.Tensor:
    """A zero of the denominator up to its rounding error, ~(N+1) eps Σ|coefficients|: (..., 1)."""
    return (a.shape[-1] + 1) * torch.finfo(a.dtype).eps * (1 + a.detach().abs().sum(-1, keepdim=True))


def _padded(a: torch.Tensor, b: torch.Tensor, lead, L: int) -> torch.Tensor:
    """(2, *lead, L): the folded ``[1, a]`` and ``b``."""
    N = a.shape[-1]
    if N + 1 > L:
        one = torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)
        return torch.stack(torch.broadcast_tensors(fold(torch.cat([one, a], -1), L), fold(b, L)))
    buf = a.new_zeros(2, *lead, L)
    buf[0, ..., 0] = 1
    buf[0, ..., 1:N + 1] = a
    buf[1, ..., :N] = b
    return buf


class _RationalKernel(torch.autograd.Function):
    """``K = irfft(rfft(p_b) / rfft(p_a))`` with the backward of the module docstring."""

    @staticmethod
    def forward(ctx, a, b, lead, L: int, checks: bool):
        spec = torch.fft.rfft(_padded(a, b, lead, L), n=L)
        den, num = spec[0], spec[1]
        if checks and bool((den.abs() <= _pole_tolerance(a)).any()):
            raise ValueError(_POLE_MESSAGE)
        q = den.reciprocal()
        Kh = num * q
        ctx.save_for_backward(q, Kh)
        ctx.L, ctx.a_shape, ctx.b_shape = L, a.shape, b.shape
        return torch.fft.irfft(Kh, n=L)

    @staticmethod
    @once_differentiable
    def backward(ctx, gK):
        q, Kh = ctx.saved_tensors
        L = ctx.L
        Gq = torch.fft.rfft(gK, n=L) * q.conj()
        g = torch.fft.irfft(torch.stack([-(Gq * Kh.conj()), Gq]), n=L)  # ∂p_a, ∂p_b
        N = ctx.a_shape[-1]
        if N + 1 <= L:
            ga, gb = g[0, ..., 1:N + 1], g[1, ..., :N]
        else:  # coefficient j was folded onto j mod L
            idx = torch.arange(N + 1, device=g.device) % L
            ga, gb = g[0][..., idx[1:]], g[1][..., idx[:N]]
        ga = ga.sum_to_size(ctx.a_shape) if ctx.needs_input_grad[0] else None
        gb = gb.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None, None


def rational_kernel(a: torch.Tensor, b: torch.Tensor, L: int, h0: Optional[torch.Tensor] = None, *,
                    method: str = "auto") -> torch.Tensor:
    """Kernel ``K`` (..., L) of ``h0 + b(z)/a(z)`` truncated to L terms.

    ``a``: (..., N) denominator coefficients ``a_1..a_N`` (the leading 1 is implicit);
    ``b``: (..., N) numerator coefficients ``b_1..b_N``; ``h0``: (...,) optional feed-through
    added to ``K_0``. ``b`` is the numerator of the *truncated* generating function, i.e. it
    encodes ``C̃ = C (I - Ā^L)`` (see :mod:`ssmkit.lti`).
    ``method``: ``"fused"`` (one autograd function, first-order gradients), ``"torch"`` (autograd
    through the composition: higher-order and forward-mode derivatives) or ``"auto"`` (fused
    unless forward-mode AD or a torch.func transform is active). Same values either way.
    """
    check_tensor("a", a, dtypes=FULL_PRECISION)
    check_tensor("b", b, dtypes=FULL_PRECISION)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"a and b must have shape (..., N), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have the same number of coefficients N, got {a.shape[-1]} and {b.shape[-1]}")
    check_positive_int("L", L)
    check_choice("method", method, ("auto", "fused", "torch"))
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    try:  # (torch.broadcast_shapes runs in Python, ~9 µs a call: equal shapes skip it)
        lead = a.shape[:-1] if a.shape == b.shape else torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError:
        raise ValueError(f"a and b must have broadcastable leading dimensions, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}") from None
    if h0 is not None:
        check_tensor("h0", h0, shape=tuple(lead), dtypes=FULL_PRECISION)
    if lead.numel() == 0:  # an empty batch: no kernel to compute (the FFT refuses 0 rows)
        return torch.zeros(*lead, L, dtype=dtype, device=a.device)
    if method == "fused" or (method == "auto" and not _native.transform_active(a, b)):
        K = _RationalKernel.apply(a, b, lead, L, value_checks_enabled())
    else:
        one = torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)
        den = torch.fft.rfft(fold(torch.cat([one, a], -1), L), n=L)
        if value_checks_enabled() and den.numel() and bool((den.detach().abs() <= _pole_tolerance(a)).any()):
            raise ValueError(_POLE_MESSAGE)
        num = torch.fft.rfft(fold(b, L), n=L)
        K = torch.fft.irfft(num / den, n=L)
    if value_checks_enabled() and K.numel() and not bool(torch.isfinite(K).all()):
        raise ValueError(_NOT_FINITE_MESSAGE)
    if h0 is not None:
        K = K.clone()
        K[..., 0] = K[..., 0] + h0
    return K


def rational_kernel_ref(a: torch.Tensor, b: torch.Tensor, L: int) -> torch.Tensor:
    """Reference for :func:`rational_kernel` (without ``h0``): the companion realisation of
    ``b(z)/a(z)`` (first row ``-a``, ones below the diagonal, ``B̄ = e_1``) with
    ``C = b (I - Ā^L)^{-1}``, powered step by step: ``K_k = C Ā^k B̄``. O(L N²), float64 advised."""
    check_tensor("a", a, dtypes=FULL_PRECISION)
    check_tensor("b", b, shape=tuple(a.shape), dtypes=FULL_PRECISION)
    check_positive_int("L", L)
    N = a.shape[-1]
    Ad = torch.zeros(*a.shape[:-1], N, N, dtype=a.dtype, device=a.device)
    Ad[..., 0, :] = -a
    idx = torch.arange(N - 1, device=a.device)
    Ad[..., idx + 1, idx] = 1
    I = torch.eye(N, dtype=a.dtype, device=a.device)
    C = torch.linalg.solve((I - torch.linalg.matrix_power(Ad, L)).transpose(-1, -2), b.unsqueeze(-1))[..., 0]
    x = torch.zeros_like(a)
    x[..., 0] = 1
    out = []
    for _ in range(L):
        out.append((C * x).sum(-1))
        x = (Ad @ x.unsqueeze(-1))[..., 0]
    return torch.stack(out, -1)

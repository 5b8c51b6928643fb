"""Causal (linear, not circular) convolution by FFT (docs/lti.md).

``y_k = Σ_{j≤k} K_j u_{k-j} + D u_k`` for k = 0..L-1, computed with both signals zero-padded
to length 2L so that the circular convolution of the FFT equals the linear one (docs/math.md §4.2).

The transforms always run along the LAST dimension of a (B, H, L) tensor, where each
channel's samples are contiguous. ``layout="blh"`` (the default, the layers' (batch, length,
channels) tensors) transposes on the way in and folds the transpose back into the ``+ D u``
on the way out, so the result is contiguous (B, L, H) without a separate copy.

The backward pass is written out (a custom autograd function) instead of differentiating
through the padding, the transforms and the slicing: with the spectra ``Û, K̂`` saved and
``Ĝ = rfft(∂y)``, ``∂u = irfft(Ĝ conj(K̂))[:L]`` and ``∂K = Σ_b irfft(Ĝ conj(Û))[:L]``
(correlations; the zero padding keeps them linear). One forward transform and two inverse
ones, and no zero-filled buffers.

Half precision (float16, bfloat16) is computed in float32 and returned in the input's
dtype (so its error is that of rounding the result, ~1e-3 relative for float16, ~1e-2 for
bfloat16); complex inputs are refused.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .._checks import REAL_DTYPES, check_choice, check_tensor

__all__ = ["fftconv", "causal_conv_ref"]


class _CausalConv(torch.autograd.Function):
    """``y = (K * u)[..., :L]`` along the last dimension: u (B, H, L), K (H, Lk) with Lk <= L."""

    @staticmethod
    def forward(ctx, u, K):
        L = u.shape[-1]
        n = 2 * L
        Uf = torch.fft.rfft(u, n=n)
        Kf = torch.fft.rfft(K, n=n)
        y = torch.fft.irfft(Uf * Kf, n=n)[..., :L]
        ctx.save_for_backward(Uf, Kf)
        ctx.L, ctx.Lk = L, K.shape[-1]
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        Uf, Kf = ctx.saved_tensors
        L = ctx.L
        n = 2 * L
        Gf = torch.fft.rfft(gy, n=n)
        gu = gK = None
        if ctx.needs_input_grad[1]:
            # Σ_b conj(Û) Ĝ: a product and a sum (linalg.vecdot materialised conj(Û) first, 2-3x slower)
            gK = torch.fft.irfft((Uf.conj() * Gf).sum(0), n=n)[..., :ctx.Lk]
        if ctx.needs_input_grad[0]:
            gu = torch.fft.irfft(Gf.mul_(Kf.conj()), n=n)[..., :L]  # Ĝ is ours: multiplied in place
        return gu, gK


def fftconv(u: torch.Tensor, K: torch.Tensor, D: Optional[torch.Tensor] = None, *, layout: str = "blh") -> torch.Tensor:
    """Causal convolution of ``u`` with per-channel kernels ``K`` (H, Lk).

    ``layout="blh"``: ``u`` (B, L, H) -> (B, L, H); ``layout="bhl"``: ``u`` (B, H, L) -> (B, H, L).
    Kernels shorter than L are zero-extended; longer ones are truncated to L. ``D`` (H,) adds
    the skip term ``D u``. O(L log L) time per channel. A batch of 0 gives an empty output.
    """
    check_choice("layout", layout, ("blh", "bhl"))
    check_tensor("u", u, ndim=3, dtypes=REAL_DTYPES)
    H = u.shape[-1] if layout == "blh" else u.shape[1]
    L = u.shape[1] if layout == "blh" else u.shape[-1]
    check_tensor("K", K, ndim=2, dtypes=REAL_DTYPES)
    if K.shape[0] != H:
        raise ValueError(f"K must have shape ({H}, length) to match u's {H} channels, got {tuple(K.shape)}")
    if K.shape[1] == 0:
        raise ValueError(f"K must have length >= 1, got shape {tuple(K.shape)}")
    if L == 0:
        raise ValueError(f"u must have length >= 1, got shape {tuple(u.shape)}")
    if D is not None:
        check_tensor("D", D, shape=(H,), dtypes=REAL_DTYPES)
    out_dtype = torch.promote_types(u.dtype, K.dtype) if D is None else torch.promote_types(
        torch.promote_types(u.dtype, K.dtype), D.dtype)
    cdtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    if u.shape[0] == 0:
        return u.new_zeros(u.shape, dtype=out_dtype)
    uc, Kc = u.to(cdtype), K[:, :L].to(cdtype)
    ut = uc.transpose(1, 2) if layout == "blh" else uc
    y = _CausalConv.apply(ut, Kc)  # (B, H, L)
    if layout == "blh":
        y = y.transpose(1, 2)
        # u first: the sum takes u's (contiguous (B, L, H)) layout; the transpose is folded in
        y = (uc * D.to(cdtype) + y) if D is not None else y.contiguous()
    elif D is not None:
        y = y + uc * D.to(cdtype)[:, None]
    return y.to(out_dtype)


def causal_conv_ref(u: torch.Tensor, K: torch.Tensor, D: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same convolution by the definition (O(L²)), (batch, L, H) layout: the reference for :func:`fftconv`."""
    L = u.shape[1]
    y = torch.zeros_like(u)
    for k in range(L):
        for j in range(min(k + 1, K.shape[1])):
            y[:, k] += K[:, j] * u[:, k - j]
    if D is not None:
        y = y + u * D
    return y

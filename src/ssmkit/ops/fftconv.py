"""Causal (linear, not circular) convolution by FFT, or directly for short sequences (docs/lti.md).

``y_k = Σ_{j≤k} K_j u_{k-j} + D u_k`` for k = 0..L-1, computed with both signals zero-padded
to length 2L so that the circular convolution of the FFT equals the linear one (docs/math.md §4.2).

Short sequences (``L <= DIRECT_MAX_LEN``) of CPU float32 (B, L, H) tensors take the direct sum
instead, in a native kernel (ops/_native/direct_conv.c): O(L·Lk) per channel against the FFT's
O(L log L), but with no transposes, no padding and no complex spectra, which is faster at these
lengths (benchmarks/RESULTS.md, "Direct convolution"). Its backward is the same sum run
backwards in time for ``∂u``, and a correlation over batch and time for ``∂K``; ``D u`` is
folded into the first tap (``K_0 + D``). ``method`` chooses explicitly.

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
from . import _native

__all__ = ["fftconv", "causal_conv_ref", "DIRECT_MAX_LEN"]

# "auto" sums directly up to this length: the crossover of forward + backward against the FFT
# route on the CPU (benchmarks/bench_conv.py) lies between 768 and 1024 both on an AVX2 core and on
# an AVX-512 one (where the FFT gained more); at 768 direct is 1.23-1.30x faster on the first and
# 1.03-1.08x on the second, at 1024 1.03-1.07x and 0.84-0.87x.
DIRECT_MAX_LEN = 768


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


class _DirectCausalConv(torch.autograd.Function):
    """``y[b,t] = Σ_{j≤t} Kt[j] u[b,t-j]`` per channel, summed directly by the native kernel:
    u (B, L, H) and Kt (Lk, H) float32 on the CPU, Lk <= L."""

    @staticmethod
    def forward(ctx, u, Kt):
        u, Kt = u.contiguous(), Kt.contiguous()
        B, L, H = u.shape
        y = torch.empty_like(u)
        if _native.library().dconv_fwd_f32(u.data_ptr(), Kt.data_ptr(), y.data_ptr(), B, L, Kt.shape[0], H,
                                           torch.get_num_threads()):
            raise MemoryError("fftconv: the native kernel could not allocate its scratch buffers")
        ctx.save_for_backward(u, Kt)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, Kt = ctx.saved_tensors
        gy = gy.contiguous()
        gu = torch.empty_like(u) if ctx.needs_input_grad[0] else None
        gK = torch.empty_like(Kt) if ctx.needs_input_grad[1] else None
        B, L, H = u.shape
        if gu is not None or gK is not None:
            if _native.library().dconv_bwd_f32(gy.data_ptr(), u.data_ptr(), Kt.data_ptr(), _native.ptr(gu),
                                               _native.ptr(gK), B, L, Kt.shape[0], H, torch.get_num_threads()):
                raise MemoryError("fftconv: the native kernel could not allocate its scratch buffers")
        return gu, gK


def _direct_applies(cdtype: torch.dtype, *tensors: Optional[torch.Tensor]) -> bool:
    """The direct native sum can run: every operand on the CPU, float32 computation, the native
    library built."""
    return (cdtype == torch.float32 and all(t is None or t.device.type == "cpu" for t in tensors)
            and _native.available())


def fftconv(u: torch.Tensor, K: torch.Tensor, D: Optional[torch.Tensor] = None, *, layout: str = "blh",
            method: str = "auto") -> torch.Tensor:
    """Causal convolution of ``u`` with per-channel kernels ``K`` (H, Lk).

    ``layout="blh"``: ``u`` (B, L, H) -> (B, L, H); ``layout="bhl"``: ``u`` (B, H, L) -> (B, H, L).
    Kernels shorter than L are zero-extended; longer ones are truncated to L. ``D`` (H,) adds
    the skip term ``D u``. A batch of 0 gives an empty output.

    ``method``: ``"fft"`` (O(L log L) per channel, any device and dtype), ``"direct"`` (the
    O(L·Lk) sum in the native kernel: CPU, float32 or half-precision inputs, native library
    built) or ``"auto"``: direct for ``layout="blh"`` up to ``DIRECT_MAX_LEN`` steps where it
    can run, else FFT. Both give the same values up to float32 rounding.
    """
    check_choice("layout", layout, ("blh", "bhl"))
    check_choice("method", method, ("auto", "fft", "direct"))
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
    if method == "direct" and not _direct_applies(cdtype, u, K, D):
        raise ValueError("method='direct' needs CPU tensors computed in float32 (not float64) and the native "
                         f"library (ssmkit.ops._native.available()); got {u.device.type} {out_dtype}")
    if u.shape[0] == 0:
        return u.new_zeros(u.shape, dtype=out_dtype)
    uc, Kc = u.to(cdtype), K[:, :L].to(cdtype)
    if method == "direct" or (method == "auto" and layout == "blh" and L <= DIRECT_MAX_LEN
                              and _direct_applies(cdtype, u, K, D)):
        ub = uc if layout == "blh" else uc.transpose(1, 2)
        if D is not None:  # D u_t is the tap j = 0: one sum with K_0 + D, no extra pass over u
            Kc = torch.cat([Kc[:, :1] + D.to(cdtype)[:, None], Kc[:, 1:]], dim=1)
        y = _DirectCausalConv.apply(ub, Kc.t())  # (B, L, H)
        return (y if layout == "blh" else y.transpose(1, 2).contiguous()).to(out_dtype)
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

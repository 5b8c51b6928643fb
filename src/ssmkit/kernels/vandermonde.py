"""Kernels of diagonal SSMs (S4D) as Vandermonde products (docs/math.md §7).

For ``Ā = diag(e^{w})`` the kernel ``K_k = Σ_n CB_n e^{k w_n}`` is a Vandermonde
matrix-vector product. Modes usually come in conjugate pairs and only one of each is stored,
so real outputs are ``2 Re(·)``.

Instead of one complex exponential per (mode, lag), lags are split as ``k = q c + j``
(``0 ≤ j < c``): ``e^{k w} = e^{q c w} · e^{j w}``, so

    K_{q c + j} = Σ_n (CB_n e^{q c w_n}) · T_{n j},   T_{n j} = e^{j w_n},

one batched (⌈L/c⌉ × M) @ (M × c) matrix product. With ``c = ⌈√L⌉`` that is
``O(M √L)`` exponentials and ``O(M √L)`` extra memory per channel (plus the (…, L) output),
instead of ``M L`` of each; autograd saves only these small factors, so training is bounded
the same way. Each power is the product of two exponentials, a relative error of a few ulp.

On the CPU the real kernel (``conj_pairs``) is computed by a native kernel instead
(``ops/_native/vandermonde.c``): the powers by the recurrence ``e^{(k+1) w} = e^{k w} e^{w}`` in
double precision (relative error ~k ulp of double, ~1e-13 at L = 4096), the modes of a channel
vectorised, and its backward

    ∂CB_n = 2 conj(Σ_k ∂K_k e^{k w_n}),   ∂w_n = 2 conj(CB_n Σ_k k ∂K_k e^{k w_n})

in tiles of lags ``k = b T + t``: each tile's sums against one table of ``e^{t w}``, added times
``e^{b T w}`` (no complex product per term; docs/lti.md).

The blocked torch computation above stays as the route for other devices (``method="torch"``).
"""
from __future__ import annotations

import ctypes
import math
from typing import Optional

import torch

from .._checks import FULL_PRECISION, check_bool, check_choice, check_positive_int, check_tensor
from ..ops import _native

# real or complex, full precision: half precision is refused by name (the kernels' parameters are float32/64)
KERNEL_DTYPES = FULL_PRECISION + (torch.complex64, torch.complex128)

__all__ = ["vandermonde_kernel", "vandermonde_kernel_ref", "vandermonde_reduce", "vandermonde_reduce_ref", "default_block"]


def default_block(L: int) -> int:
    """Block length ``c = ⌈√L⌉`` (at least 1): balances the two factors' sizes."""
    return max(1, math.isqrt(L - 1) + 1) if L > 1 else 1


def _exp_outer(w: torch.Tensor, idx: torch.Tensor, scale: int) -> torch.Tensor:
    """``exp(w_n · scale · idx_i)`` (..., M, len(idx)) computed in complex128."""
    k = idx.to(torch.float64) * scale
    if not w.is_complex():
        return torch.exp(w.to(torch.float64).unsqueeze(-1) * k).to(torch.complex128)
    # e^{x + iy} = e^x (cos y + i sin y) in real arithmetic: the same values as a complex exp,
    # and cheaper forward and backward on the CPU
    w = w.to(torch.complex128)
    x, y = w.real.unsqueeze(-1) * k, w.imag.unsqueeze(-1) * k
    m = torch.exp(x)
    return torch.complex(m * torch.cos(y), m * torch.sin(y))


def native_forward(w: torch.Tensor, CB: torch.Tensor, L: int, real_dtype: torch.dtype):
    """``2 Re Σ_n CB_n e^{k w_n}`` on the CPU by the native kernel, outside autograd, for w (H, M) and
    CB (X H, M) complex: row x H + h of CB uses the modes w[h] (X = 1: one set of modes per row).
    Returns K (X H, L) in ``real_dtype`` and the complex128 operands ``z = e^w`` (H, M, 2) and CB
    (X H, M, 2) as reals, which :func:`native_backward` takes. The kernels take ``e^w``, computed here
    once per set of modes (vectorised) for both directions."""
    w = w.to(torch.complex128)
    z64 = torch.view_as_real(torch.polar(torch.exp(w.real), w.imag).contiguous())
    cb64 = torch.view_as_real(CB.to(torch.complex128).contiguous())
    (H, M), R = w.shape, CB.shape[0]
    z_rows = z64 if R == H else z64.repeat(R // H, 1, 1)  # the forward kernel reads a z row per CB row
    single = real_dtype == torch.float32  # summed in double, rounded as the kernel writes it
    K = torch.empty(R, L, dtype=torch.float32 if single else torch.float64)
    if _native.library().vdm_fwd_f64(z_rows.data_ptr(), cb64.data_ptr(), K.data_ptr(), int(single), R, M, L,
                                     torch.get_num_threads()):
        raise MemoryError("vandermonde_kernel: the native kernel could not allocate its scratch buffers")
    return K.to(real_dtype), z64, cb64


def native_backward(z64: torch.Tensor, cb64: torch.Tensor, gKs, want_w: bool, want_cb: bool):
    """Gradients (complex128 (X H, M), or None where not wanted) of every row's w and CB, for X row blocks
    that share their modes: ``z64`` (H, M, 2), ``e^w`` as :func:`native_forward` returned it,
    ``cb64`` (X H, M, 2), and ``gKs`` the X blocks' gradients, each (H, L). The blocks share the power tables."""
    H, M = z64.shape[:2]
    X = len(gKs)
    single = all(g.dtype == torch.float32 for g in gKs)  # read as they are, widened row by row in the kernel
    gKs = [(g if single else g.to(torch.float64)).contiguous() for g in gKs]
    gw = torch.empty_like(cb64) if want_w else None
    gcb = torch.empty_like(cb64) if want_cb else None
    if gw is not None or gcb is not None:
        rows = (ctypes.c_void_p * X)(*(g.data_ptr() for g in gKs))
        if _native.library().vdm_bwd_f64(z64.data_ptr(), cb64.data_ptr(), ctypes.addressof(rows), int(single),
                                         _native.ptr(gw), _native.ptr(gcb), X, H, M, gKs[0].shape[1],
                                         torch.get_num_threads()):
            raise MemoryError("vandermonde_kernel: the native kernel could not allocate its scratch buffers")
    return tuple(None if g is None else torch.view_as_complex(g) for g in (gw, gcb))


class _NativeVandermonde(torch.autograd.Function):
    """``2 Re Σ_n CB_n e^{k w_n}`` for w, CB (R, M) complex on the CPU -> (R, L) real, computed in
    double precision and returned in ``real_dtype``."""

    @staticmethod
    def forward(ctx, w, CB, L, real_dtype):
        K, z64, cb64 = native_forward(w, CB, L, real_dtype)
        ctx.save_for_backward(z64, cb64)
        ctx.dtypes = (w.dtype, CB.dtype)
        return K

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gK):
        z64, cb64 = ctx.saved_tensors
        grads = native_backward(z64, cb64, [gK], *ctx.needs_input_grad[:2])
        out = [None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes)]
        return out[0], out[1], None, None


def vandermonde_kernel(log_dA: torch.Tensor, CB: torch.Tensor, L: int, lag_block: Optional[int] = None,
                       conj_pairs: bool = True, *, method: str = "auto") -> torch.Tensor:
    """``K_k = 2 Re Σ_n CB_n exp(k · log_dA_n)``, k = 0..L-1 (without ``2 Re`` if ``conj_pairs=False``).

    ``log_dA``: (..., M) complex (or real), the log of the discrete eigenvalues (``Δλ`` for ZOH);
    ``CB``: (..., M), ``C_n B̄_n``; leading dims broadcast. Returns (..., L): real when
    ``conj_pairs``, complex otherwise (a general diagonal system, e.g. odd N with a real mode).
    ``lag_block``: the block length c (default ``⌈√L⌉``); extra memory is O(M (c + L/c)) per channel.
    ``method``: ``"torch"`` (the blocked products above, any device), ``"native"`` (the recurrence
    in the native kernel: CPU, ``conj_pairs``, no ``lag_block``) or ``"auto"`` (native where it
    can run). They agree to float32 rounding (closer in float64).
    """
    for name, t in (("log_dA", log_dA), ("CB", CB)):
        check_tensor(name, t, dtypes=KERNEL_DTYPES)
        if t.dim() == 0:
            raise ValueError(f"{name} must have shape (..., M), got a 0-dimensional tensor")
    check_positive_int("L", L)
    check_bool("conj_pairs", conj_pairs)
    c = default_block(L) if lag_block is None else check_positive_int("lag_block", lag_block)
    c = min(c, L)
    check_choice("method", method, ("auto", "torch", "native"))
    cdtype = torch.promote_types(torch.promote_types(log_dA.dtype, CB.dtype), torch.complex64)
    w, CB = log_dA.to(cdtype), CB.to(cdtype)
    if w.shape[-1] != CB.shape[-1]:
        raise ValueError(f"log_dA and CB must have the same number of modes M (last dimension), got "
                         f"{tuple(log_dA.shape)} and {tuple(CB.shape)}")
    try:
        lead = torch.broadcast_shapes(w.shape[:-1], CB.shape[:-1])
    except RuntimeError:
        raise ValueError(f"log_dA and CB must have broadcastable leading dimensions, got {tuple(log_dA.shape)} and "
                         f"{tuple(CB.shape)}") from None
    native = (conj_pairs and lag_block is None and w.device.type == CB.device.type == "cpu"
              and _native.available())
    if method == "native" and not native:
        raise ValueError("method='native' needs CPU tensors, conj_pairs=True, no lag_block and the native library")
    if method != "torch" and native:
        M = w.shape[-1]
        R = math.prod(lead)
        rows = (w.expand(*lead, M).reshape(R, M), CB.expand(*lead, M).reshape(R, M))
        return _NativeVandermonde.apply(*rows, L, cdtype.to_real()).reshape(*lead, L)
    Q = -(-L // c)
    # exponentials on log_dA's own shape (not broadcast against CB): O(M (c + Q)) per row, in
    # double precision (the phase k·Im w reaches L·|Im w|; in float32 its rounding alone would
    # cost ~1e-4 relative at L = 1024), then rounded to the working precision for the product
    T = _exp_outer(w, torch.arange(c, device=w.device), 1).to(cdtype)  # (..., M, c)
    W = CB.unsqueeze(-1) * _exp_outer(w, torch.arange(Q, device=w.device), c).to(cdtype)  # (lead, M, Q)
    if conj_pairs:
        # 2 Re(Σ_n W_n T_n) = Σ_n 2 Re W_n Re T_n - 2 Im W_n Im T_n: one real product over 2M
        Wr = 2 * torch.cat([W.real, -W.imag], dim=-2)  # (lead, 2M, Q)
        Tr = torch.cat([T.real, T.imag], dim=-2)  # (..., 2M, c)
        K = Wr.transpose(-1, -2) @ Tr  # (lead, Q, c)
    else:
        K = W.transpose(-1, -2) @ T
    return K.reshape(*lead, Q * c)[..., :L]


def vandermonde_kernel_ref(dA: torch.Tensor, CB: torch.Tensor, L: int, conj_pairs: bool = True) -> torch.Tensor:
    """Reference: the full (..., M, L) matrix of powers ``dA^k`` by cumulative products."""
    powers = torch.cumprod(torch.cat([torch.ones_like(dA).unsqueeze(-1), dA.unsqueeze(-1).expand(*dA.shape, L - 1)], -1), -1)
    K = (CB.unsqueeze(-1) * powers).sum(-2)
    return 2 * K.real if conj_pairs else K


def vandermonde_reduce(log_dA: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Σ_j v_j exp(j · log_dA_n)`` over j = 0..L-1: the transposed Vandermonde product.

    ``log_dA`` (H, M) complex, ``v`` (B, H, L) real or complex -> (B, H, M) complex. With ``v``
    the reversed input this is a diagonal system's final state, ``Σ_k Ā^{L-1-k} u_k``. The same
    split of the lags ``j = q c + i`` as :func:`vandermonde_kernel`: O(M √L) exponentials and one
    batched product of O(B H L M).
    """
    check_tensor("log_dA", log_dA, ndim=2, dtypes=KERNEL_DTYPES)
    check_tensor("v", v, ndim=3, dtypes=KERNEL_DTYPES)
    H, M = log_dA.shape
    if v.shape[1] != H:
        raise ValueError(f"v must have shape (batch, {H}, length), got {tuple(v.shape)}")
    bsz, _, L = v.shape
    cdtype = torch.promote_types(torch.promote_types(log_dA.dtype, v.dtype), torch.complex64)
    w = log_dA.to(cdtype)
    if L == 0 or bsz == 0:
        return torch.zeros(bsz, H, M, dtype=cdtype, device=v.device)
    c = default_block(L)
    Q = -(-L // c)
    v = torch.nn.functional.pad(v, (0, Q * c - L)).reshape(bsz, H, Q, c)
    T = _exp_outer(w, torch.arange(c, device=w.device), 1).to(cdtype).transpose(-1, -2)  # (H, c, M)
    Wq = _exp_outer(w, torch.arange(Q, device=w.device), c).to(cdtype).transpose(-1, -2)  # (H, Q, M)
    if v.is_complex():
        inner = torch.einsum("bhqc,hcm->bhqm", v.to(cdtype), T)
    else:  # real input: one real product against [Re T, Im T] (half the work of a complex one)
        Tr = torch.cat([T.real, T.imag], dim=-1)  # (H, c, 2M)
        prod = v.to(Tr.dtype) @ Tr.unsqueeze(0)  # (B, H, Q, 2M)
        inner = torch.complex(prod[..., :M], prod[..., M:])
    return (inner * Wq).sum(2)


def vandermonde_reduce_ref(dA: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`vandermonde_reduce` by Horner's rule over the lags, ``dA = exp(log_dA)``."""
    cdtype = torch.promote_types(torch.promote_types(dA.dtype, v.dtype), torch.complex64)
    acc = torch.zeros(v.shape[0], *dA.shape, dtype=cdtype)
    for j in reversed(range(v.shape[-1])):
        acc = acc * dA + v[..., j, None]
    return acc

"""The inner part of a Mamba block as one fused operation (Gu & Dao 2023, §3.4; docs/math.md §10).

From the input projection's output ``xz`` (batch, L, 2E) = [x, z] to the gated scan output
(batch, L, E) that the output projection reads:

    u  = silu(causal depthwise conv(x))            width K, carried window ``conv_state``
    [δ, B, C] = u W_xᵀ                             δ: (.., R), B, C: (.., N)
    Δ  = softplus(δ W_Δᵀ + b_Δ)
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_tᵀ       h: (batch, E, N), h_{-1} = ``ssm_state`` or 0
    y_t = (h_t C_t + D u_t) · silu(z_t)

``mamba_inner_ref`` computes this as written, with ``F.conv1d`` and the step-by-step
:func:`ssmkit.ops.selective_scan.selective_scan_ref`, through autograd. ``mamba_inner`` is the
fast path: on CPU float32/float64 tensors with the native library it runs the convolution and
the scan as native kernels over the projections' own channels-last layout, (batch, L, channels)
rows, vectorised across channels, so no tensor is transposed or copied between the
projections; the softplus, the D skip and the gate are computed inside the scan kernel, and
the backward pass is written by hand (one autograd node for the whole inner block; the two
small projections W_x, W_Δ are matrix products inside it). The backward pass is the reverse
scan of :mod:`ssmkit.ops.selective_scan` (states recomputed from checkpoints every
``checkpoint_every`` steps) plus, per step and channel, with ``s = sigmoid(z)``,
``σ = sigmoid(δ W_Δᵀ + b_Δ)`` and ``g_y`` the gradient of ``y``:

    ∂z = g_y (h C + D u) s (1 + z (1 - s)),   ∂(h C + D u) = g_y z s
    ∂D = Σ ∂(hC + Du) u,   ∂(δ W_Δᵀ + b_Δ) = ∂Δ σ,   ∂pre = ∂u s' (1 + pre (1 - s'))

where ``pre`` is the conv output before its SiLU and ``s' = sigmoid(pre)``. Every sum over the
batch, the channels or time is taken in a fixed order (per-task slots reduced in index order),
so gradients do not depend on the thread count. Elsewhere (another device or dtype, no native
library) ``mamba_inner`` composes the torch operations with the fast
:func:`~ssmkit.ops.selective_scan.selective_scan`.

No input checks here: this is an internal operation of :class:`ssmkit.layers.Mamba`, which
checks its inputs and parameters and passes operands of one dtype and device.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, check_tensor
from . import _native
from .cpu_half import depthwise_conv1d, linear
from .selective_scan import CHECKPOINT_EVERY, selective_scan, selective_scan_ref

__all__ = ["mamba_inner", "mamba_inner_ref", "mamba2_conv", "mamba2_conv_ref", "fused_applies"]

_CB = 32  # channels per vector block in the native kernels (MI_CB)
_CV_C = 128  # channels per task of the native conv kernels (CV_C): their work buffers hold L rows of it
_TASKS = 64  # about this many backward tasks (SSM_TASKS)


def _composed(scan, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
              conv_state=None, ssm_state=None):
    E = xz.shape[-1] // 2
    K = conv_weight.shape[-1]
    R = dt_proj_weight.shape[1]
    N = A.shape[1]
    x, z = xz[..., :E].transpose(1, 2), xz[..., E:].transpose(1, 2)  # (b, E, L)
    if conv_state is None:
        conv_state = x.new_zeros(x.shape[0], E, K - 1)
    u = F.silu(depthwise_conv1d(torch.cat([conv_state, x], dim=-1), conv_weight, conv_bias))
    dt_low, Bm, Cm = torch.split(linear(u.transpose(1, 2), x_proj_weight), [R, N, N], dim=-1)
    delta = linear(dt_low, dt_proj_weight)
    y, h = scan(u, delta.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2), D, z=z,
                delta_bias=dt_proj_bias, delta_softplus=True, return_last_state=True, initial_state=ssm_state)
    return y.transpose(1, 2), h


def mamba_inner_ref(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
                    conv_state=None, ssm_state=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference: ``xz`` (b, L, 2E), ``conv_weight`` (E, 1, K), ``conv_bias`` (E) or None,
    ``x_proj_weight`` (R + 2N, E), ``dt_proj_weight`` (E, R), ``dt_proj_bias`` (E) or None,
    ``A`` (E, N), ``D`` (E) or None, ``conv_state`` (b, E, K-1) or None, ``ssm_state``
    (b, E, N) or None -> ``y`` (b, L, E) and the last state (b, E, N)."""
    return _composed(selective_scan_ref, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                     dt_proj_bias, A, D, conv_state, ssm_state)


def fused_applies(xz: torch.Tensor, *tensors) -> bool:
    """True when the native kernels can run: CPU, float32 or float64 operands of one dtype, the
    library available, autocast off."""
    if xz.device.type != "cpu" or xz.dtype not in (torch.float32, torch.float64):
        return False
    if any(t is not None and (t.dtype != xz.dtype or t.device != xz.device) for t in tensors):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return _native.available()


def mamba_inner(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
                conv_state=None, ssm_state=None,
                checkpoint_every: int = CHECKPOINT_EVERY) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fast path of :func:`mamba_inner_ref` (same arguments and results; see the module
    docstring). ``checkpoint_every``: steps between the states kept for the backward pass."""
    args = (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, conv_state, ssm_state)
    _check_inner(*args)
    if not fused_applies(*args):
        return _composed(selective_scan, *args)
    if _native.autograd_needed(*args):
        return _MambaInnerFn.apply(*args, checkpoint_every)
    out, last, _ = _fused_forward(*args, checkpoint_every, save=False)
    return out, last


def _check_inner(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, conv_state,
                 ssm_state) -> None:
    """mamba_inner's shapes (the argument is named): xz (b, L, 2E); A (E, N); dt_proj_weight
    (E, R); x_proj_weight (R + 2N, E); conv_weight (E, 1, K); conv_bias, dt_proj_bias, D (E,) or
    None; conv_state (b, E, K - 1), ssm_state (b, E, N) or None. Values are not checked."""
    check_tensor("xz", xz, ndim=3, floating=True, finite=False)
    if xz.shape[-1] % 2:
        raise ValueError(f"xz must have shape (batch, length, 2E), got {tuple(xz.shape)}")
    E = xz.shape[-1] // 2
    check_tensor("A", A, shape=(E, None), floating=True, finite=False)
    check_tensor("dt_proj_weight", dt_proj_weight, shape=(E, None), floating=True, finite=False)
    N, R = A.shape[1], dt_proj_weight.shape[1]
    check_tensor("x_proj_weight", x_proj_weight, shape=(R + 2 * N, E), floating=True, finite=False)
    check_tensor("conv_weight", conv_weight, shape=(E, 1, None), floating=True, finite=False)
    for name, t, shape in (("conv_bias", conv_bias, (E,)), ("dt_proj_bias", dt_proj_bias, (E,)), ("D", D, (E,)),
                           ("conv_state", conv_state, (xz.shape[0], E, conv_weight.shape[-1] - 1)),
                           ("ssm_state", ssm_state, (xz.shape[0], E, N))):
        if t is not None:
            check_tensor(name, t, shape=shape, floating=True, finite=False)


def _fused_forward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
                   conv_state, ssm_state, every, save):
    """The native forward: ``y`` (b, L, E), the last state, and when ``save`` the tensors the
    backward pass reads (else None)."""
    dtype = xz.dtype
    threads = torch.get_num_threads()
    bsz, L, E2 = xz.shape
    E, K, N, R = E2 // 2, conv_weight.shape[-1], A.shape[1], dt_proj_weight.shape[1]
    xz = xz.detach().contiguous()
    wt = conv_weight.detach().reshape(E, K).t().contiguous()  # (K, E)
    cb = None if conv_bias is None else conv_bias.detach().contiguous()
    win = None if conv_state is None else conv_state.detach().transpose(1, 2).contiguous()  # (b, K-1, E)
    Wx, Wdt = x_proj_weight.detach(), dt_proj_weight.detach()
    dtb = None if dt_proj_bias is None else dt_proj_bias.detach().contiguous()
    Dv = None if D is None else D.detach().contiguous()
    At = A.detach().t().contiguous()  # (N, E)
    h0 = None if ssm_state is None else ssm_state.detach().contiguous()
    u = xz.new_empty(bsz, L, E)
    _native.kernel("cv_fwd", dtype)(xz.data_ptr(), E2, wt.data_ptr(), _native.ptr(cb), _native.ptr(win), u.data_ptr(),
                              bsz, E, L, K, threads)
    xdbl = torch.mm(u.view(-1, E), Wx.t())  # (b L, R + 2N)
    dtr = torch.mm(xdbl[:, :R], Wdt.t())  # (b L, E)
    out = xz.new_empty(bsz, L, E)
    last = xz.new_empty(bsz, E, N)
    states = xz.new_empty(bsz, -(-L // every), N, E) if save else None
    work = xz.new_empty(threads * N * _CB)
    zptr = xz.data_ptr() + E * xz.element_size()  # z: the second half of each row of xz
    _native.kernel("mi_fwd", dtype)(u.data_ptr(), dtr.data_ptr(), _native.ptr(dtb), At.data_ptr(), xdbl.data_ptr(), R + 2 * N, R,
                              _native.ptr(Dv), zptr, E2, _native.ptr(h0), out.data_ptr(), last.data_ptr(), _native.ptr(states),
                              work.data_ptr(), bsz, E, L, N, every, threads)
    saved = (xz, wt, cb, win, Wx, Wdt, dtb, Dv, At, u, xdbl, dtr, states) if save else None
    return out, last, saved


class _MambaInnerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D,
                conv_state, ssm_state, every):
        out, last, saved = _fused_forward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
                                          A, D, conv_state, ssm_state, every, save=True)
        ctx.save_for_backward(*saved)
        ctx.every = every
        ctx.has = (conv_bias is not None, dt_proj_bias is not None, D is not None, conv_state is not None,
                   ssm_state is not None)
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        xz, wt, cb, win, Wx, Wdt, dtb, Dv, At, u, xdbl, dtr, states = ctx.saved_tensors
        dtype = xz.dtype
        threads = torch.get_num_threads()
        bsz, L, E2 = xz.shape
        E, K, N, R = E2 // 2, wt.shape[0], At.shape[0], Wdt.shape[1]
        T = ctx.every
        has_cb, has_dtb, has_D, has_win, has_h0 = ctx.has
        dout = xz.new_zeros(bsz, L, E) if dout is None else dout.contiguous()
        dlast = None if dlast is None else dlast.contiguous()
        nblk = -(-E // _CB)
        ngrp = max(1, min(nblk, -(-_TASKS // bsz)))
        du = xz.new_empty(bsz, L, E)
        ddtr = xz.new_empty(bsz * L, E)
        dxz = xz.new_empty(bsz, L, E2)
        dxdbl = xz.new_empty(bsz * L, R + 2 * N)
        dAt = xz.new_empty(N, E)
        dD = xz.new_empty(E) if has_D else None
        ddtb = xz.new_empty(E) if has_dtb else None
        dh0 = xz.new_empty(bsz, E, N) if has_h0 else None
        part = xz.new_empty(2 * bsz * ngrp * L * N)
        acc = xz.new_empty(bsz * nblk * (N + 2) * _CB)
        work = xz.new_empty(threads * (2 * T * N + 2 * N) * _CB)
        esz = xz.element_size()
        _native.kernel("mi_bwd", dtype)(u.data_ptr(), dtr.data_ptr(), _native.ptr(dtb), At.data_ptr(), xdbl.data_ptr(), R + 2 * N, R,
                                  _native.ptr(Dv), xz.data_ptr() + E * esz, E2, states.data_ptr(), dout.data_ptr(), _native.ptr(dlast),
                                  du.data_ptr(), ddtr.data_ptr(), dxz.data_ptr() + E * esz, E2,
                                  dxdbl.data_ptr(), R + 2 * N, dAt.data_ptr(), _native.ptr(dD), _native.ptr(ddtb), _native.ptr(dh0),
                                  part.data_ptr(), acc.data_ptr(), work.data_ptr(), bsz, E, L, N, T, ngrp, threads)
        # the two small projections: δ -> Δ (W_Δ), u -> [δ, B, C] (W_x)
        # (the operand orders below are the fast ones for these thin shapes, measured: the
        # long inner dimension b·L on the right-hand operand's rows, W_Δ read column-major)
        dxdbl[:, :R] = torch.mm(ddtr, Wdt.t().contiguous().t())
        dWdt = torch.mm(xdbl[:, :R].t(), ddtr).t()
        dWx = torch.mm(dxdbl.t(), u.view(-1, E))
        du2 = du.view(-1, E).addmm_(dxdbl, Wx)
        dwt = xz.new_empty(K, E)
        dcb = xz.new_empty(E) if has_cb else None
        dwin = xz.new_empty(bsz, K - 1, E) if has_win else None
        part2 = xz.new_empty(bsz * (K + 1) * E)
        work2 = xz.new_empty(threads * L * _CV_C)
        _native.kernel("cv_bwd", dtype)(xz.data_ptr(), E2, wt.data_ptr(), _native.ptr(cb), _native.ptr(win), du2.data_ptr(), dxz.data_ptr(), E2,
                                  _native.ptr(dwin), dwt.data_ptr(), _native.ptr(dcb), part2.data_ptr(), work2.data_ptr(),
                                  bsz, E, L, K, threads)
        return (dxz, dwt.t().reshape(E, 1, K), dcb, dWx, dWdt, ddtb, dAt.t(), dD,
                None if dwin is None else dwin.transpose(1, 2), dh0, None)


# --- Mamba-2: the causal conv + SiLU of [x, B, C], split without copies between the ops ------

def mamba2_conv_ref(zxbcdt, conv_weight, conv_bias, sizes, conv_state=None):
    """Reference for :func:`mamba2_conv` (same arguments and results): ``torch.split``,
    ``F.conv1d`` over the transposed channels and ``F.silu``."""
    E, Ex, GN, H = sizes
    z, xBC, dt = torch.split(zxbcdt, [E, Ex + 2 * GN, H], dim=-1)
    Cd = Ex + 2 * GN
    K = conv_weight.shape[-1]
    xt = xBC.transpose(1, 2)
    if conv_state is None:
        conv_state = xt.new_zeros(xt.shape[0], Cd, K - 1)
    u = F.silu(depthwise_conv1d(torch.cat([conv_state, xt], dim=-1), conv_weight, conv_bias)).transpose(1, 2)
    x, Bm, Cm = torch.split(u, [Ex, GN, GN], dim=-1)
    return z, x, Bm, Cm, dt


def mamba2_conv(zxbcdt, conv_weight, conv_bias, sizes, conv_state=None):
    """The input side of a Mamba-2 block: from the in-projection's output ``zxbcdt``
    (b, L, E + Ex + 2·G·N + H) = [z, x, B, C, dt] to ``z``, ``silu(conv(x))``, ``silu(conv(B))``,
    ``silu(conv(C))`` (the causal depthwise conv of width K over the [x, B, C] channels, with the
    carried window ``conv_state`` (b, Ex + 2GN, K-1) or zeros) and ``dt``, each returned as its
    own contiguous (b, L, ·) tensor. ``sizes`` = (E, Ex, G·N, H).

    On CPU float32/float64 with the native library this is one autograd node whose backward
    writes every gradient straight into one buffer of the in-projection's output layout (no
    concatenation of the pieces, no transposes); elsewhere it is :func:`mamba2_conv_ref`.
    Shapes are checked (the argument is named); values are not (the layer checks its input)."""
    sizes = _check_m2(zxbcdt, conv_weight, conv_bias, sizes, conv_state)
    if not fused_applies(zxbcdt, conv_weight, conv_bias, conv_state):
        return mamba2_conv_ref(zxbcdt, conv_weight, conv_bias, sizes, conv_state)
    if _native.autograd_needed(zxbcdt, conv_weight, conv_bias, conv_state):
        return _Mamba2ConvFn.apply(zxbcdt, conv_weight, conv_bias, conv_state, sizes)
    return _m2_forward(zxbcdt, conv_weight, conv_bias, conv_state, sizes)[0]


def _check_m2(zxbcdt, conv_weight, conv_bias, sizes, conv_state) -> tuple:
    """mamba2_conv's shapes: sizes four positive ints (E, Ex, GN, H); zxbcdt (b, L, E + Ex + 2 GN + H),
    conv_weight (Ex + 2 GN, 1, K), conv_bias (Ex + 2 GN,) or None, conv_state (b, Ex + 2 GN, K - 1)
    or None; one floating dtype. Returns sizes as a tuple."""
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 4:
        raise ValueError(f"sizes must be (E, Ex, GN, H), four positive ints, got {sizes!r}")
    E, Ex, GN, H = (check_positive_int(f"sizes[{i}]", v) for i, v in enumerate(sizes))
    Cd = Ex + 2 * GN
    check_tensor("zxbcdt", zxbcdt, shape=(None, None, E + Cd + H), floating=True, finite=False)
    check_tensor("conv_weight", conv_weight, shape=(Cd, 1, None), floating=True, finite=False)
    if conv_bias is not None:
        check_tensor("conv_bias", conv_bias, shape=(Cd,), floating=True, finite=False)
    if conv_state is not None:
        check_tensor("conv_state", conv_state, shape=(zxbcdt.shape[0], Cd, conv_weight.shape[-1] - 1),
                     floating=True, finite=False)
    return E, Ex, GN, H


def _m2_parts(sizes):
    """Column offsets and widths of x, B, C inside zxbcdt and inside the conv channels."""
    E, Ex, GN, H = sizes
    return ((E, 0, Ex), (E + Ex, Ex, GN), (E + Ex + GN, Ex + GN, GN))


def _addresses(tensors) -> torch.Tensor:
    """An array of the tensors' data addresses (0 for None) for a kernel's per-part arguments:
    the caller keeps it (and the tensors) alive until the kernel returns."""
    return torch.tensor([0 if t is None else t.data_ptr() for t in tensors], dtype=torch.int64)


def _part_layout(parts):
    """(columns in zxbcdt, widths) of the conv's parts as int64 arrays for the kernels."""
    return (torch.tensor([col for col, _, _ in parts], dtype=torch.int64),
            torch.tensor([width for _, _, width in parts], dtype=torch.int64))


def _m2_forward(zxbcdt, conv_weight, conv_bias, conv_state, sizes):
    dtype = zxbcdt.dtype
    threads = torch.get_num_threads()
    E, Ex, GN, H = sizes
    bsz, L, Din = zxbcdt.shape
    rows, S = _native.row_view(zxbcdt.detach())  # row stride: Din, or more for padded_linear's rows
    zxbcdt = rows.view(bsz, L, Din)
    K = conv_weight.shape[-1]
    Cd = Ex + 2 * GN
    wt = conv_weight.detach().reshape(Cd, K).t()  # (K, Cd)
    cb = None if conv_bias is None else conv_bias.detach()
    win = None if conv_state is None else conv_state.detach().transpose(1, 2)  # (b, K-1, Cd)
    parts = _m2_parts(sizes)
    pieces = [(wt[:, ch:ch + width].contiguous(), None if cb is None else cb[ch:ch + width].contiguous(),
               None if win is None else win[..., ch:ch + width].contiguous()) for _, ch, width in parts]
    outs = [zxbcdt.new_empty(bsz, L, width) for _, _, width in parts]
    # x, B and C in one call: a sequence's rows are read once for the three (docs/performance.md);
    # the address arrays are held in locals until the call returns
    cols, widths = _part_layout(parts)
    wts, biases, wins = (_addresses([pc[i] for pc in pieces]) for i in range(3))
    out_at = _addresses(outs)
    _native.kernel("cv_fwd_parts", dtype)(
        zxbcdt.data_ptr(), S, len(parts), cols.data_ptr(), widths.data_ptr(), wts.data_ptr(), biases.data_ptr(),
        wins.data_ptr(), out_at.data_ptr(), bsz, L, K, threads)
    z = zxbcdt[..., :E].contiguous()
    dt = zxbcdt[..., E + Cd:].contiguous()
    return (z, *outs, dt), zxbcdt, pieces


class _Mamba2ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zxbcdt, conv_weight, conv_bias, conv_state, sizes):
        outs, zxbcdt_c, pieces = _m2_forward(zxbcdt, conv_weight, conv_bias, conv_state, sizes)
        flat = [t for piece in pieces for t in piece]
        ctx.save_for_backward(zxbcdt_c, *flat)
        ctx.sizes = sizes
        ctx.has = (conv_bias is not None, conv_state is not None)
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, dz, dx, dB, dC, ddt):
        zxbcdt, *flat = ctx.saved_tensors
        pieces = [flat[i:i + 3] for i in range(0, len(flat), 3)]
        dtype = zxbcdt.dtype
        threads = torch.get_num_threads()
        E, Ex, GN, H = ctx.sizes
        has_cb, has_win = ctx.has
        bsz, L, Din = zxbcdt.shape
        S = _native.row_view(zxbcdt)[1]  # the forward's row stride (zxbcdt is already its view)
        K = pieces[0][0].shape[0]
        Cd = Ex + 2 * GN
        g = zxbcdt.new_empty(bsz, L, Din)
        if dz is None:
            g[..., :E].zero_()
        else:
            g[..., :E].copy_(dz)
        if ddt is None:
            g[..., E + Cd:].zero_()
        else:
            g[..., E + Cd:].copy_(ddt)
        parts = _m2_parts(ctx.sizes)
        work = zxbcdt.new_empty(threads * L * _CV_C)
        du = [zxbcdt.new_zeros(bsz, L, width) if d is None else d.contiguous()
              for (_, _, width), d in zip(parts, (dx, dB, dC))]
        dw = [zxbcdt.new_empty(K, width) for _, _, width in parts]
        db = [zxbcdt.new_empty(width) if has_cb else None for _, _, width in parts]
        dwin = [zxbcdt.new_empty(bsz, K - 1, width) if has_win else None for _, _, width in parts]
        part = [zxbcdt.new_empty(bsz * (K + 1) * width) for _, _, width in parts]
        cols, widths = _part_layout(parts)
        wts, biases, wins = (_addresses([pc[i] for pc in pieces]) for i in range(3))
        arrays = [_addresses(t) for t in (du, dwin, dw, db, part)]  # held until the call returns
        _native.kernel("cv_bwd_parts", dtype)(
            zxbcdt.data_ptr(), S, len(parts), cols.data_ptr(), widths.data_ptr(), wts.data_ptr(), biases.data_ptr(),
            wins.data_ptr(), arrays[0].data_ptr(), g.data_ptr(), Din, *(a.data_ptr() for a in arrays[1:]),
            work.data_ptr(), bsz, L, K, threads)
        dconv_w = torch.cat(dw, dim=1).t().reshape(Cd, 1, K)
        dconv_b = torch.cat(db) if has_cb else None
        dstate = torch.cat(dwin, dim=-1).transpose(1, 2) if has_win else None
        return g, dconv_w, dconv_b, dstate, None

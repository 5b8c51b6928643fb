"""Mamba-2's output side before the out-projection as one operation: the D skip and the gated
group RMSNorm (Dao & Gu 2024, "Transformers are SSMs", §7; docs/mamba.md).

With ``y, x`` (..., H, P), ``D`` (H,), ``z`` (..., E = H·P), ``weight`` (E,) and groups of
``group_size`` channels:

    v = y + D_h x                                  (per head h)
    out = weight · RMSNorm_group(v · silu(z))      (norm_before_gate=False)
    out = weight · RMSNorm_group(v) · silu(z)      (norm_before_gate=True)

``RMSNorm_group(u)_e = u_e / sqrt(mean_{j in group(e)} u_j² + eps)``. The result is
(..., E). :func:`skip_gated_rms_norm_ref` composes the torch operations (what
:class:`ssmkit.layers.Mamba2` computes without the native library). :func:`skip_gated_rms_norm`
runs it as one native kernel on CPU float32/float64 operands of one dtype (one pass over the
rows forward, one backward; the forward keeps only the per-row, per-group ``1/rms`` for the
backward, which recomputes ``v`` and the gate). Its backward, with ``n`` the normalised values,
``dn`` their gradient and ``c = mean_group(dn · n)``: ``∂u = (dn - n c) / rms``; the gate,
``D`` and ``weight`` gradients follow by the chain rule, and the sums over rows (``∂D``,
``∂weight``) are taken over fixed blocks of rows reduced in block order, so the gradients do
not depend on the thread count. Elsewhere the reference is used.

Both functions check their operands' shapes and dtypes, and their values (finite) outside
``trusted_inputs`` as every public operator does. ``z`` may be a slice with a row stride (its
last dimension contiguous).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_float, check_positive_int, check_tensor
from . import _native

__all__ = ["skip_gated_rms_norm", "skip_gated_rms_norm_ref", "native_applies"]


def _check(y, x, D, z, weight, group_size, eps):
    check_tensor("y", y, floating=True)
    if y.dim() < 2:
        raise ValueError(f"y must have shape (..., heads, headdim), got {tuple(y.shape)}")
    H, P = y.shape[-2], y.shape[-1]
    check_tensor("x", x, shape=tuple(y.shape), floating=True)
    check_tensor("D", D, shape=(H,), floating=True)
    check_tensor("z", z, shape=(*y.shape[:-2], H * P), floating=True)
    check_tensor("weight", weight, shape=(H * P,), floating=True)
    check_positive_int("group_size", group_size)
    if (H * P) % group_size:
        raise ValueError(f"group_size must divide the {H * P} channels, got {group_size}")
    check_float("eps", eps, low=0.0)


def skip_gated_rms_norm_ref(y, x, D, z, weight, group_size: int, eps: float, norm_before_gate: bool):
    """The composed torch arithmetic (see the module docstring); same arguments and result as
    :func:`skip_gated_rms_norm`."""
    _check(y, x, D, z, weight, group_size, eps)
    return _composed(y, x, D, z, weight, group_size, eps, norm_before_gate)


def _composed(y, x, D, z, weight, group_size, eps, norm_before_gate):
    v = (y + D[:, None] * x).reshape(z.shape)
    g = F.silu(z)
    if not norm_before_gate:
        v = v * g
    shape = v.shape
    n = F.rms_norm(v.reshape(*shape[:-1], shape[-1] // group_size, group_size), (group_size,), None,
                   eps).reshape(shape)
    if norm_before_gate:
        n = n * g
    return weight * n


def native_applies(y, x, D, z, weight) -> bool:
    """True when the native kernel can run: CPU operands, all float32 or all float64, autocast
    off, the library available."""
    dt = y.dtype
    if dt not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dt for t in (y, x, D, z, weight)):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return _native.available()


def skip_gated_rms_norm(y, x, D, z, weight, group_size: int, eps: float, norm_before_gate: bool):
    """``weight · RMSNorm_group((y + D x) · silu(z))`` (or gated after the norm with
    ``norm_before_gate``): ``y, x`` (..., H, P), ``D`` (H,), ``z`` (..., H·P), ``weight``
    (H·P,) -> (..., H·P). Native when :func:`native_applies`, else
    :func:`skip_gated_rms_norm_ref`."""
    _check(y, x, D, z, weight, group_size, eps)
    if not native_applies(y, x, D, z, weight):
        return _composed(y, x, D, z, weight, group_size, eps, norm_before_gate)
    args = (int(group_size), float(eps), bool(norm_before_gate))
    if _native.autograd_needed(y, x, D, z, weight):
        return _SkipGatedRMSNormFn.apply(y, x, D, z, weight, *args)
    return _forward(y, x, D, z, weight, *args)[0]


def _forward(y, x, D, z, weight, group_size, eps, nbg):
    dtype = y.dtype
    E = z.shape[-1]
    H, P = y.shape[-2], y.shape[-1]
    y, x, D, weight = (t.detach().contiguous() for t in (y, x, D, weight))
    z2, zs = _native.row_view(z.detach())
    rows = z2.shape[0]
    out = y.new_empty(*z.shape)
    rstd = y.new_empty(rows, E // group_size)
    threads = torch.get_num_threads()
    if rows:
        work = y.new_empty(threads * 2 * E)
        _native.kernel("gn_fwd", dtype)(y.data_ptr(), x.data_ptr(), D.data_ptr(), z2.data_ptr(), zs, weight.data_ptr(),
                                  out.data_ptr(), rstd.data_ptr(), work.data_ptr(), rows, H, P, group_size, eps,
                                  int(nbg), threads)
    return out, (y, x, D, z2, weight, rstd)


class _SkipGatedRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, D, z, weight, group_size, eps, nbg):
        out, saved = _forward(y, x, D, z, weight, group_size, eps, nbg)
        ctx.save_for_backward(*saved)
        ctx.args = (group_size, nbg, y.shape, z.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        y, x, D, z2, weight, rstd = ctx.saved_tensors
        group_size, nbg, yshape, zshape = ctx.args
        lib = _native.library()
        H, P = yshape[-2], yshape[-1]
        E = H * P
        rows = z2.shape[0]
        zs = z2.stride(0) if rows > 1 else E
        dout = dout.contiguous()
        dy, dx, dz = y.new_empty(yshape), y.new_empty(yshape), y.new_empty(zshape)
        dD, dw = y.new_zeros(H), y.new_zeros(E)
        threads = torch.get_num_threads()
        if rows:
            nblk = lib.gn_blocks(rows)
            part = y.new_empty(nblk * (E + H))
            work = y.new_empty(threads * 4 * E)
            _native.kernel("gn_bwd", y.dtype)(y.data_ptr(), x.data_ptr(), D.data_ptr(), z2.data_ptr(), zs,
                                        weight.data_ptr(), rstd.data_ptr(), dout.data_ptr(), dy.data_ptr(),
                                        dx.data_ptr(), dz.data_ptr(), dD.data_ptr(), dw.data_ptr(),
                                        part.data_ptr(), work.data_ptr(), rows, H, P, group_size, int(nbg),
                                        threads)
        return dy, dx, dD, dz, dw, None, None, None

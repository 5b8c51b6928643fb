"""LayerNorm over the last dimension (Ba, Kiros & Hinton 2016) with a native CPU kernel.

For rows ``x`` (..., H), ``weight`` and ``bias`` (H,) (either may be None):

    mean = Σⱼ xⱼ / H,   rstd = 1 / √(Σⱼ (xⱼ - mean)² / H + eps),   y = (x - mean) · rstd · w + b

with the backward, for x̂ = (x - mean) · rstd and g = ∂y · w:

    ∂x = rstd · (g - meanⱼ(g) - x̂ · meanⱼ(g x̂)),   ∂w = Σ_rows ∂y x̂,   ∂b = Σ_rows ∂y.

:func:`layer_norm` is ``torch.nn.functional.layer_norm`` over the last dimension. On the CPU in
float32 (autocast off, native library built) a native kernel (``ops/_native/layer_norm.c``)
computes it: torch's CPU LayerNorm spends most of its time per row at the LTI blocks' widths
(about 0.5 ms forward and 0.25 ms backward for 6272 rows of 64 in a training step), the native
one a few vector operations a row. Its weight and bias gradients are summed in blocks of rows
whose size does not depend on the thread count (bit-identical results for any thread count).
Elsewhere torch's function runs, and also under forward-mode AD and torch.func transforms: the
native function has first-order reverse-mode gradients only (no double backward).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._checks import check_float, check_tensor
from . import _native

__all__ = ["layer_norm", "layer_norm_with_skip"]


def _native_applies(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> bool:
    """float32 CPU operands of matching width (at least 1), autocast off, no forward-mode AD or
    torch.func transform in progress (the native function has first-order reverse-mode gradients
    only), the library built."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() == 0 or x.shape[-1] == 0:
        return False
    if _native.transform_active(x):
        return False
    for p in (weight, bias):
        if p is not None and (p.dtype != torch.float32 or p.device.type != "cpu" or p.shape != x.shape[-1:]):
            return False
    return not torch.is_autocast_enabled("cpu") and _native.available()


def _forward(x2: torch.Tensor, weight, bias, eps: float, keep: bool):
    """y (R, H) and, when ``keep``, the row statistics (mean, rstd) (R,) for the backward."""
    R, H = x2.shape
    y = torch.empty_like(x2)
    mean = rstd = None
    if keep:
        mean, rstd = x2.new_empty(R), x2.new_empty(R)
    if R and H:
        _native.library().ln_fwd_f32(x2.data_ptr(), _native.ptr(weight), _native.ptr(bias), y.data_ptr(),
                                     _native.ptr(mean), _native.ptr(rstd), R, H, float(eps),
                                     torch.get_num_threads())
    return y, mean, rstd


class _NativeLayerNorm(torch.autograd.Function):
    """LayerNorm by the native kernel; with ``skip``, x is returned too (as a second output) and the
    gradient that output receives is added to x's in the backward's one pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, skip: bool):
        shape = x.shape
        x2 = x.detach().reshape(-1, shape[-1]).contiguous()
        w = None if weight is None else weight.detach().contiguous()
        b = None if bias is None else bias.detach().contiguous()
        y, mean, rstd = _forward(x2, w, b, eps, True)
        ctx.save_for_backward(x2, w, mean, rstd)
        ctx.shape, ctx.has_weight, ctx.has_bias = shape, weight is not None, bias is not None
        ctx.set_materialize_grads(False)
        return (y.reshape(shape), x) if skip else y.reshape(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_skip=None):
        x2, w, mean, rstd = ctx.saved_tensors
        R, H = x2.shape
        want_x = ctx.needs_input_grad[0]
        want_w = ctx.has_weight and ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if gy is None:  # only the skip output was used
            return (g_skip if want_x else None), None, None, None, None
        gy = gy.reshape(R, H).contiguous()
        gres = None if g_skip is None or not want_x else g_skip.reshape(R, H).contiguous()
        gx = torch.empty_like(x2) if want_x else None
        gw = x2.new_zeros(H) if want_w else None
        gb = x2.new_zeros(H) if want_b else None
        lib = _native.library()
        if R and H and (want_x or want_w or want_b):
            part = x2.new_empty(lib.ln_blocks(R) * 2 * H) if (want_w or want_b) else None
            lib.ln_bwd_f32(gy.data_ptr(), x2.data_ptr(), mean.data_ptr(), rstd.data_ptr(), _native.ptr(w),
                           _native.ptr(gres), _native.ptr(gx), _native.ptr(gw), _native.ptr(gb), _native.ptr(part),
                           R, H, torch.get_num_threads())
        elif want_x:
            gx.zero_() if gres is None else gx.copy_(gres)
        return (None if gx is None else gx.reshape(ctx.shape)), gw, gb, None, None


def _check(x, weight, bias, eps) -> float:
    """x a floating tensor of at least one dimension (finite, outside trusted_inputs and torch.func
    transforms); weight and bias None or (H,) of x's dtype; eps a finite number > 0."""
    check_tensor("x", x, floating=True, finite=not _native.transform_active(x))  # vmap: no data-dependent check
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the normalised one), got a 0-dimensional tensor")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(name, p, shape=(x.shape[-1],), floating=True)
            if p.dtype != x.dtype:
                raise TypeError(f"{name} must have x's dtype {x.dtype}, got {p.dtype}")
    return check_float("eps", eps, low=0.0, low_open=True)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm of ``x`` (..., H) over its last dimension with ``weight``, ``bias`` (H,) or None:
    ``F.layer_norm(x, (H,), weight, bias, eps)``, by the native kernel where it applies."""
    return _layer_norm(x, weight, bias, _check(x, weight, bias, eps))


def _layer_norm(x, weight, bias, eps: float) -> torch.Tensor:
    """:func:`layer_norm` on checked arguments."""
    if not _native_applies(x, weight, bias):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    if _native.autograd_needed(x, weight, bias):
        return _NativeLayerNorm.apply(x, weight, bias, eps, False)
    shape = x.shape
    w, b = (None if t is None else t.contiguous() for t in (weight, bias))
    return _forward(x.reshape(-1, shape[-1]).contiguous(), w, b, eps, False)[0].reshape(shape)


def layer_norm_with_skip(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                         eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(layer_norm(x, weight, bias, eps), x)`` for a pre-norm residual block ``x + f(norm(x))``:
    the returned ``x`` has x's values, and on the native route the gradient it receives (the
    residual's) is added to x's gradient inside the LayerNorm's backward pass, instead of by a
    separate sum over the whole tensor. Elsewhere it is x itself."""
    eps = _check(x, weight, bias, eps)
    if _native_applies(x, weight, bias) and torch.is_grad_enabled() and x.requires_grad:
        return _NativeLayerNorm.apply(x, weight, bias, eps, True)
    return _layer_norm(x, weight, bias, eps), x

"""The position-wise channel mixer of the LTI blocks, fused: ``GLU(Linear(GELU(h)))``.

For ``h`` (..., H), weight ``W`` (2H, H) and bias ``b`` (2H,):

    g = GELU(h),   z = g Wᵀ + b = [a, s],   y = a ⊙ σ(s)          (y: (..., H))

(the S4 papers' mixer; GELU is the exact, erf-based one). :class:`ChannelMixer` is an
``nn.Sequential(GELU(), Linear(H, 2H), GLU(-1))`` — same children, same parameter names
(``1.weight``, ``1.bias``), so state dicts load either way — whose ``forward`` runs the three
steps as one autograd function with a written-out backward:

    ∂a = ∂y ⊙ σ(s),   ∂s = ∂a ⊙ a ⊙ (1 - σ(s)),   ∂z = [∂a, ∂s]
    ∂W = ∂zᵀ g,   ∂b = Σ ∂z,   ∂h = GELU'(h) ⊙ (∂z W)

It computes the two halves ``a`` and ``s`` as two ``addmm`` products (contiguous rows for the
elementwise work) and saves ``h``, ``g``, ``a`` and ``σ(s)`` (no sigmoid recomputed in the
backward). Same arithmetic as the unfused modules up to rounding order.

On the CPU in float32 (H a multiple of 8, native library built) a native kernel runs instead
(``ops/_native/channel_mixer.c``): one pass over blocks of 32 rows takes each block through every
step while it is in cache (torch's dozen separate passes each go out to memory); it saves ``g``,
``[a, σ(s)]`` and ``GELU'(h)`` (the erf is shared with GELU) for its backward, which again works
block by block and evaluates no transcendental function.
The torch composition above stays as the reference it is tested against (and the path for other
devices and dtypes).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._checks import check_choice, check_positive_int, check_tensor, match_parameter_dtype
from ..ops import _native

__all__ = ["ChannelMixer", "channel_mixer"]


class _FusedMixer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias):
        H = weight.shape[1]
        h2 = h.reshape(-1, H)
        g = torch.nn.functional.gelu(h2)
        # the two halves of z as two contiguous products (elementwise work on contiguous rows)
        a = torch.addmm(bias[:H], g, weight[:H].t())
        sig = torch.sigmoid(torch.addmm(bias[H:], g, weight[H:].t()))
        y = a * sig
        ctx.save_for_backward(h2, g, a, sig, weight)
        ctx.shape = h.shape
        return y.reshape(h.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        h2, g, a, sig, weight = ctx.saved_tensors
        H = a.shape[1]
        gy = gy.reshape(-1, H)
        ga = gy * sig
        gs = ga * a
        gs.addcmul_(gs, sig, value=-1.0)  # ∂a ⊙ a ⊙ (1 - σ)
        gh = gW = gb = None
        if ctx.needs_input_grad[0]:
            gg = torch.addmm(ga @ weight[:H], gs, weight[H:])
            gh = torch.ops.aten.gelu_backward(gg, h2).reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            gW = torch.cat([ga.t() @ g, gs.t() @ g])
        if ctx.needs_input_grad[2]:
            gb = torch.cat([ga.sum(0), gs.sum(0)])
        return gh, gW, gb


# From this width on, the native backward leaves the weight gradient to torch's matrix product
# (measured: at H = 64 the blocked partials are faster, at H = 256 the library product).
TORCH_WEIGHT_GRAD_MIN_H = 128


class _NativeMixer(torch.autograd.Function):
    """The same function by the native kernel (float32, CPU, H % 8 == 0). Saves GELU(h),
    [a, σ(s)] (their rows padded, as the kernel reads them) and, when h needs a gradient,
    GELU'(h): the backward evaluates no erf, exp or sigmoid."""

    @staticmethod
    def forward(ctx, h, weight, bias, residual):
        y, (dg, z, g) = _native_forward(h, weight, bias, residual, any(ctx.needs_input_grad[:3]),
                                        ctx.needs_input_grad[0])
        ctx.save_for_backward(dg, z, g, weight)
        ctx.rows = y.shape[0]
        ctx.shape = h.shape
        return y.reshape(h.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        dg, z, g, weight = ctx.saved_tensors
        g_res = gy if ctx.needs_input_grad[3] else None  # y = residual + ...: its gradient is gy
        R, H = ctx.rows, weight.shape[1]
        gy = gy.reshape(R, H).contiguous()
        gh = gy.new_empty(R, H) if ctx.needs_input_grad[0] else None
        want_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        # wide layers: dz out to memory and gW, gb by torch's product and sum over all rows
        dz = z.new_empty(z.shape) if want_w and H >= TORCH_WEIGHT_GRAD_MIN_H else None
        gW = torch.empty_like(weight) if ctx.needs_input_grad[1] and dz is None else None
        gb = weight.new_empty(weight.shape[0]) if ctx.needs_input_grad[2] and dz is None else None
        if z is not None:
            rc = _native.library().mix_bwd_f32(
                gy.data_ptr(), _native.ptr(dg), z.data_ptr(), g.data_ptr(), weight.data_ptr(), _native.ptr(gh),
                _native.ptr(gW), _native.ptr(gb), _native.ptr(dz), R, H, torch.get_num_threads())
            if rc == 1:
                raise MemoryError("channel_mixer: the native kernel could not allocate its scratch buffers")
            if rc:
                raise RuntimeError(f"channel_mixer: the native backward failed (code {rc})")
        if dz is not None:
            dz2 = dz[:, :2 * H]
            gW = dz2.t() @ g[:, :H] if ctx.needs_input_grad[1] else None
            gb = dz2.sum(0) if ctx.needs_input_grad[2] else None
        return (None if gh is None else gh.reshape(ctx.shape)), gW, gb, g_res


def _native_forward(h, weight, bias, residual, save: bool, save_dg: bool):
    """The native forward: y (R, H) and, for the backward, (GELU'(h) if save_dg, [a, σ(s)] and
    GELU(h) if save; else None). Without ``save`` the kernel writes nothing but y."""
    lib = _native.library()
    H = weight.shape[1]
    h2 = h.reshape(-1, H).contiguous()
    res = None if residual is None else residual.reshape(-1, H).contiguous()
    weight, bias = weight.contiguous(), bias.contiguous()
    R = h2.shape[0]
    y = torch.empty_like(h2)
    z = g = dg = None
    if save:
        z = h2.new_empty(R, lib.mix_z_stride(H))
        g = h2.new_empty(R, lib.mix_g_stride(H))
    if save and save_dg:
        dg = torch.empty_like(h2)
    if lib.mix_fwd_f32(h2.data_ptr(), weight.data_ptr(), bias.data_ptr(), _native.ptr(res), y.data_ptr(),
                       _native.ptr(z), _native.ptr(g), _native.ptr(dg), R, H, torch.get_num_threads()):
        raise MemoryError("channel_mixer: the native kernel could not allocate its scratch buffers")
    return y, (dg, z, g)


def _check_residual(residual, h: torch.Tensor, same_dtype: bool) -> None:
    """``residual`` has h's shape and device (and dtype when ``same_dtype``): no broadcasting."""
    if (not isinstance(residual, torch.Tensor) or residual.shape != h.shape or residual.device != h.device
            or (same_dtype and residual.dtype != h.dtype)):
        got = (f"{tuple(residual.shape)} {residual.dtype} on {residual.device}" if isinstance(residual, torch.Tensor)
               else type(residual).__name__)
        want = f"{tuple(h.shape)}{f' {h.dtype}' if same_dtype else ''} on {h.device}"
        raise ValueError(f"residual must be like h, {want}, got {got}")


def _native_applies(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    return (h.dtype == torch.float32 and weight.shape[1] % 8 == 0
            and h.device.type == weight.device.type == bias.device.type == "cpu" and _native.available())


def channel_mixer(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, residual: Optional[torch.Tensor] = None,
                  method: str = "auto") -> torch.Tensor:
    """``GLU(GELU(h) Wᵀ + b)`` over the last dimension: h (..., H), weight (2H, H), bias (2H,) -> (..., H).

    ``residual`` (h's shape and dtype) is added to the result: ``residual + GLU(...)``, a block's
    residual sum, in the same pass as the gate on the native route.

    ``method``: ``"torch"`` (the composition of torch operations, any device and dtype),
    ``"native"`` (the cache-blocked native kernel: float32 on the CPU, H a multiple of 8) or
    ``"auto"`` (native where it can run). Both agree up to float32 rounding.
    """
    if weight.dim() != 2 or weight.shape[0] != 2 * weight.shape[1] or h.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must have shape (2H, H) with H = h.shape[-1] = {h.shape[-1]}, got "
                         f"{tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if not (h.dtype == weight.dtype == bias.dtype):
        raise TypeError(f"h, weight and bias must share one dtype, got {h.dtype}, {weight.dtype}, {bias.dtype}")
    check_choice("method", method, ("auto", "torch", "native"))
    if residual is not None:
        _check_residual(residual, h, same_dtype=True)
    if method == "native" and not _native_applies(h, weight, bias):
        raise ValueError("method='native' needs float32 CPU tensors, H a multiple of 8 and the native library "
                         f"(got {h.dtype} on {h.device.type}, H = {weight.shape[1]}, native library "
                         f"{'built' if _native.available() else 'unavailable'})")
    if method == "native" or (method == "auto" and _native_applies(h, weight, bias)):
        if _native.autograd_needed(h, weight, bias, residual):
            return _NativeMixer.apply(h, weight, bias, residual)
        return _native_forward(h, weight, bias, residual, False, False)[0].reshape(h.shape)  # nothing saved
    y = _FusedMixer.apply(h, weight, bias)
    return y if residual is None else residual + y


class ChannelMixer(nn.Sequential):
    """``nn.Sequential(nn.GELU(), nn.Linear(d_model, 2 d_model), nn.GLU(dim=-1))`` computed fused.

    Parameters ``1.weight`` (2H, H) and ``1.bias`` (2H,), initialised as ``nn.Linear`` does; a
    state dict of the plain Sequential loads into it and back. An input of another floating dtype
    is computed in the parameters' dtype and returned in its own; under autocast the unfused
    modules run, whose products autocast handles.
    """

    def __init__(self, d_model: int, device=None, dtype=None):
        check_positive_int("d_model", d_model)
        super().__init__(nn.GELU(), nn.Linear(d_model, 2 * d_model, device=device, dtype=dtype), nn.GLU(dim=-1))
        self.d_model = d_model

    def forward(self, h: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``GLU(Linear(GELU(h)))``, plus ``residual`` when given (h's shape): fused into the same
        pass where the parameters' dtype is ``h``'s and ``residual``'s."""
        check_tensor("h", h, floating=True, finite=False)
        if h.dim() < 1 or h.shape[-1] != self.d_model:
            raise ValueError(f"h must have last dimension {self.d_model}, got shape {tuple(h.shape)}")
        if residual is not None:
            _check_residual(residual, h, same_dtype=False)
        lin = self[1]
        x = match_parameter_dtype(h, lin.weight.dtype)  # the layers' dtype rule (docs/reliability.md)
        if torch.is_autocast_enabled(x.device.type):  # autocast picks each product's precision
            y = super().forward(x)
        elif residual is not None and residual.dtype == x.dtype == h.dtype:
            return channel_mixer(x, lin.weight, lin.bias, residual=residual)
        else:
            y = channel_mixer(x, lin.weight, lin.bias).to(h.dtype)
        return y if residual is None else residual + y

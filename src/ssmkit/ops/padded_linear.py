"""``x Wᵀ + b`` computed into rows padded to a multiple of 16 columns, on the CPU.

The CPU's float32 matrix product (MKL in torch's CPU build) runs up to about half as fast for
some output widths N: on the AVX-512 machine of benchmarks/RESULTS.md, 6,272 rows of 64 times a
(64, N) matrix took 4.4 ms at N = 384 and 400 but 8.0 ms at N = 386, the width of Mamba-2's
in-projection at d_model 64 (2·128 + 2·64 + 2). Measured with the two alternated, the padded
product was 1.4-1.75x faster at N = 258, 300, 386 and 1,030 (K = 64 and 256), and 5-15% slower
at N = 40, 100, 130, 200, 520 and 1,288: widths that are not a multiple of 8, from 256 columns
on, are the slow ones. For those, :func:`padded_linear` multiplies by the weight padded with
zero rows to N' = 16⌈N/16⌉ and returns the first N columns of the (…, N') result: a view whose
rows are N' apart, with the same values. Its backward is the plain linear one,
``∂x = ∂y W``, ``∂W = ∂yᵀ x``, ``∂b = Σ ∂y``, over the N real columns only, in torch
operations (so it has higher derivatives too).

Consumers must accept a row stride larger than the width (every torch operation does; the
native Mamba-2 convolution takes the stride as an argument).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_tensor
from . import _native

__all__ = ["padded_linear", "padded_width", "padding_pays"]

ALIGN = 16  # columns: 64 bytes of float32, one cache line
MIN_ROWS = 256  # below this the product is short and the padding buys nothing measurable
MIN_WIDTH = 256  # narrower outputs ran at full speed whatever their width (measured)


def padded_width(n: int) -> int:
    """The output width the product is computed at: n rounded up to a multiple of 16."""
    return -(-n // ALIGN) * ALIGN


def padding_pays(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where :func:`padded_linear` differs from ``F.linear``: a float32 CPU product of at
    least 256 rows whose output width is at least 256 and not a multiple of 8, outside torch.func
    transforms."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return False  # F.linear gives its own error
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and weight.dim() == 2
            and weight.shape[0] % 8 != 0 and weight.shape[0] >= MIN_WIDTH and x.dim() >= 1 and x.numel() >= MIN_ROWS * max(1, x.shape[-1])
            and not _native.transform_active(x, weight))


def _product(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """(R, N) view, rows N' apart, of x2 (R, K) times the zero-padded weight."""
    N, K = weight.shape
    Np = padded_width(N)
    wp = weight.new_zeros(Np, K)
    wp[:N] = weight
    if bias is None:
        out = torch.mm(x2, wp.t())
    else:
        bp = bias.new_zeros(Np)
        bp[:N] = bias
        out = torch.addmm(bp, x2, wp.t())
    return out[:, :N]


class _PaddedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        ctx.shape = x.shape
        return _product(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, gy):
        x2, weight = ctx.saved_tensors
        g2 = gy.reshape(-1, weight.shape[0])
        gx = (g2 @ weight).view(ctx.shape) if ctx.needs_input_grad[0] else None
        gW = g2.t() @ x2 if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gW, gb


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` — x (..., K), weight (N, K), bias (N,) or None, one floating
    dtype and device — computed at the padded width where :func:`padding_pays`, else by
    ``F.linear`` itself. The result is (..., N); on the padded route its rows are
    ``padded_width(N)`` elements apart (not contiguous). Shapes and dtypes are checked (the
    argument is named); values are not, as in ``nn.Linear``."""
    check_tensor("x", x, floating=True, finite=False)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the K inputs), got a 0-dimensional tensor")
    check_tensor("weight", weight, shape=(None, x.shape[-1]), floating=True, finite=False)
    if bias is not None:
        check_tensor("bias", bias, shape=(weight.shape[0],), floating=True, finite=False)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"{name} must have x's dtype and device ({x.dtype}, {x.device}), got {t.dtype}, {t.device}")
    if not padding_pays(x, weight):
        return torch.nn.functional.linear(x, weight, bias)
    if not x.is_contiguous():
        x = x.contiguous()
    return _PaddedLinear.apply(x, weight, bias)

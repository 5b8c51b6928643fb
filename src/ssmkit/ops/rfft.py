"""A real FFT along the last dimension whose backward is one inverse real FFT.

For ``X_k = Σ_t x_t e^{-2πikt/n}``, ``k = 0..n/2``, and a real loss with gradient ``G`` with
respect to ``X`` (torch's convention: ``∂/∂Re X + i ∂/∂Im X``),

    ∂x_t = Re Σ_k G_k e^{2πikt/n} = n · irfft(Y)_t,   Y_k = G_k / 2 for 0 < k < n/2, Y_k = G_k otherwise

(``irfft`` doubles the inner bins and ignores the imaginary parts of bins 0 and n/2, as the
real part above does). torch differentiates ``rfft`` through a zero-filled complex FFT of the
full length instead, about 5x the cost of this one ``irfft`` (S4's kernel spent a third of its
backward there).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_positive_int, check_tensor

__all__ = ["rfft"]


class _RFFT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n):
        ctx.n, ctx.L = n, x.shape[-1]
        return torch.fft.rfft(x, n=n)

    @staticmethod
    @once_differentiable
    def backward(ctx, G):
        n = ctx.n
        Y = G * n  # the factor n on the (n/2 + 1) bins rather than on the n samples
        last = n // 2 if n % 2 == 0 else None  # the Nyquist bin exists for even n only
        Y[..., 1:last] *= 0.5
        gx = torch.fft.irfft(Y, n=n)
        L = ctx.L
        if L > n:  # rfft cropped x to n samples: the rest had no effect
            gx = torch.nn.functional.pad(gx, (0, L - n))
        return gx[..., :L], None


def rfft(x: torch.Tensor, n: int) -> torch.Tensor:
    """``torch.fft.rfft(x, n=n)`` of a real tensor (last dimension), with the cheaper backward."""
    check_tensor("x", x, floating=True, finite=False)
    check_positive_int("n", n)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the one transformed), got a 0-dimensional tensor")
    if not x.requires_grad:
        return torch.fft.rfft(x, n=n)
    return _RFFT.apply(x, n)

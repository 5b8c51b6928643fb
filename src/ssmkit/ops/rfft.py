"""A real FFT along the last dimension whose backward is one inverse real FFT.

For ``X_k = Σ_t x_t e^{-2πikt/n}``, ``k = 0..n/2``, and a real loss with gradient ``G`` with
respect to ``X`` (torch's convention: ``∂/∂Re X + i ∂/∂Im X``),

    ∂x_t = Re Σ_k G_k e^{2πikt/n} = n · irfft(Y)_t,   Y_k = G_k / c_k,

with ``c_k`` (:func:`bin_weights`) 1 at bins 0 and n/2 and 2 elsewhere (``irfft`` doubles the
inner bins and ignores the imaginary parts of bins 0 and n/2, as the real part above does). torch differentiates ``rfft`` through a zero-filled complex FFT of the
full length instead, about 5x the cost of this one ``irfft`` (S4's kernel spent a third of its
backward there).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_positive_int, check_tensor

__all__ = ["rfft", "bin_weights"]


def bin_weights(n: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``c_k`` for the ``n // 2 + 1`` bins of a length-n rfft: how many of the n frequencies bin k stands
    for (1 at bin 0 and, for even n, at bin n/2; 2 for the others). They sum to n."""
    check_positive_int("n", n)
    c = torch.full((n // 2 + 1,), 2.0, dtype=dtype, device=device)
    c[0] = 1
    if n % 2 == 0:
        c[-1] = 1
    return c


class _RFFT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n):
        ctx.n, ctx.L = n, x.shape[-1]
        return torch.fft.rfft(x, n=n)

    @staticmethod
    @once_differentiable
    def backward(ctx, G):
        n = ctx.n
        # the factor n on the (n/2 + 1) bins rather than on the n samples, over what irfft doubles
        Y = G * (n / bin_weights(n, dtype=G.real.dtype, device=G.device))
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

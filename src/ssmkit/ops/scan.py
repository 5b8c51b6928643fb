"""Linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t`` (diagonal, real or complex).

``linear_scan`` runs the recurrence over the time axis (dim 1 of (batch, L, ...)) as one fused
``addcmul`` per step on a contiguous time-first buffer, inside a custom autograd function whose
backward is the reverse scan: ``g_t = ∂L/∂h_t + conj(a_{t+1}) g_{t+1}``, ``∂L/∂b_t = g_t``,
``∂L/∂a_t = g_t conj(h_{t-1})`` (PyTorch's conjugate-Wirtinger convention for complex inputs).
Products of ``a`` are never formed, so long sequences cannot overflow. ``linear_scan_ref`` is
the plain loop.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_tensor

__all__ = ["linear_scan", "linear_scan_ref"]


def _check(a, b, h0):
    check_tensor("b", b, floating=True, complex_ok=True)
    if b.dim() < 2 or b.shape[1] < 1:
        raise ValueError(f"b must have shape (batch, length >= 1, ...), got {tuple(b.shape)}")
    check_tensor("a", a, floating=True, complex_ok=True)
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"a {tuple(a.shape)} must broadcast against b {tuple(b.shape)}") from None
    if h0 is not None:
        check_tensor("h0", h0, floating=True, complex_ok=True)
        if h0.shape != (b.shape[0],) + tuple(b.shape[2:]):
            raise ValueError(f"h0 must have shape {(b.shape[0],) + tuple(b.shape[2:])}, got {tuple(h0.shape)}")


def linear_scan_ref(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All states ``h`` (batch, L, ...) of ``h_t = a_t h_{t-1} + b_t`` by a plain loop."""
    _check(a, b, h0)
    a = a.expand_as(b) if a.shape != b.shape else a
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        aT = a.transpose(0, 1).contiguous()  # (L, batch, ...)
        hs = b.transpose(0, 1).clone(memory_format=torch.contiguous_format)  # never a view of b: scanned in place
        if h0 is not None:
            hs[0].addcmul_(aT[0], h0)
        for t in range(1, hs.shape[0]):
            hs[t].addcmul_(aT[t], hs[t - 1])
        ctx.save_for_backward(aT, hs, h0 if h0 is not None else torch.zeros_like(hs[0]))
        ctx.has_h0 = h0 is not None
        return hs.transpose(0, 1)

    @staticmethod
    def backward(ctx, gh):
        aT, hs, h0 = ctx.saved_tensors
        g = gh.transpose(0, 1).clone(memory_format=torch.contiguous_format)  # becomes ∂L/∂b by the reverse scan
        ac = aT.conj()
        for t in range(g.shape[0] - 2, -1, -1):
            g[t].addcmul_(ac[t + 1], g[t + 1])
        h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]], dim=0)
        da = (g * h_prev.conj()).transpose(0, 1)
        dh0 = ac[0] * g[0] if ctx.has_h0 else None
        return da, g.transpose(0, 1), dh0


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All states ``h`` (batch, L, ...) of ``h_t = a_t ⊙ h_{t-1} + b_t``; ``a`` broadcasts
    against ``b`` (batch, L, ...); ``h0`` (batch, ...) is the state before the first step."""
    _check(a, b, h0)
    dtype = torch.promote_types(a.dtype, b.dtype)
    if h0 is not None:
        dtype = torch.promote_types(dtype, h0.dtype)
        h0 = h0.to(dtype)
    a = a.to(dtype).expand_as(b)
    return _LinearScan.apply(a, b.to(dtype), h0)

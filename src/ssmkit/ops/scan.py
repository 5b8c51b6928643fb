"""Linear recurrences ``h_t = a_t ⊙ h_{t-1} + b_t`` (diagonal, real or complex).

``linear_scan`` uses the associativity of the step ``(a1, b1) ∘ (a2, b2) = (a2 a1, a2 b1 + b2)``
in two levels (a blocked scan): the time axis is cut into ``nc ≈ √L`` chunks of ``T ≈ √L``
steps; all chunks are scanned at once from a zero state (T fused ``addcmul`` steps, each over
every chunk), together with the within-chunk products ``P_t = a_t ⋯ a_1``; the chunk end states
are then chained by a recurrence over the chunks, ``c_k = P_T^{(k)} c_{k-1} + h_T^{(k)}``, and
added back, ``h_t = h_t^{local} + P_t c_{k-1}``. That is ``O(√L)`` Python steps instead of
``L``. Products of ``a`` span at most one chunk and are never inverted, so nothing divides or
grows beyond what the recurrence itself does: long sequences with ``|a| ≤ 1`` stay finite.

Autograd is a custom function whose backward is the reverse scan, itself a linear scan run
by the same code on the reversed sequence: ``g_t = ∂L/∂h_t + conj(a_{t+1}) g_{t+1}``,
``∂L/∂b_t = g_t``, ``∂L/∂a_t = g_t conj(h_{t-1})``, ``∂L/∂h0 = conj(a_1) g_1`` (PyTorch's
conjugate-Wirtinger convention for complex inputs). ``linear_scan_ref`` is the plain loop.

When ``a`` has no batch or time dimension (a time-invariant step, e.g. S5 without padding), a
second function runs the same blocked scan with the powers ``a^t`` computed once instead of
the per-chunk products, and its gradient for ``a`` is the reduction ``Σ g_t conj(h_{t-1})``
without a full-size tensor for ``a`` or its gradient. On the CPU with the native library
(:mod:`ssmkit.ops._native`) and ``a`` of the inner shape of a (batch, L, M) ``b``, both
directions of that case are one native loop over the sequence instead (same recurrences; the
batch sum of ``a``'s gradient taken in index order).

Inputs: real or complex float32/float64 (and complex64/complex128); float16/bfloat16 are
computed in float32 and returned in the promoted input dtype; complex32 is refused by name.
A batch of 0 gives an empty result; the length must be >= 1. The finite-value checks are
skipped inside :func:`ssmkit._checks.trusted_inputs`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._checks import check_tensor
from . import _native

__all__ = ["linear_scan", "linear_scan_ref"]

# below this length the plain step loop is as fast as the blocked scan
_BLOCKED_MIN_LENGTH = 64


_HALF = (torch.float16, torch.bfloat16)


def _check(a, b, h0):
    check_tensor("b", b, floating=True, complex_ok=True)
    if b.dim() < 2 or b.shape[1] < 1:
        raise ValueError(f"b must have shape (batch, length >= 1, ...), got {tuple(b.shape)}")
    check_tensor("a", a, floating=True, complex_ok=True)
    try:
        ok = torch.broadcast_shapes(a.shape, b.shape) == b.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"a {tuple(a.shape)} must broadcast to the shape of b {tuple(b.shape)}")
    if h0 is not None:
        check_tensor("initial_state", h0, floating=True, complex_ok=True)
        if h0.shape != (b.shape[0],) + tuple(b.shape[2:]):
            raise ValueError(f"initial_state must have shape {(b.shape[0],) + tuple(b.shape[2:])}, "
                             f"got {tuple(h0.shape)}")
    for name, t in (("a", a), ("b", b), ("initial_state", h0)):
        if t is not None and t.dtype == torch.complex32:
            raise TypeError(f"{name} must have dtype float16, bfloat16, float32, float64, complex64 or complex128; "
                            "got complex32")


def linear_scan_ref(a: torch.Tensor, b: torch.Tensor, initial_state: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All states ``h`` (batch, L, ...) of ``h_t = a_t h_{t-1} + b_t`` by a plain loop."""
    h0 = initial_state
    _check(a, b, h0)
    a = a.expand_as(b) if a.shape != b.shape else a
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _scan_time_first(aT: torch.Tensor, bT: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
    """States (L, ...) of ``h_t = a_t h_{t-1} + b_t`` for time-first ``aT``, ``bT`` of one shape
    and dtype; returns a new contiguous tensor (the inputs are not modified)."""
    L = bT.shape[0]
    if L < _BLOCKED_MIN_LENGTH:
        hs = bT.clone(memory_format=torch.contiguous_format)
        if h0 is not None:
            hs[0].addcmul_(aT[0], h0)
        for t in range(1, L):
            hs[t].addcmul_(aT[t], hs[t - 1])
        return hs
    inner = tuple(bT.shape[1:])
    T = math.isqrt(L - 1) + 1  # ceil(√L)
    nc = -(-L // T)
    pad = nc * T - L
    if pad:  # trailing steps with a = 1, b = 0; cut off below
        aT = torch.cat([aT, aT.new_ones((pad,) + inner)])
        bT = torch.cat([bT, bT.new_zeros((pad,) + inner)])
    # (T, nc, ...): step t of every chunk is one contiguous block
    P = aT.reshape((nc, T) + inner).transpose(0, 1).contiguous()
    hs = bT.reshape((nc, T) + inner).transpose(0, 1).contiguous()
    for t in range(1, T):
        hs[t].addcmul_(P[t], hs[t - 1])  # local scan from a zero state
        P[t].mul_(P[t - 1])  # then P_t = a_t ⋯ a_1 within the chunk
    # state entering chunk k: c_{-1} = h0, c_k = P_T^{(k)} c_{k-1} + h_T^{(k)}
    ends = _scan_time_first(P[-1], hs[-1], h0)  # (nc, ...)
    if h0 is not None:
        hs[:, 0].addcmul_(P[:, 0], h0)
    hs[:, 1:].addcmul_(P[:, 1:], ends[:-1].unsqueeze(0))  # (chunk 0 without h0 needs no fix-up)
    hs = hs.transpose(0, 1).reshape((nc * T,) + inner)
    return hs[:L] if pad else hs


def _scan_time_first_lti(a: torch.Tensor, bT: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
    """As :func:`_scan_time_first` for a step ``a`` that is the same at every time and batch entry
    (``a`` broadcasts to ``bT.shape[2:]``): the within-chunk products are the powers ``a^t``,
    computed once (T, ...) instead of over every chunk and batch entry."""
    L = bT.shape[0]
    inner = tuple(bT.shape[1:])
    if L < _BLOCKED_MIN_LENGTH:
        hs = bT.clone(memory_format=torch.contiguous_format)
        if h0 is not None:
            hs[0].addcmul_(a, h0)
        for t in range(1, L):
            hs[t].addcmul_(a, hs[t - 1])
        return hs
    T = math.isqrt(L - 1) + 1
    nc = -(-L // T)
    pad = nc * T - L
    if pad:
        bT = torch.cat([bT, bT.new_zeros((pad,) + inner)])
    hs = bT.reshape((nc, T) + inner).transpose(0, 1).contiguous()  # (T, nc, ...)
    for t in range(1, T):
        hs[t].addcmul_(a, hs[t - 1])
    # P_t = a^{t+1}, t = 0..T-1, by repeated products (the same rounding as the general scan)
    P = torch.cumprod(a.unsqueeze(0).expand((T,) + tuple(a.shape)), dim=0)
    ends = _scan_time_first_lti(P[-1], hs[-1], h0)  # chunk boundaries: c_k = a^T c_{k-1} + h_T^(k)
    Pb = P.reshape((T, 1) + (1,) * (len(inner) - a.dim()) + tuple(a.shape))
    if h0 is not None:
        hs[:, 0].addcmul_(Pb[:, 0], h0)
    hs[:, 1:].addcmul_(Pb, ends[:-1].unsqueeze(0))
    hs = hs.transpose(0, 1).reshape((nc * T,) + inner)
    return hs[:L] if pad else hs


def _native_lti_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The native time-invariant scan runs CPU float32/float64/complex64/complex128 tensors with
    ``a`` of exactly ``b``'s inner shape (batch, L, M) (S5's case)."""
    return (b.device.type == "cpu" and b.dim() == 3 and tuple(a.shape) == tuple(b.shape[2:]) and a.dtype == b.dtype
            and b.dtype in _NATIVE_DTYPES and _native.available())


_NATIVE_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


class _LinearScanLTI(torch.autograd.Function):
    """``h_t = a ⊙ h_{t-1} + b_t`` with one ``a`` for every step and batch entry (``a``
    broadcasts to ``b.shape[2:]``); its gradient is ``Σ_{batch, t} g_t conj(h_{t-1})``.

    On the CPU with the native library and ``a`` of ``b``'s inner shape (batch, L, M), both
    directions are one native loop over (batch, L, M) in place (``lti_fwd``, ``lti_bwd``: no
    time-first copies, the batch sum of the gradient of ``a`` in index order)."""

    @staticmethod
    def forward(ctx, a, b, h0):
        if _native_lti_applies(a, b) and (h0 is None or h0.dtype == b.dtype):
            a, b = a.detach().contiguous(), b.detach().contiguous()
            h0 = None if h0 is None else h0.detach().contiguous()
            hs = torch.empty_like(b)
            bsz, L, M = b.shape
            _native.kernel("lti_fwd", b.dtype)(a.data_ptr(), b.data_ptr(), None if h0 is None else h0.data_ptr(),
                                           hs.data_ptr(), bsz, L, M, int(b.is_complex()), torch.get_num_threads())
            ctx.save_for_backward(a, hs, h0)
            ctx.native = True
            return hs
        ctx.native = False
        hs = _scan_time_first_lti(a, b.transpose(0, 1), h0)
        ctx.save_for_backward(a, hs, h0)
        return hs.transpose(0, 1)

    @staticmethod
    def backward(ctx, gh):
        a, hs, h0 = ctx.saved_tensors
        if ctx.native:
            gh = gh.contiguous()
            bsz, L, M = hs.shape
            g = torch.empty_like(hs)
            da = torch.empty_like(a)
            dh0 = torch.empty_like(h0) if h0 is not None else None
            part = hs.new_empty(bsz, M)
            _native.kernel("lti_bwd", hs.dtype)(a.data_ptr(), hs.data_ptr(), None if h0 is None else h0.data_ptr(),
                                            gh.data_ptr(), g.data_ptr(), da.data_ptr(),
                                            None if dh0 is None else dh0.data_ptr(), part.data_ptr(),
                                            bsz, L, M, int(hs.is_complex()), torch.get_num_threads())
            return da, g, dh0
        ac = a.conj()
        # g_t = gh_t + conj(a) g_{t+1}, g_{L-1} = gh_{L-1}: a forward scan of the reversed sequence
        g = _scan_time_first_lti(ac, gh.transpose(0, 1).flip(0), None).flip(0)  # (L, batch, ...)
        # Σ_t g_t conj(h_{t-1}), h_{-1} = h0
        da = (g[1:] * hs[:-1].conj()).sum(0)
        if h0 is not None:
            da = da + g[0] * h0.conj()
        da = da.sum(0)
        extra = da.dim() - a.dim()
        if extra:
            da = da.sum(tuple(range(extra)))
        for i, n in enumerate(a.shape):
            if n == 1 and da.shape[i] != 1:
                da = da.sum(i, keepdim=True)
        dh0 = ac * g[0] if h0 is not None else None
        return da, g.transpose(0, 1), dh0


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        aT = a.transpose(0, 1)  # (L, batch, ...)
        hs = _scan_time_first(aT, b.transpose(0, 1), h0)
        ctx.save_for_backward(a, hs, h0)
        return hs.transpose(0, 1)

    @staticmethod
    def backward(ctx, gh):
        a, hs, h0 = ctx.saved_tensors
        acT = a.transpose(0, 1).conj()
        # g_t = gh_t + conj(a_{t+1}) g_{t+1}: a forward scan of the reversed sequence
        a_next = torch.cat([acT[1:], torch.zeros_like(acT[:1])]).flip(0)
        g = _scan_time_first(a_next, gh.transpose(0, 1).flip(0), None).flip(0)  # ∂L/∂b, time-first
        h_prev = torch.cat([(h0 if h0 is not None else torch.zeros_like(hs[0])).unsqueeze(0), hs[:-1]])
        da = (g * h_prev.conj()).transpose(0, 1)
        dh0 = acT[0] * g[0] if h0 is not None else None
        return da, g.transpose(0, 1), dh0


def linear_scan(a: torch.Tensor, b: torch.Tensor, initial_state: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All states ``h`` (batch, L, ...) of ``h_t = a_t ⊙ h_{t-1} + b_t``, ``t = 1..L``.

    ``a`` broadcasts to the shape of ``b`` (batch, L, ...); ``initial_state`` (batch, ...) is the
    state before the first step (zero if None). Real or complex; the result has the promoted
    dtype (float16/bfloat16 are computed in float32, then rounded to it).
    """
    h0 = initial_state
    _check(a, b, h0)
    dtype = torch.promote_types(a.dtype, b.dtype)
    if h0 is not None:
        dtype = torch.promote_types(dtype, h0.dtype)
    ct = torch.float32 if dtype in _HALF else dtype
    if h0 is not None:
        h0 = h0.to(ct)
    if b.shape[0] == 0:  # an empty batch: an empty result
        return b.to(dtype) * 0
    if a.dim() <= b.dim() - 2 or (a.dim() == b.dim() and a.shape[0] == 1 and a.shape[1] == 1):
        # one step for every time and batch entry (e.g. a time-invariant system)
        a_inner = a.reshape(a.shape[2:]) if a.dim() == b.dim() else a
        return _LinearScanLTI.apply(a_inner.to(ct), b.to(ct), h0).to(dtype)
    a = a.to(ct).expand_as(b)
    return _LinearScan.apply(a, b.to(ct), h0).to(dtype)

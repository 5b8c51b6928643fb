"""The selective scan of Mamba (Gu & Dao 2023, §3; docs/math.md §10), on the CPU.

``selective_scan`` has the arguments and semantics of ``mamba_ssm``'s ``selective_scan_fn``
(code written for it runs on ssmkit by changing the import), plus ``initial_state``:

    Δ = softplus(delta + delta_bias) (if delta_softplus)     (batch, D, L)
    Ā_t = exp(Δ_t A)            A: (D, N), real (negative for a decaying state)
    h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t u_t                          h: (batch, D, N)
    y_t = C_t · h_t + D u_t,   y *= silu(z) if z is given

B and C are (batch, N, L), or (batch, G, N, L) with channel d reading group d // (D/G).

Two fast paths share one algorithm: a sequential scan in a custom autograd function
(nothing is ever exponentiated beyond one step, so no overflow at any length) whose backward
pass is the reverse scan computed analytically, with ``g_t = ∂loss/∂h_t``:

    g_t = C_t dy_t + exp(Δ_{t+1} A) ⊙ g_{t+1}
    ∂u_t = Δ_t Σ_n g_t B_t,    ∂Δ_t = Σ_n g_t (A exp(Δ_t A) h_{t-1} + B_t u_t)
    ∂A = Σ_t g_t Δ_t exp(Δ_t A) h_{t-1},   ∂B_t = Σ_d g_t Δ_t u_t,   ∂C_t = Σ_d dy_t h_t
    ∂h_0 = exp(Δ_0 A) ⊙ g_0

Memory is bounded by storing the state only at chunk boundaries (every T steps) and
recomputing inside a chunk during the backward pass: O(batch·D·N·(L/T + T)) instead of
O(batch·D·N·L).

- The native path (``ssmkit.ops._native``: C + OpenMP, compiled on first use, float32/float64
  CPU tensors) runs the whole recurrence in one kernel per direction.
- The torch path runs the steps as torch ops over (batch, D, N) blocks; it works on any
  device and is the fallback when the native library is unavailable or ``SSMKIT_NATIVE=0``.

The Δ softplus and bias, the D skip and the z gate are torch ops around the core, so autograd
handles them on both paths. ``selective_scan_ref`` is the plain loop, for checking.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._checks import check_tensor
from . import _native

__all__ = ["selective_scan", "selective_scan_fn", "selective_scan_ref"]

CHUNK = 64


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state):
    check_tensor("u", u, ndim=3, floating=True)
    # one device for every operand (the native kernel reads raw pointers of CPU memory)
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias),
                    ("initial_state", initial_state)):
        if isinstance(t, torch.Tensor) and t.device != u.device:
            raise ValueError(f"{name} must be on u's device ({u.device}), got {t.device}")
    b, d, L = u.shape
    if L < 1:
        raise ValueError(f"u must have length >= 1, got shape {tuple(u.shape)}")
    check_tensor("delta", delta, shape=(b, d, L), floating=True)
    check_tensor("A", A, ndim=2, floating=True)
    if A.shape[0] != d:
        raise ValueError(f"A must have shape ({d}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        check_tensor(name, M, ndim=(3, 4), floating=True)
        if M.dim() == 3 and M.shape != (b, N, L):
            raise ValueError(f"{name} must have shape ({b}, {N}, {L}) or ({b}, groups, {N}, {L}), got {tuple(M.shape)}")
        if M.dim() == 4 and (M.shape[0] != b or M.shape[2:] != (N, L) or d % M.shape[1]):
            raise ValueError(f"{name} must have shape ({b}, groups, {N}, {L}) with groups dividing {d}, got {tuple(M.shape)}")
    if D is not None:
        check_tensor("D", D, shape=(d,), floating=True)
    if z is not None:
        check_tensor("z", z, shape=(b, d, L), floating=True)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, shape=(d,), floating=True)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(b, d, N), floating=True)
    return b, d, L, N


def _grouped(M: torch.Tensor, d: int) -> torch.Tensor:
    """(b, N, L) or (b, G, N, L) -> (b, G, 1, L, N): broadcastable against (b, G, D/G, L, N)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.transpose(-1, -2).unsqueeze(2)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Reference: the recurrence as written, one step at a time, through autograd."""
    b, d, L, N = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    if delta_softplus:
        dt = F.softplus(dt)
    G = 1 if B.dim() == 3 else B.shape[1]
    Bg, Cg = _grouped(B, d), _grouped(C, d)  # (b, G, 1, L, N)
    h = u.new_zeros(b, d, N) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, :, t, None] * A)  # (b, d, N)
        Bt = Bg[:, :, :, t].expand(b, G, d // G, N).reshape(b, d, N)
        Ct = Cg[:, :, :, t].expand(b, G, d // G, N).reshape(b, d, N)
        h = dA * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


class _ScanFn(torch.autograd.Function):
    """h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t ; y_t = C_t · h_t, with an analytic reverse scan.

    Inside a chunk the per-step tensors are laid out time-first, (T, b, d, N), so that every
    step of the loop is one fused ``addcmul`` over a contiguous block.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk):
        b, d, L = u.shape
        N = A.shape[1]
        h = u.new_zeros(b, d, N) if h0 is None else h0.clone()
        y = u.new_empty(b, d, L)
        starts = []
        for s in range(0, L, chunk):
            e = min(L, s + chunk)
            starts.append(h)
            decay, inp, Cc = _chunk_terms(u, dt, A, B, C, s, e)
            hs = _chunk_states(h, decay, inp)
            h = hs[-1]
            y[:, :, s:e] = _readout(hs, Cc)
        ctx.save_for_backward(u, dt, A, B, C, *starts)
        ctx.chunk, ctx.has_h0 = chunk, h0 is not None
        return y, h

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, A, B, C, *starts = ctx.saved_tensors
        chunk = ctx.chunk
        b, d, L = u.shape
        N = A.shape[1]
        G = B.shape[1]
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.zeros_like(A)
        dB = torch.zeros_like(B)  # (b, G, N, L)
        dC = torch.zeros_like(C)
        # carry: ∂L/∂h at the end of the current chunk coming from later steps, already
        # multiplied by the next step's decay (so it adds to the chunk's last g).
        carry = torch.zeros(b, d, N, dtype=u.dtype, device=u.device) if dh_last is None else dh_last.clone()
        for ci in range(len(starts) - 1, -1, -1):
            s = ci * chunk
            e = min(L, s + chunk)
            T = e - s
            decay, inp, Cc = _chunk_terms(u, dt, A, B, C, s, e)
            hs = _chunk_states(starts[ci], decay, inp)  # (T, b, d, N)
            dy_c = dy[:, :, s:e].permute(2, 0, 1).contiguous().unsqueeze(-1)  # (T, b, d, 1)
            k = d // G
            gy = (dy_c.view(T, b, G, k, 1) * Cc).view(T, b, d, N)  # ∂L/∂h_t through y_t
            gs = torch.empty_like(hs)
            g = torch.add(gy[T - 1], carry, out=gs[T - 1])
            for t in range(T - 2, -1, -1):
                g = torch.addcmul(gy[t], decay[t + 1], g, out=gs[t])
            carry = decay[0] * g
            h_prev = torch.cat([starts[ci].unsqueeze(0), hs[:-1]], dim=0)
            g_decay = gs * h_prev * decay  # ∂L/∂(Δ_t A): g_t h_{t-1} exp(Δ_t A)
            dtc = dt[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, b, d)
            uc = u[:, :, s:e].permute(2, 0, 1).contiguous()
            dA += torch.einsum("tbdn,tbd->dn", g_decay, dtc)
            Bc = _group_view(B, s, e)  # (T, b, G, 1, N)
            g_dtu = torch.einsum("tbgkn,tbgzn->tbgk", gs.view(T, b, G, k, N), Bc).reshape(T, b, d)  # ∂L/∂(Δ_t u_t)
            dtu = dtc * uc
            dB[..., s:e] = torch.einsum("tbgkn,tbgk->bgnt", gs.view(T, b, G, d // G, N), dtu.view(T, b, G, d // G))
            dC[..., s:e] = torch.einsum("tbgkn,tbgk->bgnt", hs.view(T, b, G, d // G, N), dy_c[..., 0].view(T, b, G, d // G))
            ddt[:, :, s:e] = ((g_decay * A).sum(-1) + g_dtu * uc).permute(1, 2, 0)
            du[:, :, s:e] = (g_dtu * dtc).permute(1, 2, 0)
        return du, ddt, dA, dB, dC, (carry if ctx.has_h0 else None), None


def _group_view(M: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """(b, G, N, L) -> steps s..e-1 as (T, b, G, 1, N), broadcastable against (T, b, G, d/G, N)."""
    return M[..., s:e].permute(3, 0, 1, 2).contiguous().unsqueeze(3)


def _chunk_terms(u, dt, A, B, C, s, e):
    """Per-step decay exp(Δ_t A) and input Δ_t u_t B_t of steps s..e-1, time-first (T, b, d, N),
    and C_t as (T, b, G, 1, N)."""
    b, d = u.shape[:2]
    G, N = B.shape[1], B.shape[2]
    T = e - s
    # contiguous time-first copies: every step of the scan then reads one dense block
    dtc = dt[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, b, d)
    decay = torch.exp(dtc.unsqueeze(-1) * A)  # (T, b, d, N)
    dtu = dtc * u[:, :, s:e].permute(2, 0, 1)
    inp = (dtu.view(T, b, G, d // G, 1) * _group_view(B, s, e)).view(T, b, d, N)
    return decay, inp, _group_view(C, s, e)


def _readout(hs: torch.Tensor, Cc: torch.Tensor) -> torch.Tensor:
    """y_t = C_t · h_t for a chunk: hs (T, b, d, N), Cc (T, b, G, 1, N) -> (b, d, T)."""
    T, b, d, N = hs.shape
    G = Cc.shape[2]
    return torch.einsum("tbgkn,tbgzn->bgkt", hs.view(T, b, G, d // G, N), Cc).reshape(b, d, T)


def _chunk_states(h, decay, inp):
    """States of one chunk, (T, b, d, N), from the state before it: h_t = decay_t h_{t-1} + inp_t."""
    hs = torch.empty_like(decay)
    for t in range(decay.shape[0]):
        h = torch.addcmul(inp[t], decay[t], h, out=hs[t])
    return hs


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, chunk: int = CHUNK,
                   native: Optional[bool] = None):
    """Selective scan (see the module docstring): returns ``y`` (batch, D, L), and the last
    state (batch, D, N) when ``return_last_state``. ``A`` must be <= 0 (a decaying state).

    ``chunk``: steps between saved states (T). ``native``: None uses the native CPU kernel when
    it applies (CPU, float32/float64, library available), False forces the torch path, True
    requires the native kernel (RuntimeError if it cannot be used)."""
    b, d, L, N = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if native not in (None, True, False):
        raise TypeError(f"native must be None, True or False, got {native!r}")
    if bool((A > 0).any()):
        raise ValueError("A must be <= 0 (A = -exp(A_log) in Mamba); positive entries make the state grow without bound")
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    # One compute dtype for the recurrence, at least float32 (bfloat16/float16 inputs, e.g.
    # under autocast, are scanned in float32 and y is returned in u's dtype, as in mamba_ssm).
    out_dtype = u.dtype
    ct = u.dtype
    for t in (delta, delta_bias, A, B4, C4, initial_state):
        if t is not None:
            ct = torch.promote_types(ct, t.dtype)
    if ct in (torch.float16, torch.bfloat16):
        ct = torch.float32
    with torch.autocast(device_type=u.device.type, enabled=False):
        dt = delta.to(ct) + delta_bias.to(ct)[:, None] if delta_bias is not None else delta.to(ct)
        if delta_softplus:
            dt = F.softplus(dt)
        y, last = _scan_core(u.to(ct), dt, A.to(ct), B4.to(ct), C4.to(ct),
                             None if initial_state is None else initial_state.to(ct), chunk, native)
        if D is not None:
            y = y + D[:, None].to(ct) * u.to(ct)
        if z is not None:
            y = y * F.silu(z.to(ct))
    y = y.to(out_dtype)
    return (y, last) if return_last_state else y


def _scan_core(u, dt, A, B4, C4, initial_state, chunk, native):
    """y_t = C_t · h_t and the last state, by the native kernel or the torch path; all operands
    share one dtype and device (see ``selective_scan``)."""
    use_native = False
    if native is not False:
        use_native = _native_applies(u)
        if native and not use_native:
            raise RuntimeError("native=True but the native kernel cannot be used here (it needs CPU float32/float64 "
                               "tensors of one dtype and a built library; see ssmkit.ops._native)")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, dt, A, B4, C4, initial_state))
    if use_native:
        if needs_grad:
            y, last = _NativeScanFn.apply(u, dt, A, B4, C4, initial_state, chunk)
        else:
            with torch.no_grad():
                y, last = _native_forward(u, dt, A, B4, C4, initial_state, chunk, save=False)[:2]
    elif needs_grad:
        y, last = _ScanFn.apply(u, dt, A, B4, C4, initial_state, chunk)
    else:
        with torch.no_grad():
            y, last = _forward_only(u, dt, A, B4, C4, initial_state, chunk)
    return y, last


def _forward_only(u, dt, A, B, C, h0, chunk):
    """Inference: the same scan, keeping nothing for a backward pass (any length)."""
    b, d, L = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if h0 is None else h0
    y = u.new_empty(b, d, L)
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        decay, inp, Cc = _chunk_terms(u, dt, A, B, C, s, e)
        hs = _chunk_states(h, decay, inp)
        h = hs[-1]
        y[:, :, s:e] = _readout(hs, Cc)
    return y, h


def _native_applies(u) -> bool:
    """The native kernel runs CPU float32/float64 (every operand is already in ``u``'s dtype)."""
    return u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and _native.available()


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else t.data_ptr()


def _native_forward(u, dt, A, B, C, h0, chunk, save):
    """Native forward: returns y (b, D, L), last state (b, D, N), and when ``save`` the chunk-start
    states (b, D, K, N) plus the time-major B, C (b, G, L, N) used by the backward pass."""
    lib = _native.library()
    b, d, L = u.shape
    N, G = A.shape[1], B.shape[1]
    u, dt, A = u.detach().contiguous(), dt.detach().contiguous(), A.detach().contiguous()
    Bt = B.detach().transpose(-1, -2).contiguous()  # (b, G, L, N): one step = N contiguous values
    Ct = C.detach().transpose(-1, -2).contiguous()
    h0 = None if h0 is None else h0.detach().contiguous()
    K = -(-L // chunk)
    y = u.new_empty(b, d, L)
    last = u.new_empty(b, d, N)
    states = u.new_empty(b, d, K, N) if save else None
    fn = lib.ssm_fwd_f32 if u.dtype == torch.float32 else lib.ssm_fwd_f64
    fn(u.data_ptr(), dt.data_ptr(), A.data_ptr(), Bt.data_ptr(), Ct.data_ptr(), _ptr(h0), y.data_ptr(),
       last.data_ptr(), _ptr(states), b, d, L, N, G, chunk, torch.get_num_threads())
    return y, last, states, (u, dt, A, Bt, Ct)


class _NativeScanFn(torch.autograd.Function):
    """The core recurrence (no D skip, no gate) through the native kernels; see the module
    docstring for the backward formulas."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk):
        y, last, states, (uc, dtc, Ac, Bt, Ct) = _native_forward(u, dt, A, B, C, h0, chunk, save=True)
        ctx.save_for_backward(uc, dtc, Ac, Bt, Ct, states)
        ctx.chunk, ctx.has_h0 = chunk, h0 is not None
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, A, Bt, Ct, states = ctx.saved_tensors
        lib = _native.library()
        b, d, L = u.shape
        N, G = A.shape[1], Bt.shape[1]
        T = ctx.chunk
        # no more threads than tasks of 8 channels (the kernel's block): each thread gets a buffer
        threads = max(1, min(torch.get_num_threads(), b * G * -(-(d // G) // 8)))
        dy = u.new_zeros(b, d, L) if dy is None else dy.contiguous()
        dh_last = None if dh_last is None else dh_last.contiguous()
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA_part = u.new_empty(b, d, N)
        # one dB, dC accumulator per thread (no write races), summed below
        dB_part = u.new_empty(threads, b, G, L, N)
        dC_part = u.new_empty(threads, b, G, L, N)
        dh0 = u.new_empty(b, d, N) if ctx.has_h0 else None
        work = u.new_empty(threads, 2 * T * N + 2 * N)
        fn = lib.ssm_bwd_f32 if u.dtype == torch.float32 else lib.ssm_bwd_f64
        fn(u.data_ptr(), dt.data_ptr(), A.data_ptr(), Bt.data_ptr(), Ct.data_ptr(), states.data_ptr(),
           dy.data_ptr(), _ptr(dh_last), du.data_ptr(), ddt.data_ptr(), dA_part.data_ptr(), dB_part.data_ptr(),
           dC_part.data_ptr(), _ptr(dh0), work.data_ptr(), b, d, L, N, G, T, threads)
        dB = (dB_part[0] if threads == 1 else dB_part.sum(0)).transpose(-1, -2)  # back to (b, G, N, L)
        dC = (dC_part[0] if threads == 1 else dC_part.sum(0)).transpose(-1, -2)
        return du, ddt, dA_part.sum(0), dB, dC, dh0, None


# mamba_ssm's name, so `from ssmkit.ops.selective_scan import selective_scan_fn` is a drop-in.
selective_scan_fn = selective_scan

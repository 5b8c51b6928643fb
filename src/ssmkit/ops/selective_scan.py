"""The selective scan of Mamba (Gu & Dao 2023, §3; docs/math.md §10), on the CPU.

``selective_scan`` has the arguments and semantics of ``mamba_ssm``'s ``selective_scan_fn``
(code written for it runs on ssmkit by changing the import), plus ``initial_state``:

    Δ = softplus(delta + delta_bias) (if delta_softplus)     (batch, D, L)
    Ā_t = exp(Δ_t A)            A: (D, N), real (negative for a decaying state)
    h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t u_t                          h: (batch, D, N)
    y_t = C_t · h_t + D u_t,   y *= silu(z) if z is given

B and C are each (batch, N, L), or (batch, G, N, L) with channel d reading group d // (D/G);
B and C may be grouped differently (their own G, or one grouped and the other not), and any
strides are accepted (both paths copy operands into the layout they compute in).

Two fast paths share one algorithm: a sequential scan in a custom autograd function
(nothing is ever exponentiated beyond one step, so no overflow at any length) whose backward
pass is the reverse scan computed analytically, with ``g_t = ∂loss/∂h_t``:

    g_t = C_t dy_t + exp(Δ_{t+1} A) ⊙ g_{t+1}
    ∂u_t = Δ_t Σ_n g_t B_t,    ∂Δ_t = Σ_n g_t (A exp(Δ_t A) h_{t-1} + B_t u_t)
    ∂A = Σ_t g_t Δ_t exp(Δ_t A) h_{t-1},   ∂B_t = Σ_d g_t Δ_t u_t,   ∂C_t = Σ_d dy_t h_t
    ∂h_0 = exp(Δ_0 A) ⊙ g_0

Memory is bounded by storing the state only every T = ``checkpoint_every`` steps and
recomputing the steps in between during the backward pass: O(batch·D·N·(L/T + T)) instead of
O(batch·D·N·L).

- The native path (``ssmkit.ops._native``: C + OpenMP, compiled on first use, float32/float64
  CPU tensors) runs the whole recurrence in one kernel per direction. Its backward pass sums
  the dB, dC and dA contributions in a fixed order (per-task partial buffers reduced in index
  order), so gradients are bit-identical from run to run and for any number of threads.
- The torch path runs the steps as torch ops over (batch, D, N) blocks; it works on any
  device and is the fallback when the native library is unavailable or ``SSMKIT_NATIVE=0``.

The Δ softplus and bias, the D skip and the z gate are torch ops around the core, so autograd
handles them on both paths. ``selective_scan_ref`` is the plain loop, for checking.

Inputs: real floating tensors (complex is refused by name). float16/bfloat16 operands are
scanned in float32 and ``y`` is returned in ``u``'s dtype (the last state stays float32).
Without ``delta_softplus`` the effective step ``delta + delta_bias`` must be >= 0 (a negative
step makes the state grow as exp(|ΔA| t)); ``A`` must be <= 0. These value checks (and the
finite-value checks) are skipped inside :func:`ssmkit._checks.trusted_inputs`. A batch of 0
gives empty outputs; the length must be >= 1.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._checks import check_bool, check_int, check_tensor, value_checks_enabled
from . import _native

__all__ = ["selective_scan", "selective_scan_fn", "selective_scan_ref"]

CHECKPOINT_EVERY = 64  # steps between saved states (T)
# elements of each of the native backward's per-task dB / dC partial buffers (sets the segment length)
_PARTIAL_BUDGET = 1 << 19


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state):
    check_tensor("u", u, ndim=3, floating=True)
    # one device for every operand (the native kernel reads raw pointers of CPU memory)
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias),
                    ("initial_state", initial_state)):
        if isinstance(t, torch.Tensor) and t.device != u.device:
            raise ValueError(f"{name} must be on u's device ({u.device}), got {t.device}")
    bsz, d, L = u.shape
    if L < 1:
        raise ValueError(f"u must have length >= 1, got shape {tuple(u.shape)}")
    check_tensor("delta", delta, shape=(bsz, d, L), floating=True)
    check_tensor("A", A, ndim=2, floating=True)
    if A.shape[0] != d:
        raise ValueError(f"A must have shape ({d}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        check_tensor(name, M, ndim=(3, 4), floating=True)
        if M.dim() == 3 and M.shape != (bsz, N, L):
            raise ValueError(f"{name} must have shape ({bsz}, {N}, {L}) or ({bsz}, groups, {N}, {L}), got {tuple(M.shape)}")
        if M.dim() == 4 and (M.shape[0] != bsz or M.shape[2:] != (N, L) or d % M.shape[1]):
            raise ValueError(f"{name} must have shape ({bsz}, groups, {N}, {L}) with groups dividing {d}, got {tuple(M.shape)}")
    if D is not None:
        check_tensor("D", D, shape=(d,), floating=True)
    if z is not None:
        check_tensor("z", z, shape=(bsz, d, L), floating=True)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, shape=(d,), floating=True)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(bsz, d, N), floating=True)
    return bsz, d, L, N


def _grouped(M: torch.Tensor, d: int) -> torch.Tensor:
    """(bsz, N, L) or (bsz, G, N, L) -> (bsz, G, 1, L, N): broadcastable against (bsz, G, D/G, L, N)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.transpose(-1, -2).unsqueeze(2)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Reference: the recurrence as written, one step at a time, through autograd."""
    bsz, d, L, N = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_bool("delta_softplus", delta_softplus)
    check_bool("return_last_state", return_last_state)
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    if delta_softplus:
        dt = F.softplus(dt)
    GB = 1 if B.dim() == 3 else B.shape[1]
    GC = 1 if C.dim() == 3 else C.shape[1]
    Bg, Cg = _grouped(B, d), _grouped(C, d)  # (bsz, G, 1, L, N)
    h = u.new_zeros(bsz, d, N) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, :, t, None] * A)  # (bsz, d, N)
        Bt = Bg[:, :, :, t].expand(bsz, GB, d // GB, N).reshape(bsz, d, N)
        Ct = Cg[:, :, :, t].expand(bsz, GC, d // GC, N).reshape(bsz, d, N)
        h = dA * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return (y, h) if return_last_state else y


def _torch_forward(u, dt, A, B, C, h0, every, save):
    """The torch path's forward: y (bsz, D, L), the last state, and when ``save`` the states at
    steps 0, T, 2T, ... (the state before each block of T = ``every`` steps)."""
    bsz, d, L = u.shape
    h = u.new_zeros(bsz, d, A.shape[1]) if h0 is None else (h0.clone() if save else h0)
    y = u.new_empty(bsz, d, L)
    starts = []
    for s in range(0, L, every):
        e = min(L, s + every)
        if save:
            starts.append(h)
        decay, inp, Cc = _block_terms(u, dt, A, B, C, s, e)
        hs = _block_states(h, decay, inp)
        h = hs[-1]
        y[:, :, s:e] = _readout(hs, Cc)
    return y, h, starts


class _ScanFn(torch.autograd.Function):
    """h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t ; y_t = C_t · h_t, with an analytic reverse scan.

    Inside a block of T steps the per-step tensors are laid out time-first, (T, bsz, d, N), so
    that every step of the loop is one fused ``addcmul`` over a contiguous block.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, every):
        y, h, starts = _torch_forward(u, dt, A, B, C, h0, every, save=True)
        ctx.save_for_backward(u, dt, A, B, C, *starts)
        ctx.every, ctx.has_h0 = every, h0 is not None
        return y, h

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, A, B, C, *starts = ctx.saved_tensors
        every = ctx.every
        bsz, d, L = u.shape
        N = A.shape[1]
        GB, GC = B.shape[1], C.shape[1]
        kB, kC = d // GB, d // GC
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.zeros_like(A)
        dB = torch.zeros_like(B)  # (bsz, GB, N, L)
        dC = torch.zeros_like(C)  # (bsz, GC, N, L)
        # carry: ∂L/∂h at the end of the current block coming from later steps, already
        # multiplied by the next step's decay (so it adds to the block's last g).
        carry = torch.zeros(bsz, d, N, dtype=u.dtype, device=u.device) if dh_last is None else dh_last.clone()
        for ci in range(len(starts) - 1, -1, -1):
            s = ci * every
            e = min(L, s + every)
            T = e - s
            decay, inp, Cc = _block_terms(u, dt, A, B, C, s, e)
            hs = _block_states(starts[ci], decay, inp)  # (T, bsz, d, N)
            dy_c = dy[:, :, s:e].permute(2, 0, 1).contiguous().unsqueeze(-1)  # (T, bsz, d, 1)
            gy = (dy_c.view(T, bsz, GC, kC, 1) * Cc).view(T, bsz, d, N)  # ∂L/∂h_t through y_t
            gs = torch.empty_like(hs)
            g = torch.add(gy[T - 1], carry, out=gs[T - 1])
            for t in range(T - 2, -1, -1):
                g = torch.addcmul(gy[t], decay[t + 1], g, out=gs[t])
            carry = decay[0] * g
            h_prev = torch.cat([starts[ci].unsqueeze(0), hs[:-1]], dim=0)
            g_decay = gs * h_prev * decay  # ∂L/∂(Δ_t A): g_t h_{t-1} exp(Δ_t A)
            dtc = dt[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, bsz, d)
            uc = u[:, :, s:e].permute(2, 0, 1).contiguous()
            dA += torch.einsum("tbdn,tbd->dn", g_decay, dtc)
            Bc = _group_view(B, s, e)  # (T, bsz, GB, 1, N)
            g_dtu = torch.einsum("tbgkn,tbgzn->tbgk", gs.view(T, bsz, GB, kB, N), Bc).reshape(T, bsz, d)  # ∂L/∂(Δ_t u_t)
            dtu = dtc * uc
            dB[..., s:e] = torch.einsum("tbgkn,tbgk->bgnt", gs.view(T, bsz, GB, kB, N), dtu.view(T, bsz, GB, kB))
            dC[..., s:e] = torch.einsum("tbgkn,tbgk->bgnt", hs.view(T, bsz, GC, kC, N), dy_c[..., 0].view(T, bsz, GC, kC))
            ddt[:, :, s:e] = ((g_decay * A).sum(-1) + g_dtu * uc).permute(1, 2, 0)
            du[:, :, s:e] = (g_dtu * dtc).permute(1, 2, 0)
        return du, ddt, dA, dB, dC, (carry if ctx.has_h0 else None), None


def _group_view(M: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """(bsz, G, N, L) -> steps s..e-1 as (T, bsz, G, 1, N), broadcastable against (T, bsz, G, d/G, N)."""
    return M[..., s:e].permute(3, 0, 1, 2).contiguous().unsqueeze(3)


def _block_terms(u, dt, A, B, C, s, e):
    """Per-step decay exp(Δ_t A) and input Δ_t u_t B_t of steps s..e-1, time-first (T, bsz, d, N),
    and C_t as (T, bsz, GC, 1, N)."""
    bsz, d = u.shape[:2]
    GB, N = B.shape[1], B.shape[2]
    T = e - s
    # contiguous time-first copies: every step of the scan then reads one dense block
    dtc = dt[:, :, s:e].permute(2, 0, 1).contiguous()  # (T, bsz, d)
    decay = torch.exp(dtc.unsqueeze(-1) * A)  # (T, bsz, d, N)
    dtu = dtc * u[:, :, s:e].permute(2, 0, 1)
    inp = (dtu.view(T, bsz, GB, d // GB, 1) * _group_view(B, s, e)).view(T, bsz, d, N)
    return decay, inp, _group_view(C, s, e)


def _readout(hs: torch.Tensor, Cc: torch.Tensor) -> torch.Tensor:
    """y_t = C_t · h_t for a block: hs (T, bsz, d, N), Cc (T, bsz, G, 1, N) -> (bsz, d, T)."""
    T, bsz, d, N = hs.shape
    G = Cc.shape[2]
    return torch.einsum("tbgkn,tbgzn->bgkt", hs.view(T, bsz, G, d // G, N), Cc).reshape(bsz, d, T)


def _block_states(h, decay, inp):
    """States of one block, (T, bsz, d, N), from the state before it: h_t = decay_t h_{t-1} + inp_t."""
    hs = torch.empty_like(decay)
    for t in range(decay.shape[0]):
        h = torch.addcmul(inp[t], decay[t], h, out=hs[t])
    return hs


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, checkpoint_every: int = CHECKPOINT_EVERY,
                   native: Optional[bool] = None):
    """Selective scan (see the module docstring): returns ``y`` (batch, D, L), and the last
    state (batch, D, N) when ``return_last_state``. ``A`` must be <= 0 (a decaying state);
    without ``delta_softplus``, ``delta + delta_bias`` must be >= 0.

    ``checkpoint_every``: steps between states saved for the backward pass (T).
    ``native``: None uses the native CPU kernel when it applies (CPU, library available; every
    layout of B and C), False forces the torch path, True requires the native kernel
    (RuntimeError if it cannot be used)."""
    bsz, d, L, N = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_int("checkpoint_every", checkpoint_every, minimum=1)
    check_bool("delta_softplus", delta_softplus)
    check_bool("return_last_state", return_last_state)
    if native is not None:  # (0 == False: a membership test would let 0 and 1 through)
        check_bool("native", native)
    if value_checks_enabled() and A.numel() and bool((A > 0).any()):
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
        elif value_checks_enabled() and dt.numel() and bool((dt < 0).any()):
            raise ValueError("delta (plus delta_bias) must be >= 0 when delta_softplus is False: a negative step "
                             f"makes the state grow without bound; got min {float(dt.detach().min()):g}")
        if bsz == 0:  # an empty batch: empty outputs (connected to the inputs for autograd)
            y = u.to(ct) * 0
            last = u.new_zeros(0, d, N, dtype=ct) if initial_state is None else initial_state.to(ct) * 1
        else:
            y, last = _scan_core(u.to(ct), dt, A.to(ct), B4.to(ct), C4.to(ct),
                                 None if initial_state is None else initial_state.to(ct), checkpoint_every, native)
        if D is not None:
            y = y + D[:, None].to(ct) * u.to(ct)
        if z is not None:
            y = y * F.silu(z.to(ct))
    y = y.to(out_dtype)
    return (y, last) if return_last_state else y


def _scan_core(u, dt, A, B4, C4, initial_state, every, native):
    """y_t = C_t · h_t and the last state, by the native kernel or the torch path; all operands
    share one dtype and device (see ``selective_scan``)."""
    use_native = False
    if native is not False:
        use_native = _native_applies(u)
        if native and not use_native:
            raise RuntimeError("native=True but the native kernel cannot be used here (it needs CPU float32/float64 "
                               "tensors of one dtype and a built library; see ssmkit.ops._native)")
    needs_grad = _native.autograd_needed(u, dt, A, B4, C4, initial_state)
    if use_native:
        if needs_grad:
            return _NativeScanFn.apply(u, dt, A, B4, C4, initial_state, every)
        with torch.no_grad():
            return _native_forward(u, dt, A, B4, C4, initial_state, every, save=False)[:2]
    if needs_grad:
        return _ScanFn.apply(u, dt, A, B4, C4, initial_state, every)
    with torch.no_grad():
        return _torch_forward(u, dt, A, B4, C4, initial_state, every, save=False)[:2]


def _native_applies(u) -> bool:
    """The native kernel runs CPU float32/float64 (every operand is already in ``u``'s dtype)."""
    return u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64) and _native.available()


def _native_forward(u, dt, A, B, C, h0, every, save):
    """Native forward: returns y (bsz, D, L), last state (bsz, D, N), and when ``save`` the saved
    states (bsz, D, K, N) plus the contiguous operands, with B, C time-major (bsz, G, L, N), that the
    backward pass reads. Any strides and any grouping of B and C are accepted: the operands are
    copied into the kernel's layout here (no copy when they already have it)."""
    bsz, d, L = u.shape
    N, GB, GC = A.shape[1], B.shape[1], C.shape[1]
    u, dt, A = u.detach().contiguous(), dt.detach().contiguous(), A.detach().contiguous()
    Bt = B.detach().transpose(-1, -2).contiguous()  # (bsz, GB, L, N): one step = N contiguous values
    Ct = C.detach().transpose(-1, -2).contiguous()  # (bsz, GC, L, N)
    h0 = None if h0 is None else h0.detach().contiguous()
    K = -(-L // every)
    y = u.new_empty(bsz, d, L)
    last = u.new_empty(bsz, d, N)
    states = u.new_empty(bsz, d, K, N) if save else None
    fn = _native.kernel("ssm_fwd", u.dtype)
    fn(u.data_ptr(), dt.data_ptr(), A.data_ptr(), Bt.data_ptr(), Ct.data_ptr(), _native.ptr(h0), y.data_ptr(),
       last.data_ptr(), _native.ptr(states), bsz, d, L, N, GB, GC, every, torch.get_num_threads())
    return y, last, states, (u, dt, A, Bt, Ct)


class _NativeScanFn(torch.autograd.Function):
    """The core recurrence (no D skip, no gate) through the native kernels; see the module
    docstring for the backward formulas."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, every):
        y, last, states, (uc, dtc, Ac, Bt, Ct) = _native_forward(u, dt, A, B, C, h0, every, save=True)
        ctx.save_for_backward(uc, dtc, Ac, Bt, Ct, states)
        ctx.every, ctx.has_h0 = every, h0 is not None
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, A, Bt, Ct, states = ctx.saved_tensors
        lib = _native.library()
        bsz, d, L = u.shape
        N, GB, GC = A.shape[1], Bt.shape[1], Ct.shape[1]
        T = ctx.every
        threads = torch.get_num_threads()
        dy = u.new_zeros(bsz, d, L) if dy is None else dy.contiguous()
        dh_last = None if dh_last is None else dh_last.contiguous()
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.empty_like(A)
        dB, dC = torch.empty_like(Bt), torch.empty_like(Ct)  # (bsz, G, L, N)
        dh0 = u.new_empty(bsz, d, N) if ctx.has_h0 else None
        # The work is cut into tasks fixed by the shapes (not by the thread count); each task
        # writes its dB, dC terms for a segment of S steps into its own slot, and the slots are
        # summed in order: a fixed summation order, so gradients do not depend on the threads.
        ntask = lib.ssm_bwd_tasks(bsz, d, GB, GC)
        S = T * max(1, min(-(-L // T), _PARTIAL_BUDGET // max(1, ntask * T * N)))
        carry = u.new_empty(2, bsz, d, N)
        part = u.new_empty(2, ntask, S, N)
        work = u.new_empty(threads, 2 * T * N)
        fn = _native.kernel("ssm_bwd", u.dtype)
        fn(u.data_ptr(), dt.data_ptr(), A.data_ptr(), Bt.data_ptr(), Ct.data_ptr(), states.data_ptr(),
           dy.data_ptr(), _native.ptr(dh_last), du.data_ptr(), ddt.data_ptr(), dA.data_ptr(), dB.data_ptr(),
           dC.data_ptr(), _native.ptr(dh0), carry.data_ptr(), part.data_ptr(), work.data_ptr(),
           bsz, d, L, N, GB, GC, T, S, threads)
        return du, ddt, dA, dB.transpose(-1, -2), dC.transpose(-1, -2), dh0, None


# mamba_ssm's name, so `from ssmkit.ops.selective_scan import selective_scan_fn` is a drop-in.
selective_scan_fn = selective_scan

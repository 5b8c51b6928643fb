"""State-space duality (SSD): the Mamba-2 scan with a scalar decay per head (Dao & Gu 2024,
"Transformers are SSMs", §6-7).

Per head, with input ``x_t`` (P,), ``B_t, C_t`` (N,), step ``Δ_t ≥ 0`` and scalar ``A ≤ 0``:

    h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ        h: (P, N)
    y_t = h_t C_t

Two algorithms compute it (same arguments and results; :func:`ssd` picks one):

- **Native sequential scan** (CPU, float32/float64, the native library available, see
  :mod:`ssmkit.ops._native`; ``native=None`` or ``True``): one task per (batch, head) runs the
  recurrence step by step with its (P, N) state in cache, vectorised over N, with one ``exp``
  per step — about ``3·L·P·N`` multiply-adds per head, no padding, no (Q, Q) decay matrices.
  Its backward is the reverse scan of ``g_t = ∂loss/∂h_t``:
  ``g_t = a_{t+1} g_{t+1} + dy_t C_tᵀ`` (``g`` at the end also gets the final state's
  gradient), ``∂x_t = Δ_t g_t B_t``, ``∂B_t = Σ_heads g_tᵀ Δ_t x_t``, ``∂C_t = Σ_heads h_tᵀ dy_t``,
  ``∂h_0 = a_0 g_0``; the decay's gradient ``D_t = a_t ⟨g_t, h_{t-1}⟩`` follows the scalar
  recursion ``D_t = D_{t+1} + ⟨dy_t, y_t⟩ - Δ_t ⟨x_t, g_t B_t⟩`` (restarted exactly every
  :func:`restart_every` steps), so ``∂Δ_t = A D_t + ⟨x_t, g_t B_t⟩`` and ``∂A = Σ Δ_t D_t``
  need no stored states. The backward recomputes the states in a forward sweep from the
  inputs; nothing but the inputs and ``y`` is kept for it. Per-head and per-batch partial sums
  are reduced in a fixed order: gradients are bit-identical for any thread count.
  Measured against the chunked path (``benchmarks/bench_ssd.py``, one thread, seven shapes
  with N = 64 and 128, batch 1 to 32, L = 196 to 4096, one and two groups): 1.9-3.0x faster
  forward and 1.4-2.7x faster forward + backward, the chunked path faster at none of them, so
  the native kernel is used whenever it applies; ``native=False`` selects the chunked path.
- **Chunked** (every other device and dtype, and the fallback), below.

Chunked computation (chunks of Q steps): inside a chunk, with ``S_t = Σ_{s≤t} Δ_s A`` (log
decays, so every factor ``exp(S_t - S_s) ≤ 1`` for ``s ≤ t`` and nothing overflows), the
outputs are the masked matrix product ``y = ((C Bᵀ) ⊙ exp(S_t - S_s)[s ≤ t]) (Δ x)``; the
chunk's final state ``Σ_s exp(S_Q - S_s) Δ_s x_s B_sᵀ`` is carried across chunks by a short
recurrence ``h_c = exp(S_Q) h_{c-1} + state_c``, whose contribution to the outputs is
``exp(S_t) h_{c-1} C_t``. ``ssd_ref`` is the step-by-step loop.

The chunk length ``chunk_size`` is a computation parameter only: every value gives the same
result up to rounding. The work is about ``L·Q·(P + N/R)`` per head inside chunks plus
``2·L·P·N`` per head for the chunk states, so short chunks (64 on a CPU) are fastest.

Inputs: real floating tensors (complex is refused by name); float16/bfloat16 are computed in
float32, ``y`` is returned in ``x``'s dtype and the state in float32. ``A <= 0`` and
``dt >= 0`` are checked (skipped, with the finite-value checks, inside
:func:`ssmkit._checks.trusted_inputs`). A batch of 0 gives empty outputs; the length must be
>= 1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._checks import check_bool, check_int, check_tensor, value_checks_enabled
from . import _native

__all__ = ["ssd", "ssd_ref"]


def _check(x, dt, A, B, C, h0):
    check_tensor("x", x, ndim=4, floating=True)
    bsz, L, H, P = x.shape
    if L < 1:
        raise ValueError(f"x must have length >= 1, got shape {tuple(x.shape)}")
    check_tensor("dt", dt, shape=(bsz, L, H), floating=True)
    check_tensor("A", A, shape=(H,), floating=True)
    check_tensor("B", B, ndim=4, floating=True)
    check_tensor("C", C, ndim=4, floating=True)
    if B.shape[:2] != (bsz, L) or H % B.shape[2]:
        raise ValueError(f"B must have shape ({bsz}, {L}, groups, N) with groups dividing {H}, got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
    if value_checks_enabled():
        if A.numel() and bool((A > 0).any()):
            raise ValueError(f"A must be <= 0 (a decay per head), got max {float(A.detach().max()):g}")
        if dt.numel() and bool((dt < 0).any()):
            raise ValueError(f"dt must be >= 0 (a step after softplus), got min {float(dt.detach().min()):g}")
    if h0 is not None:
        check_tensor("initial_state", h0, shape=(bsz, H, P, B.shape[3]), floating=True)


def _heads(M: torch.Tensor, H: int) -> torch.Tensor:
    """(bsz, L, G, N) -> (bsz, L, H, N): head h reads group h // (H/G)."""
    G = M.shape[2]
    return M.repeat_interleave(H // G, dim=2) if G != H else M


def ssd_ref(x, dt, A, B, C, initial_state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference loop: ``x`` (bsz, L, H, P), ``dt`` (bsz, L, H) (after softplus), ``A`` (H,),
    ``B, C`` (bsz, L, G, N) -> ``y`` (bsz, L, H, P), final state (bsz, H, P, N)."""
    _check(x, dt, A, B, C, initial_state)
    bsz, L, H, P = x.shape
    out_dtype = x.dtype
    ct = _compute_dtype(x, dt, A, B, C, initial_state)
    x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
    Bh, Ch = _heads(B, H), _heads(C, H)
    h = x.new_zeros(bsz, H, P, B.shape[3]) if initial_state is None else initial_state.to(ct)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (bsz, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    return torch.stack(ys, 1).to(out_dtype), h


def chunk_layout(L: int, chunk_size: int) -> Tuple[int, int]:
    """``(nc, Q)``: the fewest chunks of at most ``chunk_size`` steps, all of the same length ``Q``
    (``nc·Q - L < nc`` padded steps instead of up to ``chunk_size - 1``)."""
    nc = -(-L // chunk_size)
    return nc, -(-L // nc)


def _compute_dtype(*tensors) -> torch.dtype:
    ct = torch.float32
    for t in tensors:
        if t is not None:
            ct = torch.promote_types(ct, t.dtype)
    return ct


def ssd(x, dt, A, B, C, initial_state: Optional[torch.Tensor] = None,
        chunk_size: int = 64, native: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan (see the module docstring); same arguments and results as :func:`ssd_ref`.

    ``native``: None uses the native sequential kernel when it applies (CPU, float32/float64
    compute dtype, the library built, ``SSMKIT_NATIVE`` not 0), False forces the chunked torch
    path, True requires the native kernel (RuntimeError if it cannot be used).

    Chunked path: ``chunk_size`` bounds the chunk length (the native path ignores it); the
    length used is the smallest that covers ``L`` with the same number of chunks
    (:func:`chunk_layout`). Work is laid out head-major,
    (batch, groups, heads per group, chunk, step, ·), so every contraction is a batched matmul
    on contiguous blocks; ``C Bᵀ`` is formed and causally masked once per group, not per head.
    """
    _check(x, dt, A, B, C, initial_state)
    check_int("chunk_size", chunk_size, minimum=1)
    if native is not None:  # (0 == False: a membership test would let 0 and 1 through)
        check_bool("native", native)
    ct = _compute_dtype(x, dt, A, B, C, initial_state)
    out_dtype = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
        if initial_state is not None:
            initial_state = initial_state.to(ct)
        if x.shape[0] == 0:  # an empty batch: empty outputs
            h = x.new_zeros(0, x.shape[2], x.shape[3], B.shape[3]) if initial_state is None else initial_state * 1
            return x * 0, h
        use_native = native is not False and _native_applies(x)
        if native and not use_native:
            raise RuntimeError("native=True but the native SSD kernel cannot be used here (it needs CPU "
                               "float32/float64 tensors and a built library; see ssmkit.ops._native)")
        if use_native:
            y, h = _ssd_native(x, dt, A, B, C, initial_state)
        else:
            y, h = _ssd_chunked(x, dt, A, B, C, initial_state, chunk_size)
    return y.to(out_dtype), h


def _native_applies(x) -> bool:
    """The native kernel runs CPU float32/float64 (every operand is already in ``x``'s dtype)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _native.available()


def restart_every(L: int) -> int:
    """Steps T between the exact restarts of the native backward's decay-gradient recursion
    (see ``_native/ssd_scan.c``): 16, or ``ceil(L / 256)`` beyond 4,096 steps so that the
    per-thread buffer of chunk-end states holds at most 256 states. Shorter restarts bound the
    rounding that the recursion accumulates in float32 (measured on a strongly decaying
    sequence: dA within 3e-5 of float64 with T = 16, 1e-4 with T = 64)."""
    return max(16, -(-L // 256))


def _ssd_native(x, dt, A, B, C, h0):
    if _native.autograd_needed(x, dt, A, B, C, h0):
        return _NativeSSDFn.apply(x, dt, A, B, C, h0)
    with torch.no_grad():
        return _native_forward(x, dt, A, B, C, h0)[:2]


def _native_forward(x, dt, A, B, C, h0):
    """y (bsz, L, H, P), the final state (bsz, H, P, N), and the contiguous operands (the
    backward pass reads them)."""
    bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    x, dt, A, B, C = (t.detach().contiguous() for t in (x, dt, A, B, C))
    h0 = None if h0 is None else h0.detach().contiguous()
    y = x.new_empty(bsz, L, H, P)
    last = x.new_empty(bsz, H, P, N)
    fn = _native.kernel("ssd_fwd", x.dtype)
    fn(x.data_ptr(), dt.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(), _native.ptr(h0), y.data_ptr(),
       last.data_ptr(), bsz, L, H, P, G, N, torch.get_num_threads())
    return y, last, (x, dt, A, B, C, h0)


class _NativeSSDFn(torch.autograd.Function):
    """The SSD scan through the native kernels: a sequential recurrence per (batch, head) and
    its analytic reverse scan (formulas in ``_native/ssd_scan.c``)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0):
        y, last, (x, dt, A, B, C, h0c) = _native_forward(x, dt, A, B, C, h0)
        # nothing but the inputs and y: the backward recomputes the states
        ctx.save_for_backward(x, dt, A, B, C, h0c, y)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        x, dt, A, B, C, h0, y = ctx.saved_tensors
        bsz, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        T = restart_every(L)
        threads = torch.get_num_threads()
        dy = x.new_zeros(bsz, L, H, P) if dy is None else dy.contiguous()
        dlast = None if dlast is None else dlast.contiguous()
        dx, ddt, dA = torch.empty_like(x), torch.empty_like(dt), torch.empty_like(A)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dh0 = torch.empty_like(h0) if h0 is not None and ctx.needs_input_grad[5] else None
        # per-head dB, dC terms (summed over each group's heads in order, in the kernel) and
        # per-(batch, head) dA terms: a fixed summation order whatever the thread count
        part = x.new_empty(2, bsz, L, H, N) if H != G else None
        dA_part = x.new_empty(bsz, H)
        work = x.new_empty(threads, (-(-L // T) + 1) * P * N)
        fn = _native.kernel("ssd_bwd", x.dtype)
        fn(x.data_ptr(), dt.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(), _native.ptr(h0), y.data_ptr(),
           dy.data_ptr(), _native.ptr(dlast), dx.data_ptr(), ddt.data_ptr(), dA.data_ptr(), dB.data_ptr(),
           dC.data_ptr(), _native.ptr(dh0), dA_part.data_ptr(), _native.ptr(part), work.data_ptr(),
           bsz, L, H, P, G, N, T, threads)
        return dx, ddt, dA, dB, dC, dh0


def _ssd_chunked(x, dt, A, B, C, initial_state, chunk):
    bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    nc, Q = chunk_layout(L, chunk)
    pad = nc * Q - L
    if pad:  # zero steps at the end: Δ = 0 leaves the state unchanged
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        dt = torch.nn.functional.pad(dt, (0, 0, 0, pad))
        B = torch.nn.functional.pad(B, (0, 0, 0, 0, 0, pad))
        C = torch.nn.functional.pad(C, (0, 0, 0, 0, 0, pad))
    # head-major chunked layout
    xc = x.reshape(bsz, nc, Q, G, R, P).permute(0, 3, 4, 1, 2, 5)  # (bsz, G, R, nc, Q, P)
    dtc = dt.reshape(bsz, nc, Q, G, R).permute(0, 3, 4, 1, 2)  # (bsz, G, R, nc, Q)
    Bc = B.reshape(bsz, nc, Q, G, N).permute(0, 3, 1, 2, 4).unsqueeze(2)  # (bsz, G, 1, nc, Q, N)
    Cc = C.reshape(bsz, nc, Q, G, N).permute(0, 3, 1, 2, 4).unsqueeze(2)
    S = torch.cumsum(dtc * A.reshape(G, R, 1, 1), dim=-1)  # (bsz, G, R, nc, Q) log decay, <= 0, decreasing
    dx = (dtc.unsqueeze(-1) * xc).contiguous()  # (bsz, G, R, nc, Q, P)
    # intra-chunk: y_t = Σ_{s≤t} (C_t·B_s) exp(S_t - S_s) Δ_s x_s
    # the causal mask is applied once per group, to C Bᵀ; above the diagonal S_t - S_s >= 0 is
    # clamped to 0 (so exp cannot overflow there) and multiplied by the zeros of the mask
    CB = (Cc @ Bc.transpose(-1, -2)).tril_()  # (bsz, G, 1, nc, Q, Q): once per group
    diff = S.unsqueeze(-1) - S.unsqueeze(-2)  # (..., Q(t), Q(s))
    if torch.is_grad_enabled() and diff.requires_grad:
        M = torch.exp(diff.clamp_max(0.0)) * CB
    else:  # inference: the same arithmetic in place, one (.., Q, Q) buffer
        M = diff.clamp_max_(0.0).exp_().mul_(CB)
    y = M @ dx  # (bsz, G, R, nc, Q, P)
    # chunk states Σ_s exp(S_Q - S_s) Δ_s x_s B_sᵀ, and the recurrence across chunks
    w = torch.exp(S[..., -1:] - S).unsqueeze(-1) * dx  # (bsz, G, R, nc, Q, P)
    states = w.transpose(-1, -2) @ Bc  # (bsz, G, R, nc, P, N)
    chunk_decay = torch.exp(S[..., -1]).unsqueeze(-1).unsqueeze(-1)  # (bsz, G, R, nc, 1, 1)
    h = x.new_zeros(bsz, G, R, P, N) if initial_state is None else initial_state.reshape(bsz, G, R, P, N)
    prev = []
    # unbind, not indexing: its backward stacks the chunk gradients instead of scattering each
    # into a zero tensor of the full size
    for d_c, s_c in zip(chunk_decay.unbind(3), states.unbind(3)):
        prev.append(h)
        h = d_c * h + s_c
    H_prev = torch.stack(prev, dim=3)  # (bsz, G, R, nc, P, N): the state entering each chunk
    y = y + torch.exp(S).unsqueeze(-1) * (Cc @ H_prev.transpose(-1, -2))
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(bsz, nc * Q, H, P)[:, :L]
    return y, h.reshape(bsz, H, P, N)

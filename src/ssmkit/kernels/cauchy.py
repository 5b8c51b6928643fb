"""The S4 kernel of a diagonal-plus-low-rank system through its generating function
(Gu, Goel, Ré 2021, "Efficiently Modeling Long Sequences with Structured State Spaces", §3.3,
Alg. 1; docs/math.md §6).

For the bilinear discretization of ``A = Λ - P Q*`` (``(PQ*)_{nm} = Σ_r P_{rn} conj(Q_{rm})``)
the truncated generating function at the L-th roots of unity ``z_j = exp(-2πij/L)`` is

    K̂(z) = C̃ (I - zĀ)^{-1} B̄ = Δ C̃ [x I - s A]^{-1} B,   x = 1 - z,  s = (Δ/2)(1 + z),

where ``C̃ = C (I - Ā^L)`` is learned directly. With ``R = x I - sΛ`` diagonal, Woodbury gives

    K̂ = Δ [ k(C̃,B) - s k(C̃,P) (I + s k(Q̄,P))^{-1} k(Q̄,B) ],   k(u,v) = Σ_n u_n v_n / (x - sλ_n)

— Cauchy sums, O(N) per frequency and never a matrix power. (Writing the resolvent with
``x, s`` rather than ``g(z) = (2/Δ)(1-z)/(1+z)`` keeps z = -1 finite.) With ``conj_pairs`` only
one mode of each conjugate pair is stored and the other is summed explicitly,
``k = Σ_n v_n/(x - sλ_n) + v̄_n/(x - sλ̄_n)``, so the kernel is real: ``K = irfft(K̂)`` from the
L/2 + 1 non-negative frequencies. Without it the N modes are a general complex system
(any N, odd included) and ``K = ifft(K̂)`` from all L frequencies.

Two ways to get the Cauchy sums (``method``):

- ``"vandermonde"`` (default): at the L-th roots of unity
  ``1/(x - sλ_n) = (1/a_n) / (1 - z r_n)`` with ``a_n = 1 - Δλ_n/2`` and ``r_n = (1 + Δλ_n/2)/a_n``
  (the bilinear discretization of ``λ_n``), and ``1/(1 - z r) = Σ_{k<L} (z r)^k / (1 - r^L)``, so
  ``k(u,v)`` is the DFT of the real sequence ``h_k = 2 Re Σ_n u_n v_n r_n^k / (a_n (1 - r_n^L))``:
  a Vandermonde product (:func:`ssmkit.kernels.vandermonde_kernel`, real matrix products) and an
  FFT. O(H·M·L) time like S4D's kernel; autograd keeps O(H·(1+r)²·L) values, no recomputation,
  so the backward pass costs about as much as the forward. Needs ``|r_n| < 1`` (Re λ < 0);
  its rounding error grows as ``1/|1 - r_n^L|`` (modes that barely decay over L).
- ``"cauchy"``: the sums themselves, frequencies in blocks of ``freq_block``; each block's Cauchy
  matrices are (H, M, freq_block), so peak extra memory is O(H·M·freq_block + H·L) whatever L;
  under autograd every block is recomputed in the backward pass (activation checkpointing).
  Slower (a complex division per mode and frequency), accurate for any λ off the contour.

:func:`dplr_kernel_ref` builds the dense (Ā, B̄, C) and powers it (:func:`naive_kernel`): the
reference both are tested against.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .._checks import (FULL_PRECISION, check_bool, check_choice, check_positive, check_positive_int, check_tensor,
                       value_checks_enabled)
from ..ops import _native
from ..ops.rfft import bin_weights, rfft
from .naive import naive_kernel
from .vandermonde import native_backward, native_forward, vandermonde_kernel

__all__ = ["cauchy", "cauchy_conj", "dplr_kernel", "dplr_kernel_ref", "DEFAULT_FREQ_BLOCK"]

DEFAULT_FREQ_BLOCK = 512
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def _refuse_poles(bad: torch.Tensor, name: str, where: str) -> None:
    """Raise if ``bad`` (H, M, J) marks a mode ``name[h, n]`` whose Cauchy term is infinite at frequency j.

    A full-tensor check (one host read): skipped inside :func:`ssmkit._checks.trusted_inputs`.
    """
    if value_checks_enabled() and bool(bad.any()):
        h, n, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}[{h}, {n}] lies on a pole of the Cauchy sum ({where.format(j=j)}): the sum is infinite "
            "there; the modes must stay off the contour (for the S4 kernel: Re(Lambda) < 0)")


def _cauchy_sum(v, x, s, lam, name: str):
    den = x - s.unsqueeze(1) * lam.unsqueeze(-1)  # (H, M, J)
    _refuse_poles(den == 0, name, "x_j = s_j " + name + "_n at frequency index {j}")
    return torch.einsum("hkm,hmj->hkj", v, 1 / den)


def _cauchy_conj_sum(v, x, s, lam, name: str):
    return _cauchy_sum(v, x, s, lam, name) + _cauchy_sum(v.conj(), x, s, lam.conj(), name)


def cauchy(v: torch.Tensor, x: torch.Tensor, s: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Σ_n v_n/(x_j - s_j λ_n)``: ``v`` (H, K, M), ``lam`` (H, M), ``x`` (J,), ``s`` (H, J) -> (H, K, J).

    A mode with ``x_j = s_j λ_n`` (a pole of the sum) is refused with a ValueError naming it.
    """
    return _cauchy_sum(v, x, s, lam, "lam")


def cauchy_conj(v: torch.Tensor, x: torch.Tensor, s: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Σ_n v_n/(x_j - s_j λ_n) + conj(v_n)/(x_j - s_j conj(λ_n))``.

    ``v`` (H, K, M), ``lam`` (H, M), ``x`` (J,), ``s`` (H, J) -> (H, K, J). Poles are refused as in
    :func:`cauchy`.
    """
    return _cauchy_conj_sum(v, x, s, lam, "lam")


def _woodbury(k, s, dt, r: int):
    """``K̂ = Δ [k_cb - s k_cp (I + s k_qp)^{-1} k_qb]`` from the stacked sums ``k`` (H, 1+2r+r², J)."""
    H = k.shape[0]
    # one split (its backward is one concatenation; four slices would each zero-fill k's shape)
    k_cb, k_cp, k_qb, k_qp = torch.split(k, [1, r, r, r * r], dim=1)
    k_cb = k_cb[:, 0]
    k_qp = k_qp.reshape(H, r, r, -1)  # [a, b] = k(Q̄_a, P_b)
    if r == 1:
        corr = k_cp[:, 0] * k_qb[:, 0] / (1 + s * k_qp[:, 0, 0])
    else:
        W = torch.eye(r, dtype=k.dtype, device=k.device)[..., None] + s[:, None, None, :] * k_qp  # (H, r, r, J)
        sol = torch.linalg.solve(W.permute(0, 3, 1, 2), k_qb.permute(0, 2, 1).unsqueeze(-1))[..., 0]  # (H, J, r)
        corr = (k_cp.permute(0, 2, 1) * sol).sum(-1)
    return dt.unsqueeze(-1) * (k_cb - s * corr)


def _roots_of_unity(j: torch.Tensor, L: int) -> torch.Tensor:
    """``z_j = exp(-2πi j / L)`` for the (real) frequency indices ``j``."""
    return torch.exp(torch.complex(torch.zeros_like(j), -2 * math.pi * j / L))


def _rank1_khat(k, dt, L: int):
    """The rank-1 Woodbury step in torch: ``K̂``, ``s``, ``D = 1 + s k_qp``, ``corr = k_cp k_qb / D`` (each (H, J))."""
    z = _roots_of_unity(torch.arange(k.shape[-1], dtype=dt.dtype, device=dt.device), L)
    s = (dt.unsqueeze(-1) / 2) * (1 + z)  # (H, J)
    k_cb, k_cp, k_qb, k_qp = k.unbind(0)
    D = 1 + s * k_qp
    corr = k_cp * k_qb / D
    return dt.unsqueeze(-1) * (k_cb - s * corr), s, D, corr


def _rank1_grads(k, dt, F, L: int, want_seq: bool, want_dt: bool):
    """The rank-1 step's backward in torch: ``Y`` (3, H, J), ``F conj(∂K̂/∂k_x)`` for x = cp, qb, qp, and
    ``∂Δ`` (H,)."""
    _, s, D, corr = _rank1_khat(k, dt, L)
    k_cb, k_cp, k_qb, k_qp = k.unbind(0)
    Y = g_dt = None
    if want_seq:
        sD = dt.unsqueeze(-1) * s / D
        dfs = torch.stack([-sD * k_qb, -sD * k_cp, sD * s * corr])
        Y = F * dfs.conj()
    if want_dt:
        c = bin_weights(L, dtype=dt.dtype, device=dt.device)
        df_dt = k_cb - 2 * s * corr + s * s * corr * k_qp / D
        g_dt = ((F.conj() * df_dt).real * (c / L)).sum(-1)
    return Y, g_dt


def _rank1_forward(seq, dt, L: int, native: bool):
    """``K = irfft(K̂)`` (H, L) and the sums ``k = rfft(seq)`` (4, H, J) the backward needs."""
    k = torch.fft.rfft(seq, n=L).contiguous()  # (4, H, J)
    if native:
        _, H, J = k.shape
        Khat = torch.empty(H, J, dtype=k.dtype)
        if _native.library().s4w_fwd_f32(k.data_ptr(), dt.contiguous().data_ptr(), Khat.data_ptr(), H, J, L,
                                         torch.get_num_threads()):
            raise MemoryError("dplr_kernel: the native kernel could not allocate its scratch buffer")
    else:
        Khat = _rank1_khat(k, dt, L)[0]
    return torch.fft.irfft(Khat, n=L), k


def _rank1_backward(k, dt, gK, L: int, native: bool, want_seq: bool, want_dt: bool):
    """Gradients of the sequences cp, qb, qp (3, H, L) and of Δ (H,) (None where not wanted) from ``gK`` (H, L).

    The gradient of the first sequence (cb) is ``Δ ∂K`` and is left to the caller."""
    F = torch.fft.rfft(gK, n=L).contiguous()  # (H, J): L/c times the gradient of K̂
    if native:
        _, H, J = k.shape
        Y = torch.empty(3, H, J, dtype=k.dtype) if want_seq else None
        g_dt = torch.empty_like(dt) if want_dt else None
        if _native.library().s4w_bwd_f32(k.data_ptr(), dt.contiguous().data_ptr(), F.data_ptr(), _native.ptr(Y),
                                         _native.ptr(g_dt), H, J, L, torch.get_num_threads()):
            raise MemoryError("dplr_kernel: the native kernel could not allocate its scratch buffer")
    else:
        Y, g_dt = _rank1_grads(k, dt, F, L, want_seq, want_dt)
    return (None if Y is None else torch.fft.irfft(Y, n=L)), g_dt


class _Rank1Kernel(torch.autograd.Function):
    """``K = irfft(Δ [k_cb - s k_cp k_qb / (1 + s k_qp)])`` with ``k = rfft(seq)``: the rank-1 Woodbury
    step of the real S4 kernel, from the four Vandermonde sequences ``seq`` (4, H, L) to K (H, L).

    One hand-written backward instead of autograd's graph of the FFTs and a dozen complex
    elementwise products. With ``f = K̂`` holomorphic in each sum and ``G = c/L · rfft(∂K)`` the
    gradient of K̂ (``c_j`` = 1 at bins 0 and L/2, else 2):

        ∂k_x = G conj(∂f/∂k_x),  ∂seq_x = irfft(L/c · ∂k_x) = irfft(rfft(∂K) conj(∂f/∂k_x))
        (for x = cb that is Δ ∂K: no FFT),
        ∂f/∂k_cb = Δ,  ∂f/∂k_cp = -Δ s k_qb/D,  ∂f/∂k_qb = -Δ s k_cp/D,  ∂f/∂k_qp = Δ s² corr/D,
        ∂Δ = Re Σ_j conj(G_j) (k_cb - 2 s corr + s² corr k_qp/D)   (s = Δ(1 + z)/2),

    with ``D = 1 + s k_qp`` and ``corr = k_cp k_qb / D``. The elementwise steps run in the native
    kernel (``ops/_native/woodbury.c``) for complex64 on the CPU when ``native``, else in torch.
    """

    @staticmethod
    def forward(ctx, seq, dt, L, native):
        K, k = _rank1_forward(seq, dt, L, native)
        ctx.save_for_backward(k, dt)
        ctx.L, ctx.native = L, native
        return K

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gK):
        k, dt = ctx.saved_tensors
        g_rest, g_dt = _rank1_backward(k, dt, gK, ctx.L, ctx.native, *ctx.needs_input_grad[:2])
        g_seq = None if g_rest is None else torch.cat([(gK * dt.unsqueeze(-1)).unsqueeze(0), g_rest])
        return g_seq, g_dt, None, None


class _S4Rank1(torch.autograd.Function):
    """The whole real rank-1 S4 kernel on the CPU, ``(Λ, P, B, C̃, Q, Δ) -> K`` (H, L), with one
    hand-written backward: the Vandermonde route of :func:`dplr_kernel` without autograd's graph
    of a few dozen small complex operations.

    Forward: ``h = Δλ/2``, ``a = 1 - h``, ``log r = log(1 + h) - log(1 - h)``, ``den = a (1 - r^L)``,
    ``coef = V/den`` with the numerators ``V = (C̃B, C̃P, Q̄B, Q̄P)``, the four Vandermonde sequences
    of ``(log r, coef)`` (native kernel), then :class:`_Rank1Kernel`'s step. Backward, in torch's
    convention (``g conj(f')`` through holomorphic f, ``conj(g) b`` through ``conj(z) b``):

        ∂V = ∂coef / conj(den),  ∂den = -Σ_x ∂coef_x conj(coef_x / den),
        ∂a = ∂den conj(1 - r^L),  ∂log r = Σ_x ∂w_x - ∂den conj(a L r^L),
        ∂h = ∂log r conj(2 / (1 - h²)) - ∂a,  ∂λ = ∂h Δ/2,  ∂Δ += Re Σ_n conj(∂h_n) λ_n / 2,
        ∂C̃ = ∂V_cb conj(B) + ∂V_cp conj(P),  ∂B = ∂V_cb conj(C̃) + ∂V_qb Q,
        ∂P = ∂V_cp conj(C̃) + ∂V_qp Q,  ∂Q = conj(∂V_qb) B + conj(∂V_qp) P.
    """

    @staticmethod
    def forward(ctx, lam, P, B, Ct, Q, dt, L, native):
        H, M = lam.shape
        h, a, log_r, e, den = _bilinear_poles(lam, dt, L)  # e = 1 - r^L
        P0, Q0 = P[0], Q[0]
        Qc = Q0.conj()
        V = torch.stack([Ct * B, Ct * P0, Qc * B, Qc * P0])  # (4, H, M): the sums' rows, one block each
        coef = V * (1 / den)
        seq, z64, cb64 = native_forward(log_r, coef.reshape(4 * H, M), L, dt.dtype)  # the 4 blocks share log_r
        K, k = _rank1_forward(seq.view(4, H, L), dt, L, native)
        ctx.save_for_backward(lam, P0, B, Ct, Q0, dt, h, a, e, den, coef, k, z64, cb64)
        ctx.L, ctx.native = L, native
        return K

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gK):
        lam, P0, B, Ct, Q0, dt, h, a, e, den, coef, k, z64, cb64 = ctx.saved_tensors
        L = ctx.L
        H, M = lam.shape
        g_rest, g_dt = _rank1_backward(k, dt, gK, L, ctx.native, True, ctx.needs_input_grad[5])
        # the cb rows' gradient is Δ ∂K: the (linear) sums of ∂K, scaled by Δ per channel afterwards
        gw, gcoef = native_backward(z64, cb64, [gK, *g_rest.unbind(0)], True, True)
        gw, gcoef = gw.view(4, H, M), gcoef.view(4, H, M)
        cd = lam.dtype
        d64 = dt.to(torch.float64).unsqueeze(-1)
        glog_r = (gw[0] * d64 + gw[1:].sum(0)).to(cd)
        gcoef = torch.cat([(gcoef[0] * d64).unsqueeze(0), gcoef[1:]]).to(cd)
        rden = (1 / den).conj()
        gV = gcoef * rden
        gden = -(gcoef * coef.conj()).sum(0) * rden
        ga = gden * e.conj()
        glog_r = glog_r - gden * (a * L * (1 - e)).conj()  # r^L = 1 - e
        gh = glog_r * (2 / (1 - h * h)).conj() - ga
        g_lam = gh * (dt / 2).unsqueeze(-1)
        gh_dt = (gh.conj() * lam).real.sum(-1) / 2
        g_dt = gh_dt if g_dt is None else g_dt + gh_dt
        gcb, gcp, gqb, gqp = gV.unbind(0)
        g_Ct = gcb * B.conj() + gcp * P0.conj()
        g_B = gcb * Ct.conj() + gqb * Q0
        g_P = (gcp * Ct.conj() + gqp * Q0).unsqueeze(0)
        g_Q = (gqb.conj() * B + gqp.conj() * P0).unsqueeze(0)
        return g_lam, g_P, g_B, g_Ct, g_Q, g_dt, None, None


def _fused_route(dt: torch.Tensor) -> bool:
    """The whole rank-1 kernel as one function (:class:`_S4Rank1`): the native Vandermonde kernel runs (CPU)."""
    return dt.device.type == "cpu" and _native.available()


def _rank1_native(dt: torch.Tensor) -> bool:
    """The native rank-1 step runs for float32 steps on the CPU when the library is built."""
    return dt.dtype == torch.float32 and dt.device.type == "cpu" and _native.available()


def _khat_block(V, lam, dt, j, L: int, r: int, conj_pairs: bool):
    """``K̂`` (H, J) at frequencies ``j`` (J,) from the stacked Cauchy numerators ``V``."""
    z = _roots_of_unity(j, L)  # (J,)
    x = 1 - z
    s = (dt.unsqueeze(-1) / 2) * (1 + z)  # (H, J)
    k = (_cauchy_conj_sum if conj_pairs else _cauchy_sum)(V, x, s, lam, "Lambda")  # (H, 1 + 2r + r², J)
    return _woodbury(k, s, dt, r)


def _bilinear_poles(lam, dt, L: int):
    """``h = Δλ/2``, ``a = 1 - h``, ``log r = log((1 + h)/a)``, ``e = 1 - r^L`` and ``den = a e`` (each (H, M));
    a mode whose pole sits on the L-th roots of unity (``den = 0``) is refused by name."""
    h = (dt / 2).unsqueeze(-1) * lam
    a = 1 - h
    log_r = torch.log((1 + h) / a)
    e = -torch.expm1(L * log_r)
    den = a * e
    _refuse_poles((den == 0).unsqueeze(-1), "Lambda", "its bilinear pole r_n satisfies r_n^L = 1")
    return h, a, log_r, e, den


def _vandermonde_sequences(V, lam, dt, L: int, conj_pairs: bool):
    """The Cauchy sums' Vandermonde sequences (H, K, L): ``Σ_n coef_n r_n^k`` with ``coef = V / (a (1 - r^L))``."""
    _, _, log_r, _, den = _bilinear_poles(lam, dt, L)
    coef = V / den.unsqueeze(1)  # (H, K, M)
    return vandermonde_kernel(log_r.unsqueeze(1), coef, L, conj_pairs=conj_pairs)


def _khat_from_sequences(seq, dt, L: int, r: int, conj_pairs: bool):
    """``K̂`` at all J frequencies from the Vandermonde sequences: their DFTs are the Cauchy sums."""
    k = rfft(seq, n=L) if conj_pairs else torch.fft.fft(seq, n=L)  # rfft: the one-irfft backward
    z = _roots_of_unity(torch.arange(k.shape[-1], dtype=dt.dtype, device=dt.device), L)
    s = (dt.unsqueeze(-1) / 2) * (1 + z)
    return _woodbury(k, s, dt, r)


def _check_dplr(Lambda, P, B, Ct, dt, L, Q):
    for name, t in (("Lambda", Lambda), ("B", B), ("Ct", Ct)):
        check_tensor(name, t, ndim=2, dtypes=COMPLEX_DTYPES + FULL_PRECISION)
    H, M = Lambda.shape
    check_tensor("B", B, shape=(H, M))
    check_tensor("Ct", Ct, shape=(H, M))
    check_tensor("P", P, shape=(None, H, M), dtypes=COMPLEX_DTYPES + FULL_PRECISION)
    Q = P if Q is None else check_tensor("Q", Q, shape=tuple(P.shape), dtypes=COMPLEX_DTYPES + FULL_PRECISION)
    check_tensor("dt", dt, shape=(H,), dtypes=FULL_PRECISION)
    check_positive("dt", dt.detach())
    check_positive_int("L", L)
    return H, M, Q


def dplr_kernel(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, Ct: torch.Tensor, dt: torch.Tensor, L: int,
                Q: torch.Tensor | None = None, freq_block: int = DEFAULT_FREQ_BLOCK, conj_pairs: bool = True,
                method: str = "vandermonde") -> torch.Tensor:
    """Kernel (H, L) of the bilinear DPLR system ``A = Λ - P Q*`` with learned ``C̃ = C (I - Ā^L)``.

    ``Lambda`` (H, M), ``P`` and ``Q`` (r, H, M) (``Q = P`` by default), ``B`` and ``Ct`` (H, M)
    complex (complex64/128; real float32/64 is promoted); ``dt`` (H,) positive steps (float32/64:
    the kernel's precision). ``conj_pairs=True``: the M modes are the kept half of conjugate
    pairs (real system of N = 2M states) and the kernel is real. ``conj_pairs=False``: a general
    complex system of N = M states; the kernel is complex. ``method``: ``"vandermonde"`` (needs
    Re Λ < 0) or ``"cauchy"`` (frequencies in blocks of ``freq_block``); see the module notes.
    """
    H, M, Q = _check_dplr(Lambda, P, B, Ct, dt, L, Q)
    check_positive_int("freq_block", freq_block)
    check_choice("method", method, ("vandermonde", "cauchy"))
    check_bool("conj_pairs", conj_pairs)
    r = P.shape[0]
    rdtype = dt.dtype
    cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
    if H == 0:  # an empty batch: no kernel to compute (the FFT refuses 0 rows)
        return torch.zeros(0, L, dtype=rdtype if conj_pairs else cdtype, device=Lambda.device)
    Lambda, P, B, Ct, Q = (t.to(cdtype) for t in (Lambda, P, B, Ct, Q))
    if method == "vandermonde" and r == 1 and conj_pairs and _fused_route(dt):
        return _S4Rank1.apply(Lambda, P, B, Ct, Q, dt, L, _rank1_native(dt))
    # Cauchy numerators, stacked: k(C̃,B), k(C̃,P_a), k(Q̄_a,B), k(Q̄_a,P_b)
    Qc = Q.conj()
    v_cb = (Ct * B).unsqueeze(1)  # (H, 1, M)
    v_cp = (Ct.unsqueeze(0) * P).permute(1, 0, 2)  # (H, r, M)
    v_qb = (Qc * B.unsqueeze(0)).permute(1, 0, 2)  # (H, r, M)
    v_qp = (Qc.unsqueeze(1) * P.unsqueeze(0)).permute(2, 0, 1, 3).reshape(H, r * r, M)  # (H, r*r, M)
    V = torch.cat([v_cb, v_cp, v_qb, v_qp], dim=1)
    lam = Lambda
    if method == "vandermonde":
        seq = _vandermonde_sequences(V, lam, dt, L, conj_pairs)  # (H, K, L)
        if r == 1 and conj_pairs:  # the Woodbury step to K as one function, hand-differentiated
            return _Rank1Kernel.apply(seq.transpose(0, 1), dt, L, _rank1_native(dt))
        Khat = _khat_from_sequences(seq, dt, L, r, conj_pairs)
    else:
        J = L // 2 + 1 if conj_pairs else L
        recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (V, lam, dt))
        out = []
        for start in range(0, J, freq_block):
            j = torch.arange(start, min(J, start + freq_block), dtype=rdtype, device=Lambda.device)
            if recompute:
                out.append(checkpoint(_khat_block, V, lam, dt, j, L, r, conj_pairs, use_reentrant=False))
            else:
                out.append(_khat_block(V, lam, dt, j, L, r, conj_pairs))
        Khat = torch.cat(out, dim=-1)
    return torch.fft.irfft(Khat, n=L) if conj_pairs else torch.fft.ifft(Khat, n=L)


def dplr_kernel_ref(Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, Ct: torch.Tensor, dt: torch.Tensor, L: int,
                    Q: torch.Tensor | None = None, conj_pairs: bool = True) -> torch.Tensor:
    """Reference for :func:`dplr_kernel`: the dense bilinear system ``Ā = (I - Δ/2 A)^{-1}(I + Δ/2 A)``,
    ``B̄ = (I - Δ/2 A)^{-1} Δ B``, ``C = C̃ (I - Ā^L)^{-1}``, powered by :func:`naive_kernel`. O(L N²)."""
    H, M, Q = _check_dplr(Lambda, P, B, Ct, dt, L, Q)
    cdtype = torch.complex128 if dt.dtype == torch.float64 else torch.complex64
    Lambda, P, B, Ct, Q = (t.to(cdtype) for t in (Lambda, P, B, Ct, Q))
    if conj_pairs:
        cat = lambda z: torch.cat([z, z.conj()], -1)
        Lambda, P, B, Ct, Q = (cat(t) for t in (Lambda, P, B, Ct, Q))
    N = Lambda.shape[-1]
    A = torch.diag_embed(Lambda) - torch.einsum("rhn,rhm->hnm", P, Q.conj())
    I = torch.eye(N, dtype=cdtype, device=A.device)
    d = (dt / 2).to(cdtype)[:, None, None]
    Mm = I - d * A
    Ad = torch.linalg.solve(Mm, I + d * A)
    Bd = torch.linalg.solve(Mm, (2 * d[..., 0] * B).unsqueeze(-1))[..., 0]
    C = torch.linalg.solve((I - torch.linalg.matrix_power(Ad, L)).transpose(-1, -2), Ct.unsqueeze(-1))[..., 0]
    K = naive_kernel(Ad, Bd, C, L)
    return K.real if conj_pairs else K

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
from ..ops.rfft import rfft
from .naive import naive_kernel
from .vandermonde import vandermonde_kernel

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


def _khat_block(V, lam, dt, j, L: int, r: int, conj_pairs: bool):
    """``K̂`` (H, J) at frequencies ``j`` (J,) from the stacked Cauchy numerators ``V``."""
    z = torch.exp(torch.complex(torch.zeros_like(j), -2 * math.pi * j / L))  # (J,)
    x = 1 - z
    s = (dt.unsqueeze(-1) / 2) * (1 + z)  # (H, J)
    k = (_cauchy_conj_sum if conj_pairs else _cauchy_sum)(V, x, s, lam, "Lambda")  # (H, 1 + 2r + r², J)
    return _woodbury(k, s, dt, r)


def _khat_vandermonde(V, lam, dt, L: int, r: int, conj_pairs: bool):
    """``K̂`` at all J frequencies through the Vandermonde sequences of the Cauchy sums."""
    h = (dt / 2).unsqueeze(-1) * lam  # (H, M): Δλ/2
    a = 1 - h
    log_r = torch.log((1 + h) / a)
    den = a * -torch.expm1(L * log_r)  # (H, M): a (1 - r^L); zero when a pole sits on the L-th roots of unity
    _refuse_poles((den == 0).unsqueeze(-1), "Lambda", "its bilinear pole r_n satisfies r_n^L = 1")
    coef = V / den.unsqueeze(1)  # (H, K, M): v / (a (1 - r^L))
    seq = vandermonde_kernel(log_r.unsqueeze(1), coef, L, conj_pairs=conj_pairs)  # (H, K, L)
    k = rfft(seq, n=L) if conj_pairs else torch.fft.fft(seq, n=L)  # rfft: the one-irfft backward
    J = k.shape[-1]
    j = torch.arange(J, dtype=dt.dtype, device=dt.device)
    z = torch.exp(torch.complex(torch.zeros_like(j), -2 * math.pi * j / L))
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
    # Cauchy numerators, stacked: k(C̃,B), k(C̃,P_a), k(Q̄_a,B), k(Q̄_a,P_b)
    Qc = Q.conj()
    v_cb = (Ct * B).unsqueeze(1)  # (H, 1, M)
    v_cp = (Ct.unsqueeze(0) * P).permute(1, 0, 2)  # (H, r, M)
    v_qb = (Qc * B.unsqueeze(0)).permute(1, 0, 2)  # (H, r, M)
    v_qp = (Qc.unsqueeze(1) * P.unsqueeze(0)).permute(2, 0, 1, 3).reshape(H, r * r, M)  # (H, r*r, M)
    V = torch.cat([v_cb, v_cp, v_qb, v_qp], dim=1)
    lam = Lambda
    if method == "vandermonde":
        Khat = _khat_vandermonde(V, lam, dt, L, r, conj_pairs)
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

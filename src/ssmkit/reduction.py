"""Model-order reduction of LTI layers by balanced truncation (docs/inspect.md).

Each channel of an S4, S4D or RTF layer is a single-input single-output discrete system
``x_k = Ā x_{k-1} + B̄ u_k``, ``y_k = C x_k + D u_k`` with kernel ``K_k = C Ā^k B̄``. For a stable
``Ā`` (spectral radius < 1):

- the controllability and observability Gramians solve the discrete Lyapunov equations
  ``P = Ā P Āᵀ + B̄ B̄ᵀ`` and ``Q = Āᵀ Q Ā + Cᵀ C``;
- the Hankel singular values ``σ_1 ≥ σ_2 ≥ …`` are the square roots of the eigenvalues of
  ``PQ``, equal to the singular values of the (infinite) Hankel matrix ``[K_{i+j}]_{i,j≥0}``;
- balancing (square-root method: ``P = R Rᵀ``, ``Q = L Lᵀ``, ``Lᵀ R = U Σ Vᵀ``,
  ``T = R V Σ^{-1/2}``, ``T⁻¹ = Σ^{-1/2} Uᵀ Lᵀ``) makes both Gramians equal to ``Σ``; keeping the
  first r balanced states gives a stable system of order r whose frequency response obeys
  ``max_ω |G(e^{iω}) - G_r(e^{iω})| ≤ 2 Σ_{i>r} σ_i`` (Enns 1984; Glover 1984; for the
  discrete-time case Al-Saggaf & Franklin 1987), so for every input ``‖y - y_r‖₂ ≤ bound·‖u‖₂``.

All numerics run in float64 / complex128 (numpy and scipy). :func:`reduce` turns a layer into
an S4D (diagonalised; the default) or RTF layer of order r; :func:`reduce_model` does it for every
LTI layer of a model. Systems with a pole on or outside the unit circle are refused with
:class:`UnstableSystemError`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from ._checks import check_choice, check_int, check_positive, check_positive_int

__all__ = ["UnstableSystemError", "real_realization", "gramians", "hankel_singular_values", "balanced_truncation",
           "BalancedTruncation", "frequency_response", "hinf_error", "modal_form", "error_bound", "reduce",
           "LayerReduction", "reduce_model", "order_for_tolerance", "hankel_matrix"]

# Balanced coordinates are only reliable for Hankel singular values above this fraction of σ_1;
# smaller ones are numerically zero (they still count in the error bound).
_RANK_RTOL = 1e-13


class UnstableSystemError(ValueError):
    """A system with a pole on or outside the unit circle: it has no finite Gramians, no Hankel
    singular values and no balanced truncation."""


# ---- one SISO system ----------------------------------------------------------------------------

def _as_numpy(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.complex128 if x.is_complex() else torch.float64).numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _check_system(Ad, Bd, C) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    Ad, Bd, C = _as_numpy("Ad", Ad), _as_numpy("Bd", Bd), _as_numpy("C", C)
    if Ad.ndim != 2 or Ad.shape[0] != Ad.shape[1]:
        raise ValueError(f"Ad must have shape (N, N), got {Ad.shape}")
    N = Ad.shape[0]
    for name, v in (("Bd", Bd), ("C", C)):
        if v.shape != (N,):
            raise ValueError(f"{name} must have shape ({N},) to match Ad, got {v.shape}")
    return Ad, Bd, C


def real_realization(Ad, Bd, C) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real realization ``(A, B, C)`` (float64) with the same kernel as ``(Ad, Bd, C)``.

    A real system is returned as is. A complex one must have a real kernel. If its states come
    in halves ``[x, x̄]`` (S4 and S4D's ``discrete_ssm`` order both modes of a conjugate pair
    that way) the change of basis ``x = (z₁ + i z₂)/√2`` gives a real system of the same size;
    otherwise the realification ``[[Re A, -Im A], [Im A, Re A]]`` (twice the size, same kernel).
    """
    Ad, Bd, C = _check_system(Ad, Bd, C)
    if not (np.iscomplexobj(Ad) or np.iscomplexobj(Bd) or np.iscomplexobj(C)):
        return Ad, Bd, C
    Ad, Bd, C = Ad.astype(np.complex128), Bd.astype(np.complex128), C.astype(np.complex128)
    N = Ad.shape[0]
    if N % 2 == 0:
        M = N // 2
        I = np.eye(M)
        V = np.block([[I, 1j * I], [I, -1j * I]]) / math.sqrt(2)  # unitary
        Vi = V.conj().T
        A2, B2, C2 = Vi @ Ad @ V, Vi @ Bd, C @ V
        scale = max(np.abs(A2).max(), 1e-300), max(np.abs(B2).max(), 1e-300), max(np.abs(C2).max(), 1e-300)
        if (np.abs(A2.imag).max() <= 1e-12 * scale[0] and np.abs(B2.imag).max() <= 1e-12 * scale[1]
                and np.abs(C2.imag).max() <= 1e-12 * scale[2]):
            return A2.real.copy(), B2.real.copy(), C2.real.copy()
    A = np.block([[Ad.real, -Ad.imag], [Ad.imag, Ad.real]])
    return A, np.concatenate([Bd.real, Bd.imag]), np.concatenate([C.real, -C.imag])


def _check_stable(A: np.ndarray, what: str = "system") -> float:
    rho = float(np.abs(np.linalg.eigvals(A)).max()) if A.size else 0.0
    if not rho < 1.0:
        raise UnstableSystemError(f"{what} is not stable: spectral radius of Ā is {rho:.6g} >= 1, so it has no "
                                  "Gramians or Hankel singular values and cannot be reduced")
    return rho


def gramians(Ad, Bd, C) -> Tuple[np.ndarray, np.ndarray]:
    """Controllability and observability Gramians ``(P, Q)`` of the real realization of
    ``(Ad, Bd, C)``: ``P = Ā P Āᵀ + B̄ B̄ᵀ``, ``Q = Āᵀ Q Ā + Cᵀ C`` (scipy's discrete Lyapunov
    solver). Raises :class:`UnstableSystemError` unless every pole is inside the unit circle."""
    from scipy.linalg import solve_discrete_lyapunov

    A, B, Cr = real_realization(Ad, Bd, C)
    _check_stable(A)
    P = solve_discrete_lyapunov(A, np.outer(B, B))
    Q = solve_discrete_lyapunov(A.T, np.outer(Cr, Cr))
    return (P + P.T) / 2, (Q + Q.T) / 2


def _psd_factor(S: np.ndarray) -> np.ndarray:
    """``F`` with ``F Fᵀ = S`` for a symmetric positive semidefinite ``S`` (eigenvalues clipped at 0)."""
    w, U = np.linalg.eigh(S)
    return U * np.sqrt(np.clip(w, 0.0, None))


def hankel_singular_values(Ad, Bd, C, *, gramians_=None) -> np.ndarray:
    """The Hankel singular values (descending) of ``(Ad, Bd, C)``: ``σ_i = √λ_i(PQ)``, computed
    as the singular values of ``Lᵀ R`` (``P = R Rᵀ``, ``Q = L Lᵀ``). ``gramians_``: ``(P, Q)``
    if already computed by :func:`gramians`."""
    P, Q = gramians(Ad, Bd, C) if gramians_ is None else gramians_
    return np.linalg.svd(_psd_factor(Q).T @ _psd_factor(P), compute_uv=False)


def hankel_matrix(kernel, n: int) -> np.ndarray:
    """The n x n Hankel matrix ``[K_{i+j}]`` of a kernel with at least ``2n - 1`` lags (a reference
    for the Hankel singular values: its singular values converge to them as n grows)."""
    K = _as_numpy("kernel", kernel).real
    check_positive_int("n", n)
    if K.ndim != 1 or K.shape[0] < 2 * n - 1:
        raise ValueError(f"kernel must be 1-D with at least 2n-1 = {2 * n - 1} lags, got shape {K.shape}")
    i = np.arange(n)
    return K[i[:, None] + i[None, :]]


def error_bound(hsv, order: int) -> float:
    """``2 Σ_{i>order} σ_i``: the H∞ bound of a balanced truncation to ``order`` states."""
    hsv = np.asarray(hsv, dtype=np.float64)
    return float(2 * hsv[order:].sum())


@dataclass
class BalancedTruncation:
    """The balanced truncation of one system: ``(A, B, C)`` of order r (real, float64), all of
    the original's Hankel singular values ``hsv``, and the H∞ bound ``2 Σ_{i>r} σ_i``."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    hsv: np.ndarray
    bound: float

    @property
    def order(self) -> int:
        return self.A.shape[0]


def _balance(Ad, Bd, C):
    """Balanced realization of the numerically nonzero part: (A, B, C, hsv, T, Ti)."""
    from scipy.linalg import solve_discrete_lyapunov

    A, B, Cr = real_realization(Ad, Bd, C)
    _check_stable(A)
    P = solve_discrete_lyapunov(A, np.outer(B, B))
    Q = solve_discrete_lyapunov(A.T, np.outer(Cr, Cr))
    R, Lf = _psd_factor((P + P.T) / 2), _psd_factor((Q + Q.T) / 2)
    U, s, Vt = np.linalg.svd(Lf.T @ R)
    rank = int((s > _RANK_RTOL * s[0]).sum()) if s.size and s[0] > 0 else 0
    si = 1 / np.sqrt(s[:rank])
    T = (R @ Vt[:rank].T) * si  # N x rank
    Ti = (U[:, :rank].T @ Lf.T) * si[:, None]  # rank x N
    return Ti @ A @ T, Ti @ B, Cr @ T, s


def balanced_truncation(Ad, Bd, C, order: Optional[int] = None, *, tolerance: Optional[float] = None) -> BalancedTruncation:
    """Balanced truncation of ``(Ad, Bd, C)`` (real or complex with a real kernel) to ``order``
    states, or to the smallest order whose bound ``2 Σ_{i>r} σ_i`` is at most ``tolerance``.

    The result is real (float64), stable, and its frequency response is within ``bound`` of the
    original's at every frequency. ``order`` above the numerical rank of the system (Hankel
    singular values below 1e-13 σ_1 are zero to working precision) is lowered to that rank.
    """
    if (order is None) == (tolerance is None):
        raise ValueError("give exactly one of order and tolerance")
    A, B, Cr, hsv = _balance(Ad, Bd, C)
    if tolerance is not None:
        check_positive("tolerance", tolerance, allow_zero=True)
        order = order_for_tolerance(hsv, tolerance)
    check_int("order", order, minimum=0)
    r = min(order, A.shape[0])
    return BalancedTruncation(A[:r, :r].copy(), B[:r].copy(), Cr[:r].copy(), hsv, error_bound(hsv, r))


def order_for_tolerance(hsv, tolerance: float) -> int:
    """The smallest r with ``2 Σ_{i>r} σ_i <= tolerance``."""
    check_positive("tolerance", tolerance, allow_zero=True)
    hsv = np.asarray(hsv, dtype=np.float64)
    tails = 2 * np.concatenate([np.cumsum(hsv[::-1])[::-1], [0.0]])  # tails[r] = bound at order r
    return int(np.nonzero(tails <= tolerance)[0][0])


# ---- frequency responses -----------------------------------------------------------------------

def _pole_residue(A, B, C) -> Tuple[np.ndarray, np.ndarray]:
    lam, V = np.linalg.eig(A)
    return lam, (C @ V) * np.linalg.solve(V, B.astype(np.complex128))


def frequency_response(Ad, Bd, C, omega, D: float = 0.0) -> np.ndarray:
    """``H(e^{iω}) = D + Σ_k K_k e^{-iωk} = D + C (I - e^{-iω} Ā)^{-1} B̄`` at the frequencies
    ``omega`` (radians per sample), complex128: in pole-residue form when ``Ā``'s eigenvectors are
    well conditioned, else by one linear solve per frequency."""
    A, B, Cr = real_realization(Ad, Bd, C)
    w = np.asarray(omega, dtype=np.float64)
    if A.shape[0] == 0:
        return np.full(w.shape, D, dtype=np.complex128)
    lam, V = np.linalg.eig(A)
    if np.linalg.cond(V) < 1e8:  # well-conditioned eigenvectors: pole-residue form, O(N) per frequency
        res = (Cr @ V) * np.linalg.solve(V, B.astype(np.complex128))
        z = np.exp(-1j * w)[..., None]
        return D + (res / (1 - z * lam)).sum(-1)
    # nearly defective (e.g. clustered real poles of a non-normal Ā): solve (I - e^{-iω} Ā) x = B̄
    flat, out = w.ravel(), []
    I = np.eye(A.shape[0])
    for start in range(0, flat.size, 256):
        z = np.exp(-1j * flat[start:start + 256])[:, None, None]
        rhs = np.broadcast_to(B.astype(np.complex128), (z.shape[0], B.size))[..., None]
        out.append(np.linalg.solve(I - z * A, rhs)[..., 0] @ Cr)
    return D + np.concatenate(out).reshape(w.shape)


def _grid(n: int, *pole_sets) -> np.ndarray:
    """n uniform frequencies in [0, π] plus each pole's angle and its neighbours at ± (1 - |λ|),
    where a lightly damped pole's resonance peak lies."""
    extra = []
    for lam in pole_sets:
        lam = np.asarray(lam)
        if lam.size:
            ang, d = np.abs(np.angle(lam)), np.clip(1 - np.abs(lam), 1e-9, None)
            extra += [ang, ang - d, ang + d, ang - d / 3, ang + d / 3]
    w = np.concatenate([np.linspace(0, np.pi, n)] + extra) if extra else np.linspace(0, np.pi, n)
    return np.unique(np.clip(w, 0, np.pi))


def hinf_error(system, reduced, n_grid: int = 4096) -> float:
    """``max_ω |G(e^{iω}) - G_r(e^{iω})|`` over a dense grid of [0, π] refined at both systems'
    pole angles; ``system`` and ``reduced`` are ``(Ad, Bd, C)`` triples (a lower bound of the
    true H∞ norm of the difference, which the balanced-truncation bound caps)."""
    check_positive_int("n_grid", n_grid)
    A1, B1, C1 = real_realization(*system)
    A2, B2, C2 = real_realization(*reduced)
    w = _grid(n_grid, np.linalg.eigvals(A1), np.linalg.eigvals(A2) if A2.size else [])
    return float(np.abs(frequency_response(A1, B1, C1, w) - frequency_response(A2, B2, C2, w)).max())


def modal_form(A, B, C) -> Tuple[np.ndarray, np.ndarray]:
    """Diagonal form of a real system for S4D's ``K_k = 2 Re Σ_m ρ_m λ_m^k``: one mode per
    conjugate pair (the pole with Im > 0 and its residue) and one per real pole (residue halved).
    Returns ``(poles, residues)`` (complex128), real poles last."""
    A, B, C = _check_system(A, B, C)
    if np.iscomplexobj(A):
        raise TypeError("A must be real (use real_realization first)")
    if A.shape[0] == 0:
        return np.zeros(0, np.complex128), np.zeros(0, np.complex128)
    lam, res = _pole_residue(A, B, C)
    pair = lam.imag > 0
    real = lam.imag == 0  # LAPACK returns the eigenvalues of a real matrix as exact conjugates or reals
    return np.concatenate([lam[pair], lam[real]]), np.concatenate([res[pair], res[real].real / 2])


def _n_modes(A: np.ndarray) -> int:
    if A.shape[0] == 0:
        return 0
    lam = np.linalg.eigvals(A)
    return int((lam.imag > 0).sum() + (lam.imag == 0).sum())


# ---- layers -------------------------------------------------------------------------------------

@dataclass
class LayerReduction:
    """A reduced layer and, per channel: the order kept, all Hankel singular values (rows
    padded with zeros), the bound ``2 Σ_{i>r} σ_i`` and the measured H∞ error of the new layer."""

    layer: torch.nn.Module
    orders: np.ndarray
    hsv: np.ndarray
    bound: np.ndarray
    error: np.ndarray
    target: str = "s4d"
    d_state: int = 0
    norm: Optional[np.ndarray] = None  # per channel max_ω |G(e^{iω})| of the source (same grid)

    def summary(self) -> dict:
        out = {"target": self.target, "d_state": self.d_state, "orders": self.orders.tolist(),
               "max_bound": float(self.bound.max()), "max_error": float(self.error.max()),
               "bound": self.bound.tolist(), "error": self.error.tolist()}
        if self.norm is not None:
            out["hinf_norm"] = self.norm.tolist()
            out["max_relative_error"] = float((self.error / np.maximum(self.norm, 1e-300)).max())
            out["max_relative_bound"] = float((self.bound / np.maximum(self.norm, 1e-300)).max())
        return out


def _layer_systems(layer) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not hasattr(layer, "discrete_ssm") or not hasattr(layer, "kernel"):
        raise TypeError(f"layer must be an LTI layer with discrete_ssm() (S4, S4D, RTF), got {type(layer).__name__}")
    if getattr(layer, "bidirectional", False):
        raise ValueError("layer is bidirectional (a two-sided kernel); balanced truncation needs a causal layer")
    with torch.no_grad():
        Ad, Bd, C, _ = copy.deepcopy(layer).double().discrete_ssm()
    out = []
    for h in range(Ad.shape[0]):
        sys_h = real_realization(Ad[h], Bd[h], C[h])
        try:
            _check_stable(sys_h[0], f"channel {h}")
        except UnstableSystemError as exc:
            raise UnstableSystemError(f"layer {type(layer).__name__}: {exc}") from None
        out.append(sys_h)
    return out


def _dt_of(layer, H: int) -> np.ndarray:
    """The layer's per-channel step Δ when it has one (S4, S4D), else ones."""
    p = dict(layer.named_parameters()).get("log_dt")
    if p is not None and tuple(p.shape) == (H,):
        return np.exp(p.detach().double().cpu().numpy())
    return np.ones(H)


def _to_s4d(layer, truncs, dt: np.ndarray, n_modes: int):
    from .layers import S4D  # reduction sits beside ssmkit.lti; layers are needed only here

    H = len(truncs)
    M = max(1, n_modes)
    lam = np.full((H, M), np.exp(-1.0) + 0j)
    res = np.zeros((H, M), np.complex128)
    for h, t in enumerate(truncs):
        p, r = modal_form(t.A, t.B, t.C)
        lam[h, : p.size], res[h, : p.size] = p, r
    mu = np.log(lam) / dt[:, None]  # continuous eigenvalue: Ā = exp(Δμ) (ZOH)
    s = np.sqrt(np.abs(res))
    Bbar = s + 0j  # split each residue ρ = C B̄ evenly in magnitude
    Cm = np.where(s > 0, res / np.where(s > 0, s, 1), 0)
    Bc = Bbar * mu / np.expm1(dt[:, None] * mu)  # B̄ = (e^{Δμ} - 1)/μ · B
    out = S4D(layer.d_model, d_state=2 * M, discretization="zoh").double()
    with torch.no_grad():
        out.log_dt.copy_(torch.from_numpy(np.log(dt)))
        out.A_real_log.copy_(torch.from_numpy(np.log(-mu.real)))
        out.A_imag.copy_(torch.from_numpy(mu.imag))
        out.B.copy_(torch.view_as_real(torch.from_numpy(Bc)))
        out.C.copy_(torch.view_as_real(torch.from_numpy(Cm)))
        out.D.copy_(layer.D.detach().double())
    return out


def _to_rtf(layer, truncs, order: int, l_max: int):
    from .layers import RTF
    from .kernels.transfer import ss_to_tf

    H = len(truncs)
    a = torch.zeros(H, max(1, order), dtype=torch.float64)
    b = torch.zeros(H, max(1, order), dtype=torch.float64)
    for h, t in enumerate(truncs):
        r = t.order
        if r == 0:
            continue
        ah, bh = ss_to_tf(torch.from_numpy(t.A), torch.from_numpy(t.B), torch.from_numpy(t.C), l_max)
        a[h, :r], b[h, :r] = ah, bh  # trailing zero coefficients: the same rational function
    out = RTF(layer.d_model, d_state=max(1, order), l_max=l_max).double()
    with torch.no_grad():
        out.a.copy_(a)
        out.b.copy_(b)
        out.D.copy_(layer.D.detach().double())
    return out


def reduce(layer, order: Optional[int] = None, *, tolerance: Optional[float] = None, to: str = "s4d",
           l_max: Optional[int] = None, n_grid: int = 4096, systems=None) -> LayerReduction:
    """Balanced truncation of every channel of an LTI layer (S4, S4D or RTF) into a new layer.

    Args:
        order: real state dimension r kept per channel (capped at the system's numerical rank).
        tolerance: instead of ``order``: the smallest r whose bound ``2 Σ_{i>r} σ_i`` is at most
            ``tolerance`` in every channel.
        to: ``"s4d"``: a ZOH S4D layer with ``ceil(r/2)`` complex modes (``d_state = 2·ceil(r/2)``):
            the reduced system is diagonalised; a conjugate pair of poles takes one mode, and so
            does a real pole, so a channel whose order-r truncation has more real poles than the
            modes allow keeps the largest order r' < r that fits (its bound is then the one of r').
            Odd r therefore means d_state = r + 1 with one real pole allowed. ``"rtf"``: an RTF
            layer of order r (any r), numerator for length ``l_max``.
        l_max: the RTF target's ``l_max`` (default: the source layer's ``l_max``).
        n_grid: uniform frequencies in [0, π] for the measured error.

    The returned layer has the source's dtype and device and the same ``D``. Its measured error
    (``max_ω |G - G_r|`` of the layer as stored, e.g. in float32) is reported beside the bound.
    Raises :class:`UnstableSystemError` if any channel has a pole on or outside the unit circle.
    """
    check_choice("to", to, ("s4d", "rtf"))
    if (order is None) == (tolerance is None):
        raise ValueError("give exactly one of order and tolerance")
    if order is not None:
        check_positive_int("order", order)
    else:
        check_positive("tolerance", tolerance, allow_zero=True)
    systems = _layer_systems(layer) if systems is None else systems
    H = len(systems)
    balanced = [_balance(*s) for s in systems]
    N = max(s[0].shape[0] for s in systems)
    hsv = np.zeros((H, N))
    for h, (_, _, _, s) in enumerate(balanced):
        hsv[h, : s.size] = s
    if tolerance is not None:
        order = max(1, max(order_for_tolerance(s, tolerance) for *_, s in balanced))
    n_modes = math.ceil(order / 2)

    def truncate(h: int, r: int) -> BalancedTruncation:
        A, B, Cr, s = balanced[h]
        r = min(r, A.shape[0])
        return BalancedTruncation(A[:r, :r].copy(), B[:r].copy(), Cr[:r].copy(), s, error_bound(s, r))

    truncs = []
    for h in range(H):
        r = order
        t = truncate(h, r)
        if to == "s4d":
            while _n_modes(t.A) > n_modes:  # too many real poles for the modes: keep fewer states
                r = t.order - 1
                t = truncate(h, r)
        truncs.append(t)
    if to == "s4d":
        new = _to_s4d(layer, truncs, _dt_of(layer, H), n_modes)
        d_state = new.d_state
    else:
        l_max = l_max if l_max is not None else getattr(layer, "l_max", None)
        if l_max is None:
            raise ValueError("l_max is required to reduce to an RTF layer from a layer without l_max")
        check_positive_int("l_max", l_max)
        new = _to_rtf(layer, truncs, order, l_max)
        d_state = new.d_state
    # measure what was built, at the precision it is stored in
    ref = layer.D
    new = new.to(dtype=ref.dtype, device=ref.device)
    try:
        stored = _layer_systems(new)
    except UnstableSystemError as exc:
        raise ValueError(f"the reduced {to.upper()} layer is unstable as stored in {ref.dtype} ({exc}); the "
                         f"coefficients of a polynomial with poles clustered near z = 1 need more digits: use "
                         f"to='s4d' (poles stored one by one) or a float64 model") from None
    error = np.array([hinf_error(systems[h], stored[h], n_grid) for h in range(H)])
    empty = (np.zeros((0, 0)), np.zeros(0), np.zeros(0))
    norm = np.array([hinf_error(systems[h], empty, n_grid) for h in range(H)])
    bound = np.array([t.bound for t in truncs])
    return LayerReduction(new, np.array([t.order for t in truncs]), hsv, bound, error, to, d_state, norm)


def reduce_model(model: torch.nn.Module, order: Optional[int] = None, *, tolerance: Optional[float] = None,
                 to: str = "s4d", l_max: Optional[int] = None, n_grid: int = 4096):
    """A copy of ``model`` with every LTI layer (S4, S4D, RTF) replaced by its balanced truncation
    (:func:`reduce`, one order for the whole model). With ``tolerance``, the order is the smallest
    whose bound is at most ``tolerance`` in every channel of every layer.

    Returns ``(new_model, {module_name: LayerReduction})``. Other layer kinds are refused.
    """
    from .layers.lti_base import LTILayer

    if (order is None) == (tolerance is None):
        raise ValueError("give exactly one of order and tolerance")
    names = [n for n, m in model.named_modules() if isinstance(m, LTILayer)]
    if not names:
        raise ValueError("model has no LTI layer (S4, S4D, RTF) to reduce")
    modules = dict(model.named_modules())
    systems = {n: _layer_systems(modules[n]) for n in names}
    if tolerance is not None:
        check_positive("tolerance", tolerance, allow_zero=True)
        order = 1
        for n in names:
            for s in systems[n]:
                order = max(order, order_for_tolerance(hankel_singular_values(*s), tolerance))
    new_model = copy.deepcopy(model)
    reports = {}
    while True:
        for n in names:
            reports[n] = reduce(modules[n], order, to=to, l_max=l_max, n_grid=n_grid, systems=systems[n])
        worst = max(float(r.bound.max()) for r in reports.values())
        if tolerance is None or worst <= tolerance:
            break
        order += 1  # an S4D mode limit lowered some channel's order below the bound: allow one more
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = new_model.get_submodule(parent_name) if parent_name else new_model
        setattr(parent, child, reports[n].layer)
    return new_model, reports

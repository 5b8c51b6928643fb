"""S4D: the diagonal state-space layer (Gu, Gupta, Goel, Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"; docs/math.md §7).

Per channel h, ``A = diag(λ)`` with ``M = N/2`` complex modes (one of each conjugate pair, so the
real system has N states and outputs are ``2 Re(·)``):

- ZOH: ``Ā = e^{Δλ}``, ``B̄ = (e^{Δλ} - 1)/λ · B``;  bilinear: ``Ā = (1 + Δλ/2)/(1 - Δλ/2)``,
  ``B̄ = Δ/(1 - Δλ/2) · B``
- kernel ``K_k = 2 Re Σ_n C_n B̄_n Ā_n^k`` (Vandermonde, chunked), step ``x = Ā x + B̄ u``.

Inits of λ: ``legs`` (the diagonal part of HiPPO-LegS's normal-plus-low-rank form,
``-1/2 + iω``), ``lin`` (``-1/2 + iπn``), ``inv`` (``-1/2 + i(N/π)(N/(2n+1) - 1)``), ``real``
(``-(n+1)``).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive, check_choice, check_dt_range, check_even_int
from ..hippo.measures import transition
from ..kernels.vandermonde import vandermonde_kernel, vandermonde_reduce
from .base import register_layer, set_optim_hints
from .init import log_uniform_dt
from .lti_base import LTILayer

__all__ = ["S4D", "s4d_init"]

INITS = ("legs", "lin", "inv", "real")
DISCRETIZATIONS = ("zoh", "bilinear")


def s4d_init(init: str, N: int) -> torch.Tensor:
    """The M = N/2 initial eigenvalues λ (complex128) of an S4D layer with state size N."""
    check_choice("init", init, INITS)
    M = N // 2
    n = torch.arange(M, dtype=torch.float64)
    if init == "lin":
        return torch.complex(-0.5 * torch.ones(M, dtype=torch.float64), math.pi * n)
    if init == "inv":
        return torch.complex(-0.5 * torch.ones(M, dtype=torch.float64), (N / math.pi) * (N / (2 * n + 1) - 1))
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros(M, dtype=torch.float64))
    # legs: A + ½vvᵀ + ½I is skew-symmetric (v_n = √(2n+1)), so A + ½vvᵀ has eigenvalues -½ + iω;
    # compute ω from the Hermitian matrix i·S for accuracy, keep the M with ω > 0.
    A, _ = transition("legs", N)
    v = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    S = A + 0.5 * torch.outer(v, v) + 0.5 * torch.eye(N, dtype=torch.float64)
    w = torch.linalg.eigvalsh(1j * S.to(torch.complex128))  # iS x = w x  =>  S x = -i w x
    omega = torch.sort(-w).values
    omega = omega[omega > 0][:M]
    if omega.numel() < M:  # pragma: no cover - N even gives exactly M positive frequencies
        raise ValueError(f"could not find {M} conjugate pairs in the LegS spectrum for N={N}")
    return torch.complex(-0.5 * torch.ones(M, dtype=torch.float64), omega.sort().values)


@register_layer("s4d")
class S4D(LTILayer):
    """Diagonal SSM layer over (batch, length, d_model); one independent SSM per channel.

    Args:
        d_model: channels H.
        d_state: state size N (even; N/2 complex modes are stored).
        init: ``legs`` | ``lin`` | ``inv`` | ``real``.
        discretization: ``zoh`` | ``bilinear``.
        dt_min, dt_max: range of the log-uniform init of Δ.
        ssm_lr: learning rate hint for ``log_dt`` and ``A`` (no weight decay).
    """

    def __init__(self, d_model: int, d_state: int = 64, init: str = "legs", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, ssm_lr: float = 1e-3, bidirectional: bool = False,
                 device=None, dtype=None):
        super().__init__(d_model, bidirectional, device, dtype)
        check_even_int("d_state", d_state)
        check_positive("ssm_lr", ssm_lr)
        check_choice("init", init, INITS)
        check_choice("discretization", discretization, DISCRETIZATIONS)
        check_dt_range(dt_min, dt_max)
        self.d_state, self.init, self.discretization = d_state, init, discretization
        H, M = self.n_kernels, d_state // 2
        lam = s4d_init(init, d_state)
        self.log_dt = self._parameter(log_uniform_dt(H, dt_min, dt_max, torch.float64))
        self.A_real_log = self._parameter(torch.log(-lam.real).expand(H, M).clone())
        self.A_imag = self._parameter(lam.imag.expand(H, M).clone())
        self.B = self._parameter(torch.view_as_real(torch.ones(H, M, dtype=torch.complex64)).clone())
        self.C = self._parameter(torch.view_as_real(torch.randn(H, M, dtype=torch.complex64)).clone())  # E|C|² = 1
        for p in (self.log_dt, self.A_real_log, self.A_imag, self.B):
            set_optim_hints(p, lr=ssm_lr, weight_decay=0.0)

    @property
    def state_width(self) -> int:
        return self.d_state // 2

    # ---- discrete parameters ----------------------------------------------------------
    def _lambda(self) -> torch.Tensor:
        return torch.complex(-torch.exp(self.A_real_log), self.A_imag)  # (H, M)

    def _discrete(self):
        """``(log Ā, B̄, C)`` each (H, M) complex."""
        lam = self._lambda()
        dt = torch.exp(self.log_dt).unsqueeze(-1)
        dtlam = dt * lam
        B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)
        if self.discretization == "zoh":
            log_dA = dtlam
            dB = torch.expm1(dtlam) / lam * B
        else:
            log_dA = torch.log((1 + dtlam / 2) / (1 - dtlam / 2))
            dB = dt / (1 - dtlam / 2) * B
        return log_dA, dB, C

    def kernel(self, L: int) -> torch.Tensor:
        """The (d_model, L) real kernel ``K_k = 2 Re Σ_n C_n B̄_n Ā_n^k``."""
        self._check_L(L)
        log_dA, dB, C = self._discrete()
        return vandermonde_kernel(log_dA, C * dB, L)

    def discrete_ssm(self):
        """Dense ``(Ad, Bd, C, D)``: (H,N,N), (H,N), (H,N), (H,), complex with both modes of each
        conjugate pair, so that ``y = C x + D u`` is real and equals the layer's output."""
        log_dA, dB, C = self._discrete()
        dA = torch.exp(log_dA)
        full = lambda z: torch.cat([z, z.conj()], dim=-1)
        return torch.diag_embed(full(dA)), full(dB), full(C), self.D

    # ---- recurrence ---------------------------------------------------------------------
    def _step_params(self):
        """``(Ā, B̄)`` for the recurrence, cached while no gradient is recorded."""
        def compute():
            log_dA, dB, _ = self._discrete()
            return torch.exp(log_dA), dB
        return self._cached("step_params", compute, (self.log_dt, self.A_real_log, self.A_imag, self.B))

    def _advance(self, state, u_t):
        dA, dB = self._step_params()
        return dA * state + dB * u_t.unsqueeze(-1)

    def _readout(self, state):
        C = torch.view_as_complex(self.C)
        return 2 * (C * state).sum(-1).real

    def _final_state(self, u, state0, lengths):
        # x_b = Ā^{l_b} x0 + B̄ Σ_{k<l_b} Ā^{l_b-1-k} u_k: each row's real tokens rotated to the end of
        # the window (zeros in front add nothing), reversed, then one transposed Vandermonde product.
        bsz, L, H = u.shape
        log_dA, dB, _ = self._discrete()
        if lengths is not None:
            idx = (torch.arange(L, device=u.device)[None, :] + lengths[:, None]) % L
            u = torch.gather(u, 1, idx[..., None].expand(-1, -1, H))
        state = vandermonde_reduce(log_dA, u.flip(1).transpose(1, 2)) * dB
        if state0 is not None:
            lens = torch.full((bsz,), L, device=u.device) if lengths is None else lengths
            state = state + torch.exp(lens.to(log_dA.real.dtype)[:, None, None] * log_dA) * state0
        return state

    def _initial_response(self, state0, L):
        # y_k = 2 Re Σ_n C_n Ā_n^{k+1} x0_n, k = 0..L-1: a Vandermonde product per (batch, channel)
        log_dA, _, C = self._discrete()
        CB = C * torch.exp(log_dA) * state0  # (batch, H, M)
        return vandermonde_kernel(log_dA, CB, L).transpose(1, 2)  # (batch, L, H)

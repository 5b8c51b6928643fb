"""S4: the structured state-space layer (Gu, Goel, Ré 2021; docs/math.md §6).

Per channel, ``A = Λ - Σ_r P_r P_r*`` (normal plus low rank, initialised from the NPLR form of a
HiPPO matrix, :func:`ssmkit.hippo.nplr`), bilinear discretization with step ``Δ``:

- ``kernel(L)``: the generating function at the roots of unity, Woodbury, Cauchy sums
  (:func:`ssmkit.kernels.dplr_kernel`) with ``C̃ = C (I - Ā^{l_max})`` learned directly;
- ``step``: ``x' = (I - Δ/2 A)^{-1} [(I + Δ/2 A) x + Δ B u]``, both factors diagonal plus rank
  r, so O(N) per token (Woodbury again), with ``C = C̃ (I - Ā^{l_max})^{-1}`` computed once.

Only one mode of each conjugate pair is stored (M = N/2); outputs are real.
"""
from __future__ import annotations


import torch

from .._checks import check_positive, check_choice, check_dt_range, check_even_int, check_positive_int
from ..hippo.nplr import nplr
from ..kernels.cauchy import dplr_kernel
from .base import register_layer, set_optim_hints
from .init import log_uniform_dt
from .lti_base import LTILayer

__all__ = ["S4"]


@register_layer("s4")
class S4(LTILayer):
    """S4 layer over (batch, length, d_model); one DPLR SSM per channel.

    Args:
        d_model: channels H. d_state: N (even; M = N/2 stored modes).
        measure: ``legs`` (rank 1) or ``legt`` (rank 2) HiPPO initialisation.
        l_max: the length ``C̃`` refers to (the training length).
        dt_min, dt_max: log-uniform range of Δ. ssm_lr: learning-rate hint for Δ, Λ, P, B.
    """

    def __init__(self, d_model: int, d_state: int = 64, measure: str = "legs", l_max: int = 1024,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, ssm_lr: float = 1e-3, bidirectional: bool = False,
                 device=None, dtype=None):
        super().__init__(d_model, bidirectional, device, dtype)
        check_choice("measure", measure, ("legs", "legt"))
        check_positive_int("l_max", l_max)
        check_dt_range(dt_min, dt_max)
        check_even_int("d_state", d_state)
        check_positive("ssm_lr", ssm_lr)
        self.d_state, self.measure, self.l_max = d_state, measure, l_max
        H = self.n_kernels
        form = nplr(measure, d_state)
        lam = form.Lambda
        self.log_dt = self._parameter(log_uniform_dt(H, dt_min, dt_max, torch.float64))
        self.A_real_log = self._parameter(torch.log(torch.clamp(-lam.real, min=1e-4)).expand(H, -1).clone())
        self.A_imag = self._parameter(lam.imag.expand(H, -1).clone())
        self.P = self._parameter(torch.view_as_real(form.P.unsqueeze(1).expand(-1, H, -1).clone()))
        self.B = self._parameter(torch.view_as_real(form.B.expand(H, -1).clone()))
        self.C = self._parameter(torch.view_as_real(torch.randn(H, d_state // 2, dtype=torch.complex64)))  # C̃
        for p in (self.log_dt, self.A_real_log, self.A_imag, self.P, self.B):
            set_optim_hints(p, lr=ssm_lr, weight_decay=0.0)

    @property
    def state_width(self) -> int:
        return self.d_state // 2

    def _state_to_full(self, state):
        return torch.cat([state, state.conj()], dim=-1)

    def _full_to_state(self, x):
        return x[..., : self.d_state // 2]

    def _dense_AB(self):
        Ad, Bd, _ = self._dense()
        return Ad, Bd

    # ---- parameters ---------------------------------------------------------------------
    def _params(self):
        lam = torch.complex(-torch.exp(self.A_real_log), self.A_imag)
        return (lam, torch.view_as_complex(self.P), torch.view_as_complex(self.B), torch.view_as_complex(self.C),
                torch.exp(self.log_dt))

    def kernel(self, L: int) -> torch.Tensor:
        """The (d_model, L) real kernel by the Cauchy/Woodbury generating function."""
        self._check_L(L)
        lam, P, B, Ct, dt = self._params()
        if L <= self.l_max:
            return dplr_kernel(lam, P, B, Ct, dt, self.l_max)[:, :L]
        # beyond l_max: the numerator for length L is C (I - Ā^L) with C from the recurrence
        Ad, Bd, C, _ = self.discrete_ssm()
        I = torch.eye(Ad.shape[-1], dtype=Ad.dtype, device=Ad.device)
        CtL = (C.unsqueeze(-2) @ (I - torch.linalg.matrix_power(Ad, L))).squeeze(-2)
        return dplr_kernel(lam, P, B, CtL[:, : self.d_state // 2], dt, L)

    def _dense(self):
        """Full complex (both conjugate halves) bilinear system: Ā, B̄, C̃ of shape (H,N,N),(H,N),(H,N)."""
        lam, P, B, Ct, dt = self._params()
        cat = lambda x: torch.cat([x, x.conj()], dim=-1)
        lam, P, B, Ct = cat(lam), cat(P), cat(B), cat(Ct)
        A = torch.diag_embed(lam) - torch.einsum("rhn,rhm->hnm", P, P.conj())
        N = A.shape[-1]
        I = torch.eye(N, dtype=A.dtype, device=A.device)
        d = (dt / 2).to(A.dtype)[:, None, None]
        M = I - d * A
        Ad = torch.linalg.solve(M, I + d * A)
        Bd = torch.linalg.solve(M, (2 * d[..., 0] * B).unsqueeze(-1))[..., 0]
        return Ad, Bd, Ct

    def discrete_ssm(self):
        """Dense complex ``(Ad, Bd, C, D)`` with both conjugate halves: (H,N,N),(H,N),(H,N),(H,);
        ``y = C x + D u`` is real. ``C = C̃ (I - Ā^{l_max})^{-1}``."""
        Ad, Bd, Ct = self._dense()
        return Ad, Bd, self._C_full(Ad, Ct), self.D

    def _C_full(self, Ad, Ct):
        I = torch.eye(Ad.shape[-1], dtype=Ad.dtype, device=Ad.device)
        Mt = (I - torch.linalg.matrix_power(Ad, self.l_max)).transpose(-1, -2)
        return torch.linalg.solve(Mt, Ct.unsqueeze(-1))[..., 0]

    def _C_step(self) -> torch.Tensor:
        """The kept half of ``C = C̃ (I - Ā^{l_max})^{-1}``, cached while no gradient is recorded."""
        def compute():
            Ad, _, Ct = self._dense()
            return self._C_full(Ad, Ct)[:, : self.d_state // 2]
        return self._cached("C_step", compute)

    # ---- recurrence (O(N) per step) -------------------------------------------------------
    def _step_consts(self):
        """Per-step constants of the O(N) bilinear step, cached while no gradient is recorded."""
        def compute():
            lam, P, B, _, dt = self._params()
            h = (dt / 2).unsqueeze(-1)  # (H, 1)
            # (I - Δ/2 A) = D0 + (Δ/2) P P*,  D0 = 1 - (Δ/2) Λ: Woodbury with an r x r real system W
            D0 = 1 - h * lam
            PD = P / D0  # (r, H, M)
            W = torch.eye(P.shape[0], dtype=h.dtype, device=h.device) + h.unsqueeze(-1) * 2 * torch.einsum(
                "ahm,bhm->hab", P.conj(), PD).real  # (H, r, r)
            return lam, P, B, h, D0, PD, torch.linalg.inv(W)
        return self._cached("step_consts", compute)

    def _advance(self, x, u):
        lam, P, B, h, D0, PD, Winv = self._step_consts()
        pstar = lambda v: 2 * torch.einsum("rhm,bhm->bhr", P.conj(), v).real  # P* v over both halves (real)
        # t = (I + Δ/2 A) x + Δ B u,  A x = Λx - Σ_r P_r (P_r* x)
        t = x + h * (lam * x - torch.einsum("rhm,bhr->bhm", P, pstar(x).to(P.dtype))) + (2 * h) * B * u.unsqueeze(-1)
        y0 = t / D0
        sol = torch.einsum("hac,bhc->bha", Winv, pstar(y0))  # W^{-1} P* y0: (B, H, r)
        return y0 - h * torch.einsum("rhm,bhr->bhm", PD, sol.to(PD.dtype))

    def _readout(self, x):
        return 2 * (self._C_step() * x).sum(-1).real

"""S5: one MIMO diagonal state-space model per layer (Smith, Warrington, Linderman 2023,
"Simplified State Space Layers for Sequence Modeling").

``x_k = Λ̄ ⊙ x_{k-1} + B̄ u_k``, ``y_k = GELU(2 Re(C̃ x_k) + D ⊙ u_k)`` with a complex diagonal
``Λ`` of P/2 modes (one of each conjugate pair), initialised from the diagonal of HiPPO-LegS's
normal-plus-low-rank form, ``B̃ = V* B`` and ``C̃ = C V`` for random ``B``, ``C`` and the
eigenvectors ``V`` (S5 §4.3), a learned step per state ``Δ`` (log-uniform init) and ZOH:
``Λ̄ = e^{ΔΛ}``, ``B̄ = (Λ̄ - 1)/Λ ⊙ B̃``. The recurrence runs with :func:`ssmkit.ops.linear_scan`
(the paper's parallel scan, here a fused sequential scan); S5 mixes channels itself, so the
backbone adds no mixer; the GELU after the SSM is the paper's default activation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_dt_range, check_finite
from ..hippo.nplr import nplr
from ..ops.scan import linear_scan
from .._checks import check_mask, check_sequence_input, check_step_input
from .base import SequenceLayer, register_layer, set_optim_hints
from .init import log_uniform_dt

__all__ = ["S5"]


@register_layer("s5")
class S5(SequenceLayer):
    """S5 layer over (batch, length, d_model) with a state of ``d_state`` (even) dimensions."""

    needs_channel_mixer = False

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, ssm_lr: float = 1e-3):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be an int >= 1, got {d_model!r}")
        if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even int >= 2, got {d_state!r}")
        check_dt_range(dt_min, dt_max)
        self.d_model, self.d_state = d_model, d_state
        H, M = d_model, d_state // 2
        F_ = nplr("legs", d_state)
        V = F_.V  # (N, M) orthonormal
        B = torch.randn(d_state, H, dtype=torch.float64) / math.sqrt(d_state)
        C = torch.randn(H, d_state, dtype=torch.float64) / math.sqrt(M)
        self.A_real_log = nn.Parameter(torch.log(-F_.Lambda.real).float())
        self.A_imag = nn.Parameter(F_.Lambda.imag.float())
        self.log_dt = nn.Parameter(log_uniform_dt(M, dt_min, dt_max))
        self.B = nn.Parameter(torch.view_as_real((V.conj().T @ B.to(torch.complex128)).to(torch.complex64)))  # (M, H)
        self.C = nn.Parameter(torch.view_as_real((C.to(torch.complex128) @ V).to(torch.complex64)))  # (H, M)
        self.D = nn.Parameter(torch.randn(H))
        for p in (self.A_real_log, self.A_imag, self.log_dt):
            set_optim_hints(p, lr=ssm_lr, weight_decay=0.0)

    def _discrete(self):
        """ZOH of the diagonal system: ``Λ̄ = e^{ΔΛ}`` (M,), ``B̄ = (e^{ΔΛ} - 1)/Λ ⊙ B̃`` (M, H), and ``C̃``."""
        lam = torch.complex(-torch.exp(self.A_real_log), self.A_imag)
        check_finite("A_real_log/A_imag (Λ)", lam)
        if not bool((lam.real < 0).all()):
            raise ValueError("A_real_log must give Re Λ = -exp(A_real_log) < 0 (finite, nonzero)")
        dlam = torch.exp(check_finite("log_dt", self.log_dt)) * lam
        dA = torch.exp(dlam)
        dB = (torch.expm1(dlam) / lam).unsqueeze(-1) * torch.view_as_complex(self.B)  # (M, H)
        return dA, dB, torch.view_as_complex(self.C)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        cdtype = torch.complex128 if (dtype or self.D.dtype) == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.d_state // 2, dtype=cdtype, device=device or self.D.device)

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        mask = check_mask(mask, x)
        dA, dB, C = self._discrete()
        Bu = torch.einsum("mh,blh->blm", dB, x.to(dB.dtype))  # (B, L, M)
        a = dA.expand_as(Bu)
        if mask is not None:  # padded positions: a = 1, b = 0, the state passes through unchanged
            a = torch.where(mask[..., None], a, torch.ones_like(a))
            Bu = Bu * mask[..., None]
        if initial_state is not None:
            ref = self.initial_state(x.shape[0], device="meta")
            if not isinstance(initial_state, torch.Tensor) or initial_state.shape != ref.shape:
                raise ValueError(f"initial_state must have shape {tuple(ref.shape)}")
            check_finite("initial_state", initial_state)
        h = linear_scan(a, Bu, initial_state)
        y = F.gelu(2 * torch.einsum("hm,blm->blh", C, h).real + self.D * x)
        if mask is not None:
            y = y * mask[..., None]
        return (y, h[:, -1]) if return_state else y

    def step(self, x_t: torch.Tensor, state: torch.Tensor):
        """One token in O(P·H): ``x = Λ̄ x + B̄ u``, ``y = GELU(2 Re(C̃ x) + D u)``."""
        check_step_input(x_t, self.d_model)
        if not isinstance(state, torch.Tensor) or state.shape != (x_t.shape[0], self.d_state // 2):
            raise ValueError(f"state must have shape ({x_t.shape[0]}, {self.d_state // 2})")
        check_finite("state", state)
        dA, dB, C = self._discrete()
        state = dA * state + x_t.to(dB.dtype) @ dB.T
        return F.gelu(2 * (state @ C.T).real + self.D * x_t), state

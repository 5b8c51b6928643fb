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

from .._checks import (check_bool, check_dt_range, check_even_int, check_finite, check_int, check_mask, check_positive,
                       check_positive_int, check_sequence_input, check_state, check_step_input, match_parameter_dtype,
                       right_padding_lengths,
                       trusted_inputs)
from ..hippo.nplr import nplr
from ..ops.scan import linear_scan
from .base import SequenceLayer, register_layer, set_optim_hints
from .init import log_uniform_dt
from .lti_base import factory_kwargs

__all__ = ["S5"]


@register_layer("s5")
class S5(SequenceLayer):
    """S5 layer over (batch, length, d_model) with a state of ``d_state`` (even) dimensions."""

    needs_channel_mixer = False

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, ssm_lr: float = 1e-3,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_even_int("d_state", d_state)
        check_dt_range(dt_min, dt_max)
        check_positive("ssm_lr", ssm_lr)
        factory = factory_kwargs(device, dtype)
        self.d_model, self.d_state = d_model, d_state
        H, M = d_model, d_state // 2
        form = nplr("legs", d_state)
        V = form.V  # (N, M) orthonormal
        B = torch.randn(d_state, H, dtype=torch.float64) / math.sqrt(d_state)
        C = torch.randn(H, d_state, dtype=torch.float64) / math.sqrt(M)
        param = lambda v: nn.Parameter(v.to(**factory))
        self.A_real_log = param(torch.log(-form.Lambda.real))
        self.A_imag = param(form.Lambda.imag)
        self.log_dt = param(log_uniform_dt(M, dt_min, dt_max))
        self.B = param(torch.view_as_real(V.conj().T @ B.to(torch.complex128)).contiguous())  # (M, H)
        self.C = param(torch.view_as_real(C.to(torch.complex128) @ V).contiguous())  # (H, M)
        self.D = param(torch.randn(H))
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
        """The zero state (batch_size, d_state/2), complex (complex128 when ``dtype`` is float64)."""
        check_int("batch_size", batch_size, minimum=0)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        real = dtype if dtype is not None else self.D.dtype
        real = real.to_real() if real.is_complex else real
        cdtype = torch.complex128 if real == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.d_state // 2, dtype=cdtype, device=device if device is not None else self.D.device)

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        check_bool("return_state", return_state)
        dtype, x = x.dtype, match_parameter_dtype(x, self.D.dtype)  # docs/reliability.md
        mask = check_mask(mask, x)
        right_padding_lengths(mask, x.shape[1])  # (refuses any other mask pattern, as the other layers do)
        if initial_state is not None:
            check_state("initial_state", initial_state, (x.shape[0], self.d_state // 2))
        dA, dB, C = self._discrete()
        if initial_state is not None:  # computed in the parameters' precision: the state is cast to it
            initial_state = initial_state.to(dB.dtype)
        bsz, L, H = x.shape
        M = dA.shape[0]
        # B̄ u as one real product: x (batch L, H) @ [Re B̄ᵀ, Im B̄ᵀ] interleaved (H, 2M) -> complex (batch, L, M)
        WB = torch.view_as_real(dB.T).reshape(H, 2 * M)
        Bu = torch.view_as_complex((x.reshape(-1, H).to(WB.dtype) @ WB).reshape(bsz, L, M, 2))
        a = dA  # one step for every token: the scan computes its powers once
        if mask is not None:  # padded positions: a = 1, b = 0, the state passes through unchanged
            a = torch.where(mask[..., None], dA.expand_as(Bu), torch.ones_like(Bu))
            Bu = Bu * mask[..., None]
        if x.shape[0] == 0:
            h = Bu
        else:
            with trusted_inputs():
                h = linear_scan(a, Bu, initial_state)
        # 2 Re(C̃ h) as one real product: [Re h, Im h] interleaved (batch L, 2M) @ [2 Re C̃ᵀ; -2 Im C̃ᵀ] (2M, H)
        WC = torch.stack([2 * C.real.T, -2 * C.imag.T], dim=1).reshape(2 * M, H)
        hr = torch.view_as_real(h).reshape(-1, 2 * M)
        y = torch.addmm((self.D * x).reshape(-1, H).to(WC.dtype), hr, WC).reshape(bsz, L, H)
        y = F.gelu(y)
        if mask is not None:
            y = y * mask[..., None]
        y = y.to(dtype)
        return (y, h[:, -1]) if return_state else y

    def step(self, x_t: torch.Tensor, state: torch.Tensor):
        """One token in O(P·H): ``x = Λ̄ x + B̄ u``, ``y = GELU(2 Re(C̃ x) + D u)``."""
        check_step_input(x_t, self.d_model)
        check_state("state", state, (x_t.shape[0], self.d_state // 2))
        dtype, x_t = x_t.dtype, match_parameter_dtype(x_t, self.D.dtype)
        dA, dB, C = self._discrete()
        state = dA * state.to(dB.dtype) + x_t.to(dB.dtype) @ dB.T  # (the state is cast as in forward)
        return F.gelu(2 * (state @ C.T).real + self.D * x_t).to(dtype), state

"""Mamba-2: the SSD block (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality", §7).

    [z, x, B, C, Δ] = in_proj(u)          x: E = expand·d_model channels in H = E/headdim heads
    x, B, C = silu(causal depthwise conv1d([x, B, C]))
    y = SSD(x, softplus(Δ + dt_bias), A, B, C) + D x      scalar A = -exp(A_log) per head
    out = out_proj(RMSNorm(y · silu(z)))

The SSD scan is computed in chunks of at most ``chunk_size`` steps, evened out over the length
(:func:`ssmkit.ops.ssd.ssd`): masked matrix products inside a chunk, a short recurrence across
chunks. ``A_log`` must be finite (ValueError otherwise), so ``A`` is finite and negative. ``step`` decodes one token in O(1), carrying the conv
window and the (heads, headdim, d_state) state. Padding: right padding only; padded positions
get Δ = 0 and zero conv input, so they leave the state unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_dt_range, check_positive_int
from ..ops.ssd import ssd
from .._checks import check_mask, check_sequence_input, check_step_input, right_padding_lengths
from .base import SequenceLayer, register_layer, set_optim_hints
from .init import log_uniform_dt
from .mamba_family import causal_conv_window, check_conv_ssm_state, negative_A

__all__ = ["Mamba2"]


class _GatedRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, y, z):
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@register_layer("mamba2")
class Mamba2(SequenceLayer):
    """The Mamba-2 block over (batch, length, d_model)."""

    needs_channel_mixer = False

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 64, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_init_range=(1.0, 16.0)):
        super().__init__()
        for k, v in dict(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                         ngroups=ngroups, chunk_size=chunk_size).items():
            check_positive_int(k, v)
        check_dt_range(dt_min, dt_max)
        E = expand * d_model
        if E % headdim:
            raise ValueError(f"headdim must divide expand*d_model={E}, got {headdim}")
        H = E // headdim
        if H % ngroups:
            raise ValueError(f"ngroups must divide the number of heads {H}, got {ngroups}")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, E
        self.headdim, self.nheads, self.ngroups, self.chunk_size = headdim, H, ngroups, chunk_size
        self.conv_dim = E + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * E + 2 * ngroups * d_state + H, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=True)
        dt = torch.exp(log_uniform_dt(H, dt_min, dt_max)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            set_optim_hints(p, weight_decay=0.0)
        self.norm = _GatedRMSNorm(E)
        self.out_proj = nn.Linear(E, d_model, bias=False)

    def initial_state(self, batch_size: int, device=None, dtype=None):
        device = device or self.D.device
        dtype = dtype or self.D.dtype
        return (torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype))

    def _check_state(self, state, batch: int, name: str = "state"):
        check_conv_ssm_state(state, self.initial_state(batch, device="meta"), name)

    def _split(self, zxbcdt):
        E, GN = self.d_inner, self.ngroups * self.d_state
        return torch.split(zxbcdt, [E, E + 2 * GN, self.nheads], dim=-1)  # z, xBC, dt

    def _heads(self, xBC):
        """conv output (..., conv_dim) -> x (..., H, P), B and C (..., G, N)."""
        E, G, N = self.d_inner, self.ngroups, self.d_state
        x, Bm, Cm = torch.split(xBC, [E, G * N, G * N], dim=-1)
        return (x.reshape(*x.shape[:-1], self.nheads, self.headdim), Bm.reshape(*Bm.shape[:-1], G, N),
                Cm.reshape(*Cm.shape[:-1], G, N))

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        b, L, _ = x.shape
        mask = check_mask(mask, x)
        lengths = right_padding_lengths(mask, L)
        conv0, h0 = (None, None)
        if initial_state is not None:
            self._check_state(initial_state, b, "initial_state")
            conv0, h0 = initial_state
        z, xBC, dt = self._split(self.in_proj(x))
        xBC = xBC.transpose(1, 2)  # (b, conv_dim, L)
        if mask is not None:
            xBC = xBC * mask[:, None, :]
        K = self.d_conv
        xpad = torch.cat([conv0 if conv0 is not None else xBC.new_zeros(b, self.conv_dim, K - 1), xBC], dim=-1)
        xBC = F.silu(F.conv1d(xpad, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)).transpose(1, 2)
        xs, Bm, Cm = self._heads(xBC)
        dt = F.softplus(dt + self.dt_bias)  # (b, L, H)
        if mask is not None:
            dt = dt * mask[..., None]
        A = negative_A(self.A_log)
        y, h = ssd(xs, dt, A, Bm, Cm, initial_state=h0, chunk_size=self.chunk_size)
        y = y + self.D[:, None] * xs
        out = self.out_proj(self.norm(y.reshape(b, L, self.d_inner), z))
        if mask is not None:
            out = out * mask[..., None]
        if not return_state:
            return out
        return out, (causal_conv_window(xpad, lengths, K), h)

    def step(self, x_t: torch.Tensor, state):
        """One token: ``x_t`` (B, d_model) -> ``(y_t, (conv_state, ssm_state))``, O(1)."""
        check_step_input(x_t, self.d_model)
        self._check_state(state, x_t.shape[0])
        conv_state, h = state
        z, xBC, dt = self._split(self.in_proj(x_t))
        window = torch.cat([conv_state, xBC.unsqueeze(-1)], dim=-1)  # (b, conv_dim, K)
        xBC = F.silu((window * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)
        xs, Bm, Cm = self._heads(xBC)  # (b, H, P), (b, G, N)
        rep = self.nheads // self.ngroups
        Bh, Ch = Bm.repeat_interleave(rep, dim=1), Cm.repeat_interleave(rep, dim=1)  # (b, H, N)
        dt = F.softplus(dt + self.dt_bias)  # (b, H)
        A = negative_A(self.A_log)
        h = torch.exp(dt * A)[..., None, None] * h + (dt[..., None] * xs).unsqueeze(-1) * Bh.unsqueeze(2)
        y = torch.einsum("bhpn,bhn->bhp", h, Ch) + self.D[:, None] * xs
        out = self.out_proj(self.norm(y.reshape(y.shape[0], self.d_inner), z))
        return out, (window[..., 1:], h)

"""Mamba: the selective state-space block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", §3.4 and Fig. 3; docs/math.md §10).

    [x, z] = in_proj(u)                         (B, L, 2E)  with E = expand · d_model
    x = silu(causal depthwise conv1d(x))        width d_conv
    Δ, B, C = x_proj(x)                         Δ through dt_proj (rank dt_rank) and softplus
    y = selective_scan(x, Δ, A, B, C, D)        A = -exp(A_log), S4D-Real init A_n = -(n+1)
    out = out_proj(y · silu(z))

``step`` decodes one token in O(1): it carries the last ``d_conv - 1`` conv inputs and the
(E, N) SSM state. Padding: right padding only (real tokens first); padded positions get
Δ = 0, so ``exp(Δ A) = 1`` and the state passes through unchanged (left-padded batches are
handled by the model, :class:`ssmkit.models.Backbone`). A non-finite ``A_log`` (which would make
``A`` NaN, -inf or 0) raises ValueError, as do non-finite inputs and states (value checks are
skipped inside ``trusted_inputs``, where a model has checked its input once).

Half-precision weights (bfloat16, float16): the scan and the recurrent SSM state are float32.
An input in another floating dtype than the weights is cast to theirs and the output returned
in the input's dtype (left alone inside autocast; docs/reliability.md).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (check_bool, check_choice, check_dt_range, check_float, check_int, check_mask, check_positive_int,
                       check_sequence_input, check_step_input, match_parameter_dtype)
from ..ops.mamba_fused import mamba_inner
from ..ops import decode_step
from ..ops.cpu_half import module_linear
from ..ops.selective_scan import selective_scan
from .base import SequenceLayer, register_layer, set_optim_hints
from .init import MAMBA_INITS, check_pair, log_uniform_dt, mimetic_A_log, tie_rows_
from .mamba_family import CausalConv, InPlaceStep, fused_step, native_layer_call, rows_linear, check_conv_ssm_state, negative_A, padding_lengths, state_dtype

__all__ = ["Mamba"]


@register_layer("mamba")
class Mamba(InPlaceStep, SequenceLayer):
    """The Mamba-1 block over (batch, length, d_model); defaults as in the paper.

    ``bias``: biases of ``in_proj`` and ``out_proj``; ``conv_bias``: bias of the conv;
    ``device``, ``dtype``: where and in which dtype the parameters are created.

    ``init="mimetic"`` (default ``"default"``, the paper's init above) starts the layer close to
    linear attention (Trockman et al. 2024, arXiv 2410.11135; :func:`ssmkit.layers.init.mimetic_A_log`):
    ``|A|`` log-uniform in ``mimetic_A_range`` (default ``[1e-3, 0.05]``) instead of ``n + 1``, so
    the state barely decays, and the rows of ``x_proj`` that give ``C`` copied from those that
    give ``B`` (``W_C = W_B``). Everything else is drawn exactly as by the default init (the
    mimetic values are drawn after it)."""

    needs_channel_mixer = False
    #: run the inner block (conv, x/Δ projections, scan, gate) as one fused operation
    #: (:func:`ssmkit.ops.mamba_fused.mamba_inner`) when no padding mask is given; False runs
    #: the same computation as separate torch operations around ``selective_scan``.
    fused = True

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, bias: bool = False,
                 conv_bias: bool = True, init: str = "default", mimetic_A_range=(1e-3, 0.05), device=None, dtype=None):
        super().__init__()
        for k, v in dict(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand).items():
            check_positive_int(k, v)
        check_choice("init", init, MAMBA_INITS)
        a_range = check_pair("mimetic_A_range", mimetic_A_range)
        check_dt_range(dt_min, dt_max)
        check_float("dt_init_floor", dt_init_floor, low=0.0)
        check_bool("bias", bias)
        check_bool("conv_bias", conv_bias)
        fk = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = E = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        check_positive_int("dt_rank", self.dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias, **fk)
        self.conv1d = CausalConv(E, d_conv, bias=conv_bias, **fk)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True, **fk)
        # Δ init (Mamba §3.6): dt_proj's bias is softplus⁻¹ of dt ~ log-uniform[dt_min, dt_max].
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(log_uniform_dt(E, dt_min, dt_max)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1)
        self.A_log = nn.Parameter(A_log.to(**{k: v for k, v in fk.items() if v is not None}))
        self.D = nn.Parameter(torch.ones(E, **fk))
        set_optim_hints(self.A_log, weight_decay=0.0)
        set_optim_hints(self.D, weight_decay=0.0)
        self.out_proj = nn.Linear(E, d_model, bias=bias, **fk)
        self.init = init
        if init == "mimetic":  # drawn after everything else: the other parameters are the default's
            with torch.no_grad():
                self.A_log.copy_(mimetic_A_log((E, d_state), *a_range))
            R, N = self.dt_rank, d_state
            tie_rows_(self.x_proj.weight, slice(R, R + N), slice(R + N, R + 2 * N))  # W_C = W_B
        self._A_cache: dict = {}  # A = -exp(A_log) between changes of A_log (decoding)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zeros: the conv window (B, E, d_conv - 1) in ``dtype`` (default: the weights' dtype)
        and the SSM state (B, E, N), float32 for half-precision weights."""
        check_int("batch_size", batch_size, minimum=0)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return (torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype(dtype)))

    def _check_state(self, state, batch: int, name: str = "state"):
        check_conv_ssm_state(state, ((batch, self.d_inner, self.d_conv - 1), (batch, self.d_inner, self.d_state)), name)

    def _ssm_params(self, x: torch.Tensor):
        """From conv output x (..., E): Δ (..., E) after softplus, B and C (..., N)."""
        dt_low, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))
        return dt, Bm, Cm

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        x_in, x = x, match_parameter_dtype(x, self.in_proj.weight.dtype)  # docs/reliability.md
        bsz, L, _ = x.shape
        mask = check_mask(mask, x)
        lengths = padding_lengths(mask, L)
        if initial_state is not None:
            self._check_state(initial_state, bsz, "initial_state")
            conv0, h0 = initial_state
        else:
            conv0, h0 = None, None
        if self.fused and mask is None:
            return self._forward_fused(x, x_in, conv0, h0, return_state)
        xi, z = module_linear(self.in_proj, x).chunk(2, dim=-1)  # (B, L, E) each
        xi = xi.transpose(1, 2)  # (B, E, L)
        if mask is not None:
            xi = xi * mask[:, None, :]
        u, window = self.conv1d(xi, conv0, lengths, return_window=True)
        u = F.silu(u)  # (B, E, L)
        dt, Bm, Cm = self._ssm_params(u.transpose(1, 2))
        dt = dt.transpose(1, 2)  # (B, E, L)
        if mask is not None:
            dt = dt * mask[:, None, :]  # Δ = 0: the state passes through padded positions unchanged
        A = negative_A(self.A_log, self._A_cache)
        y, h = selective_scan(u, dt, A, Bm.transpose(1, 2), Cm.transpose(1, 2), self.D, z=z.transpose(1, 2),
                              return_last_state=True, initial_state=h0)
        out = module_linear(self.out_proj, y.transpose(1, 2))
        if x is not x_in:  # returned in the input's dtype
            out = out.to(x_in.dtype)
        if mask is not None:
            out = out * mask[..., None]
        if not return_state:
            return out
        return out, (window, h.to(state_dtype(x.dtype)) if h0 is None else h.to(h0.dtype))

    def _forward_fused(self, x, x_in, conv0, h0, return_state):
        """``forward`` without a mask, the inner block fused (ssmkit.ops.mamba_fused)."""
        xz = module_linear(self.in_proj, x)  # (B, L, 2E)
        A = negative_A(self.A_log, self._A_cache)
        sd = h0.dtype if h0 is not None else state_dtype(x.dtype)
        y, h = mamba_inner(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                           self.dt_proj.bias, A, self.D, None if conv0 is None else conv0.to(x.dtype), h0)
        out = module_linear(self.out_proj, y)
        if x is not x_in:
            out = out.to(x_in.dtype)
        if not return_state:
            return out
        K1 = self.d_conv - 1
        E = self.d_inner
        L = xz.shape[1]
        tail = xz[:, max(0, L - K1):, :E].transpose(1, 2)  # the last K-1 conv inputs
        if L < K1:
            prev = conv0.to(xz.dtype) if conv0 is not None else xz.new_zeros(xz.shape[0], E, K1)
            tail = torch.cat([prev, tail], dim=-1)[..., -K1:]
        return out, (tail, h.to(sd))

    def _step_params(self):
        """The step's parameters besides the projections, in the kernels' order (A = -exp(A_log))."""
        c = self.conv1d
        return (c.weight, c.bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                negative_A(self.A_log, self._A_cache), self.D)

    def native_layer_call(self):
        """This layer's decoding step as one native call (:func:`~ssmkit.layers.mamba_family.native_layer_call`),
        or None when its parameters do not allow it."""
        ip, op = self.in_proj, self.out_proj
        return native_layer_call(decode_step.mamba_layer_step, (ip.weight, ip.bias, op.weight, op.bias),
                                 self._step_params(), self._A_cache)

    def _composed_step(self, x_t, state, out_state):
        small = self._step_params()
        x_in, x_t = x_t, match_parameter_dtype(x_t, self.in_proj.weight.dtype)
        conv_state, h = state
        xz = rows_linear(self.in_proj, x_t)  # (B, 2E)
        fused = fused_step(decode_step.mamba_step, xz, state, out_state, small, self._A_cache)
        if fused is not None:
            y, new = fused
        else:
            y, new = self._torch_step_core(xz, conv_state, h, negative_A(self.A_log, self._A_cache))
            if out_state is not None:
                out_state[0].copy_(new[0])
                out_state[1].copy_(new[1])
                new = out_state
        out = rows_linear(self.out_proj, y.to(x_t.dtype))
        return (out if x_t is x_in else out.to(x_in.dtype)), new

    def torch_step(self, x_t: torch.Tensor, state):
        """``step`` computed with torch operations only (the reference of the native path)."""
        check_step_input(x_t, self.d_model)
        self._check_state(state, x_t.shape[0])
        x_in, x_t = x_t, match_parameter_dtype(x_t, self.in_proj.weight.dtype)
        y, new = self._torch_step_core(rows_linear(self.in_proj, x_t), state[0], state[1],
                                       negative_A(self.A_log, self._A_cache))
        out = rows_linear(self.out_proj, y.to(x_t.dtype))
        return (out if x_t is x_in else out.to(x_in.dtype)), new

    def _torch_step_core(self, xz, conv_state, h, A):
        """From the in_proj output: gated y (B, E) in the state dtype and the new state."""
        xi, z = xz.chunk(2, dim=-1)  # (B, E)
        u, window = self.conv1d.step(xi, conv_state)
        u = F.silu(u)
        dt_low, Bm, Cm = torch.split(rows_linear(self.x_proj, u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(rows_linear(self.dt_proj, dt_low))
        sd = h.dtype
        dt, uf, Bm, Cm = dt.to(sd), u.to(sd), Bm.to(sd), Cm.to(sd)
        # h = exp(Δ A) ⊙ h + (Δ u) Bᵀ ; y = h C + D u  (in place on fresh tensors outside autograd)
        dA = torch.exp(dt.unsqueeze(-1) * A)
        if torch.is_grad_enabled():
            h = torch.addcmul(dA * h, (dt * uf).unsqueeze(-1), Bm.unsqueeze(1))
        else:
            h = dA.mul_(h).addcmul_((dt * uf).unsqueeze(-1), Bm.unsqueeze(1))
        y = torch.addcmul(torch.bmm(h, Cm.unsqueeze(-1)).squeeze(-1), self.D.to(sd), uf)
        y = y * F.silu(z.to(sd))
        return y, (window, h)

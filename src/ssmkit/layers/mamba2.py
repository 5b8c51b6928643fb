"""Mamba-2: the SSD block (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality", §7).

    [z, x, B, C, Δ] = in_proj(u)          x: E = expand·d_model channels in H = E/headdim heads
    x, B, C = silu(causal depthwise conv1d([x, B, C]))
    y = SSD(x, softplus(Δ + dt_bias), A, B, C) + D x      scalar A = -exp(A_log) per head
    out = out_proj(GroupRMSNorm(y · silu(z)))       (norm_before_gate=False, the default)
    out = out_proj(GroupRMSNorm(y) · silu(z))       (norm_before_gate=True)

The gated RMSNorm normalises each group of ``d_inner / ngroups`` channels separately (as the
released models do): ``RMSNorm(v)_i = w_i v_i / sqrt(mean_{j in group(i)} v_j² + eps)``.
``dt_limit = (lo, hi)`` clamps Δ after the softplus (the released configs' ``time_step_limit``).

The SSD scan is computed in chunks of at most ``chunk_size`` steps, evened out over the length
(:func:`ssmkit.ops.ssd.ssd`): masked matrix products inside a chunk, a short recurrence across
chunks. ``A_log`` must be finite (ValueError otherwise), so ``A`` is finite and negative. ``step`` decodes one token in O(1), carrying the conv
window and the (heads, headdim, d_state) state. Padding: right padding only; padded positions
get Δ = 0 and zero conv input, so they leave the state unchanged (left-padded batches are
handled by the model). Half-precision weights: the SSD scan and the state are float32. An input
in another floating dtype than the weights is cast to theirs and the output returned in the
input's dtype (left alone inside autocast; docs/reliability.md).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (check_bool, check_choice, check_dt_range, check_float, check_int, check_mask, check_positive_int,
                       check_sequence_input, check_step_input, match_parameter_dtype)
from ..ops.mamba_fused import mamba2_conv
from ..ops import decode_step
from ..ops.cpu_half import module_linear
from ..ops.gated_norm import native_applies as gated_norm_applies, skip_gated_rms_norm
from ..ops.ssd import ssd
from .base import SequenceLayer, register_layer, set_optim_hints
from .init import MAMBA_INITS, check_pair, log_uniform_dt, mimetic_A_log, tie_rows_
from .mamba_family import CausalConv, InPlaceStep, fused_step, native_layer_call, rows_linear, check_conv_ssm_state, negative_A, padding_lengths, state_dtype

__all__ = ["Mamba2"]


class GroupGatedRMSNorm(nn.Module):
    """Gated RMSNorm over groups of ``group_size`` channels (computed in float32):
    ``norm(y · silu(z))`` or, with ``norm_before_gate``, ``norm(y) · silu(z)``."""

    def __init__(self, d: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if d % group_size:
            raise ValueError(f"group_size must divide {d}, got {group_size}")
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate

    def forward(self, y, z):
        dtype = y.dtype
        ct = state_dtype(torch.promote_types(y.dtype, z.dtype))  # float32 for half precision
        y, g = y.to(ct), F.silu(z.to(ct))
        if not self.norm_before_gate:
            y = y * g
        shape = y.shape
        yg = y.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        y = F.rms_norm(yg, (self.group_size,), None, self.eps).reshape(shape)
        if self.norm_before_gate:
            y = y * g
        return self.weight * y.to(dtype)


@register_layer("mamba2")
class Mamba2(InPlaceStep, SequenceLayer):
    """The Mamba-2 block over (batch, length, d_model).

    ``bias``: biases of ``in_proj`` and ``out_proj``; ``conv_bias``: bias of the conv;
    ``dt_limit``: (min, max) clamp of Δ; ``norm_eps``, ``norm_before_gate``: the gated RMSNorm
    (per group of ``d_inner / ngroups`` channels); ``device``, ``dtype``: factory arguments.

    ``init="mimetic"`` (default ``"default"``) starts the layer close to linear attention
    (Trockman et al. 2024, arXiv 2410.11135; :func:`ssmkit.layers.init.mimetic_A_log`): each
    head's ``|A|`` log-uniform in ``mimetic_A_range`` (default ``[1e-3, 0.05]``) instead of
    ``A_init_range``, so the state barely decays, and the ``in_proj`` rows and conv channels that
    give ``C`` copied from those that give ``B`` (``W_C = W_B``). Everything else is drawn exactly
    as by the default init (the mimetic values are drawn after it)."""

    needs_channel_mixer = False
    #: without a padding mask, run the conv + SiLU of [x, B, C] as one fused operation
    #: (:func:`ssmkit.ops.mamba_fused.mamba2_conv`), and (float32/float64 on CPU, with or without
    #: a mask) the D skip + gated group RMSNorm as one native operation
    #: (:func:`ssmkit.ops.gated_norm.skip_gated_rms_norm`); False uses the separate torch operations
    fused = True

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 64, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_init_range=(1.0, 16.0), bias: bool = False, conv_bias: bool = True,
                 dt_limit=(0.0, float("inf")), norm_eps: float = 1e-5, norm_before_gate: bool = False,
                 init: str = "default", mimetic_A_range=(1e-3, 0.05), device=None, dtype=None):
        super().__init__()
        check_choice("init", init, MAMBA_INITS)
        m_range = check_pair("mimetic_A_range", mimetic_A_range)
        for k, v in dict(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                         ngroups=ngroups, chunk_size=chunk_size).items():
            check_positive_int(k, v)
        check_dt_range(dt_min, dt_max)
        check_float("dt_init_floor", dt_init_floor, low=0.0)
        a_lo, a_hi = check_pair("A_init_range", A_init_range)  # A = -exp(A_log) in -[low, high]
        check_bool("bias", bias)
        check_bool("conv_bias", conv_bias)
        check_bool("norm_before_gate", norm_before_gate)
        check_float("norm_eps", norm_eps, low=0.0, low_open=True)
        if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
            raise ValueError(f"dt_limit must be a (min, max) pair, got {dt_limit!r}")
        lo, hi = (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in dt_limit)
        if not (0.0 <= lo < hi):  # also rejects NaN
            raise ValueError(f"dt_limit must be (min, max) with 0 <= min < max, got {tuple(dt_limit)!r}")
        E = expand * d_model
        if E % headdim:
            raise ValueError(f"headdim must divide expand*d_model={E}, got {headdim}")
        H = E // headdim
        if H % ngroups:
            raise ValueError(f"ngroups must divide the number of heads {H}, got {ngroups}")
        fk = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, E
        self.headdim, self.nheads, self.ngroups, self.chunk_size = headdim, H, ngroups, chunk_size
        self.dt_limit = (lo, hi)
        self.conv_dim = E + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * E + 2 * ngroups * d_state + H, bias=bias, **fk)
        self.conv1d = CausalConv(self.conv_dim, d_conv, bias=conv_bias, **fk)
        to = {k: v for k, v in fk.items() if v is not None}
        dt = torch.exp(log_uniform_dt(H, dt_min, dt_max)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(**to))  # softplus⁻¹(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(a_lo, a_hi)).to(**to))
        self.D = nn.Parameter(torch.ones(H, **fk))
        for p in (self.dt_bias, self.A_log, self.D):
            set_optim_hints(p, weight_decay=0.0)
        self.norm = GroupGatedRMSNorm(E, E // ngroups, eps=norm_eps, norm_before_gate=norm_before_gate, **fk)
        self.out_proj = nn.Linear(E, d_model, bias=bias, **fk)
        self.init = init
        if init == "mimetic":  # drawn after everything else: the other parameters are the default's
            with torch.no_grad():
                self.A_log.copy_(mimetic_A_log((H,), *m_range))
            GN = ngroups * d_state
            # where B starts: in_proj's rows [z, x, B, C, dt] and the conv's channels [x, B, C]
            for t, b0 in ((self.in_proj.weight, 2 * E), (self.in_proj.bias, 2 * E),
                          (self.conv1d.weight, E), (self.conv1d.bias, E)):
                if t is not None:
                    tie_rows_(t, slice(b0, b0 + GN), slice(b0 + GN, b0 + 2 * GN))
        self._A_cache: dict = {}  # A = -exp(A_log) between changes of A_log (decoding)

    def initial_state(self, batch_size: int, device=None, dtype=None):
        """Zeros: the conv window (B, conv_dim, d_conv - 1) in ``dtype`` (default: the weights')
        and the SSM state (B, heads, headdim, d_state), float32 for half-precision weights."""
        check_int("batch_size", batch_size, minimum=0)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return (torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                            dtype=state_dtype(dtype)))

    def _check_state(self, state, batch: int, name: str = "state"):
        check_conv_ssm_state(state, ((batch, self.conv_dim, self.d_conv - 1),
                                     (batch, self.nheads, self.headdim, self.d_state)), name)

    def _split(self, zxbcdt):
        E, GN = self.d_inner, self.ngroups * self.d_state
        return torch.split(zxbcdt, [E, E + 2 * GN, self.nheads], dim=-1)  # z, xBC, dt

    def _heads(self, xBC):
        """conv output (..., conv_dim) -> x (..., H, P), B and C (..., G, N)."""
        E, G, N = self.d_inner, self.ngroups, self.d_state
        x, Bm, Cm = torch.split(xBC, [E, G * N, G * N], dim=-1)
        return (x.reshape(*x.shape[:-1], self.nheads, self.headdim), Bm.reshape(*Bm.shape[:-1], G, N),
                Cm.reshape(*Cm.shape[:-1], G, N))

    def _dt(self, dt, sd):
        """Δ = clamp(softplus(dt + dt_bias), dt_limit), in the state dtype ``sd``."""
        dt = F.softplus(dt.to(sd) + self.dt_bias.to(sd))
        lo, hi = self.dt_limit
        if lo > 0.0 or hi != float("inf"):
            dt = dt.clamp(min=lo, max=hi)
        return dt

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        x_in, x = x, match_parameter_dtype(x, self.in_proj.weight.dtype)  # docs/reliability.md
        b, L, _ = x.shape
        mask = check_mask(mask, x)
        lengths = padding_lengths(mask, L)
        conv0, h0 = (None, None)
        if initial_state is not None:
            self._check_state(initial_state, b, "initial_state")
            conv0, h0 = initial_state
        zxbcdt = module_linear(self.in_proj, x)
        sd = state_dtype(x.dtype) if h0 is None else h0.dtype
        if self.fused and mask is None:
            # conv + SiLU of [x, B, C] as one operation on the projection's layout (no transposes,
            # and its backward writes one gradient buffer instead of concatenating pieces)
            G, N = self.ngroups, self.d_state
            z, xs, Bm, Cm, dt = mamba2_conv(zxbcdt, self.conv1d.weight, self.conv1d.bias,
                                            (self.d_inner, self.d_inner, G * N, self.nheads),
                                            None if conv0 is None else conv0.to(x.dtype))
            xs = xs.view(b, L, self.nheads, self.headdim).to(sd)
            Bm, Cm = Bm.view(b, L, G, N).to(sd), Cm.view(b, L, G, N).to(sd)
            window = self._window(zxbcdt, conv0) if return_state else None
        else:
            z, xBC, dt = self._split(zxbcdt)
            xBC = xBC.transpose(1, 2)  # (b, conv_dim, L)
            if mask is not None:
                xBC = xBC * mask[:, None, :]
            xBC, window = self.conv1d(xBC, conv0, lengths, return_window=True)
            xBC = F.silu(xBC).transpose(1, 2)
            xs, Bm, Cm = (t.to(sd) for t in self._heads(xBC))
        dt = self._dt(dt, sd)  # (b, L, H)
        if mask is not None:
            dt = dt * mask[..., None]
        A = negative_A(self.A_log, self._A_cache).to(sd)
        y, h = ssd(xs, dt, A, Bm, Cm, initial_state=h0, chunk_size=self.chunk_size)
        nm = self.norm
        if self.fused and gated_norm_applies(y, xs, self.D, z, nm.weight):
            # D skip + gated group RMSNorm as one native operation (ssmkit.ops.gated_norm)
            yn = skip_gated_rms_norm(y, xs, self.D, z, nm.weight, nm.group_size, nm.eps, nm.norm_before_gate)
        else:
            y = y + self.D.to(sd)[:, None] * xs
            yn = nm(y.reshape(b, L, self.d_inner), z)
        out = module_linear(self.out_proj, yn.to(x.dtype))
        if x is not x_in:  # returned in the input's dtype
            out = out.to(x_in.dtype)
        if mask is not None:
            out = out * mask[..., None]
        if not return_state:
            return out
        return out, (window, h)

    def _window(self, zxbcdt, conv0):
        """The last ``d_conv - 1`` conv inputs [x, B, C] of an unpadded batch, (b, conv_dim, K-1)."""
        K1, E = self.d_conv - 1, self.d_inner
        L = zxbcdt.shape[1]
        tail = zxbcdt[:, max(0, L - K1):, E:E + self.conv_dim].transpose(1, 2)
        if L < K1:
            prev = conv0.to(zxbcdt.dtype) if conv0 is not None else zxbcdt.new_zeros(zxbcdt.shape[0], self.conv_dim, K1)
            tail = torch.cat([prev, tail], dim=-1)[..., -K1:]
        return tail

    def _step_options(self) -> dict:
        return dict(headdim=self.headdim, ngroups=self.ngroups, d_state=self.d_state, dt_limit=self.dt_limit,
                    eps=self.norm.eps, norm_before_gate=self.norm.norm_before_gate)

    def _step_params(self):
        """The step's parameters besides the projections, in the kernels' order (A = -exp(A_log))."""
        c = self.conv1d
        return (c.weight, c.bias, self.dt_bias, negative_A(self.A_log, self._A_cache), self.D, self.norm.weight)

    def native_layer_call(self):
        """This layer's decoding step as one native call (:func:`~ssmkit.layers.mamba_family.native_layer_call`),
        or None when its parameters do not allow it."""
        ip, op = self.in_proj, self.out_proj
        return native_layer_call(decode_step.mamba2_layer_step, (ip.weight, ip.bias, op.weight, op.bias),
                                 self._step_params(), self._A_cache, **self._step_options())

    def _composed_step(self, x_t, state, out_state):
        small = self._step_params()
        kw = self._step_options()
        x_in, x_t = x_t, match_parameter_dtype(x_t, self.in_proj.weight.dtype)
        conv_state, h = state
        zxbcdt = rows_linear(self.in_proj, x_t)
        fused = fused_step(decode_step.mamba2_step, zxbcdt, state, out_state, small, self._A_cache, **kw)
        if fused is not None:
            y, new = fused
            y = y.to(x_t.dtype)
        else:
            y, new = self._torch_step_core(zxbcdt, conv_state, h, negative_A(self.A_log, self._A_cache),
                                           x_t.dtype)
            if out_state is not None:
                out_state[0].copy_(new[0])
                out_state[1].copy_(new[1])
                new = out_state
        out = rows_linear(self.out_proj, y)
        return (out if x_t is x_in else out.to(x_in.dtype)), new

    def torch_step(self, x_t: torch.Tensor, state):
        """``step`` computed with torch operations only (the reference of the native path)."""
        check_step_input(x_t, self.d_model)
        self._check_state(state, x_t.shape[0])
        x_in, x_t = x_t, match_parameter_dtype(x_t, self.in_proj.weight.dtype)
        y, new = self._torch_step_core(rows_linear(self.in_proj, x_t), state[0], state[1],
                                       negative_A(self.A_log, self._A_cache), x_t.dtype)
        out = rows_linear(self.out_proj, y)
        return (out if x_t is x_in else out.to(x_in.dtype)), new

    def _torch_step_core(self, zxbcdt, conv_state, h, A, dtype):
        """From the in_proj output: normed, gated y (B, E) in ``dtype`` and the new state."""
        sd = h.dtype
        z, xBC, dt = self._split(zxbcdt)
        xBC, window = self.conv1d.step(xBC, conv_state)
        xs, Bm, Cm = (t.to(sd) for t in self._heads(F.silu(xBC)))  # (b, H, P), (b, G, N)
        b, G, N = Bm.shape
        R = self.nheads // G
        dt = self._dt(dt, sd)  # (b, H)
        A = A.to(sd)
        # h = exp(Δ A) h + (Δ x) Bᵀ per head; heads of one group share B and C
        hg = h.reshape(b, G, R * self.headdim, N)
        dx = (dt[..., None] * xs).reshape(b, G, R * self.headdim, 1)
        dA = torch.exp(dt * A).view(b, G, R, 1, 1).expand(b, G, R, self.headdim, 1).reshape(b, G, R * self.headdim, 1)
        hg = torch.addcmul(dA * hg, dx, Bm.unsqueeze(2))
        y = torch.addcmul(torch.matmul(hg, Cm.unsqueeze(-1)).view(b, self.nheads, self.headdim), self.D.to(sd)[:, None], xs)
        y = self.norm(y.reshape(b, self.d_inner), z).to(dtype)
        return y, (window, hg.view(b, self.nheads, self.headdim, N))

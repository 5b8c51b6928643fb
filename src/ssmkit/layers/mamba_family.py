"""Helpers shared by the Mamba family (Mamba, Mamba-2): the short causal depthwise convolution
with its carried window (:class:`CausalConv`), the (conv_state, ssm_state) check, ``A =
-exp(A_log)`` and the state dtype used for half-precision weights."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .._checks import check_finite, check_step_input, match_parameter_dtype, right_padding_lengths, value_checks_enabled
from ..ops import decode_step
from ..ops.decode_step import rows_matmul
from ..ops.cpu_half import depthwise_conv1d

__all__ = ["rows_linear", "native_layer_call", "run_native_call", "fused_step", "cached_float_copies", "CausalConv", "causal_conv_window", "check_conv_ssm_state", "negative_A", "padding_lengths", "state_dtype"]


def rows_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for one token per sequence (x: (rows, in)), at the memory bandwidth.

    A decoding step multiplies a few rows by each weight, so its speed is the rate at which the
    weight is read. On the CPU, for 1 to 8 rows of bfloat16 or float32 weights the native kernel
    :func:`ssmkit.ops.decode_step.rows_matmul` reads each weight row once for all rows,
    accumulating in float32 (BLAS repacks the weight for such small products, runs bfloat16
    products several times slower on CPUs without bfloat16 arithmetic, and its matrix-vector
    product read a (50280, 768) float32 head at 12 GB/s where this kernel read 26-28 GB/s).
    Otherwise, for 9 to 32 rows of float32 and 2 to 32 of float64, ``(W xᵀ)ᵀ``, which CPU BLAS
    computes without repacking the weight; else the module itself (which may widen half-precision
    weights)."""
    w = linear.weight
    if x.dim() == 2 and x.dtype == w.dtype:
        b = x.shape[0]
        if 1 <= b <= 8 and w.dtype in (torch.float32, torch.bfloat16):
            y = rows_matmul(x, w, linear.bias)
            if y is not None:
                return y
        if 1 < b <= 32 and w.dtype not in (torch.bfloat16, torch.float16):  # half: the module decides
            y = (w @ x.T).T
            return y if linear.bias is None else y + linear.bias
    return linear(x)


def cached_float_copies(cache: dict, params):
    """float32 copies of (half-precision) parameters, kept in ``cache`` until one of them changes
    (in place, replaced, or in dtype)."""
    key = tuple(None if p is None else (p._version, p.data_ptr(), p.dtype) for p in params)
    hit = cache.get("f32")
    if hit is not None and hit[0] == key:
        return hit[1]
    out = tuple(None if p is None else p.detach().float().contiguous() for p in params)
    cache["f32"] = (key, out)
    return out


def fused_step(kernel, proj: torch.Tensor, state, out_state, params, cache: dict, **kw):
    """Run a fused native decoding step (:mod:`ssmkit.ops.decode_step`) on the in_proj output
    ``proj`` if it applies, else return None (the caller runs its torch step).

    The kernel runs in the state's dtype. Half-precision weights with a float32 state (the
    released models in bfloat16) run it in float32: ``proj`` and the window are widened, the
    small parameters ``params`` are widened once and cached in ``cache`` (until they change),
    the new window is stored back in its own dtype. Returns ``(y, (window, h))``, y in the
    state's dtype; with ``out_state`` the new state is written into those tensors."""
    conv_state, h = state
    sd = h.dtype
    if proj.dtype != sd:
        if (sd != torch.float32 or proj.dtype not in (torch.bfloat16, torch.float16) or torch.is_grad_enabled()
                or not decode_step.applies(h)):
            return None
        params = cached_float_copies(cache, params)
        proj = proj.float()
    win = conv_state if conv_state.dtype == sd else conv_state.to(sd)
    if not (params[0].dtype == sd and decode_step.params_apply(cache, params)
            and decode_step.applies(win, h, strided=proj)):
        return None
    if out_state is None:
        y, (w_new, h_new) = kernel(proj, (win, h), *params, **kw)
        return y, (w_new if w_new.dtype == conv_state.dtype else w_new.to(conv_state.dtype), h_new)
    w_out = out_state[0] if out_state[0].dtype == sd and out_state[0].is_contiguous() else torch.empty_like(win)
    y, _ = kernel(proj, (win, h), *params, out_state=(w_out, out_state[1]), **kw)
    if w_out is not out_state[0]:
        out_state[0].copy_(w_out)
    return y, out_state


def native_layer_call(layer_step, weights, small, cache: dict, **options):
    """The layer's decoding step as one native call, for its current parameters: ``(layer_step,
    params, options, bf16)`` to run with :func:`run_native_call`, or None when the parameters
    do not allow it (in autograd, not on the CPU, other dtypes). ``layer_step`` is
    :func:`ssmkit.ops.decode_step.mamba_layer_step` or ``mamba2_layer_step``, ``weights`` the
    in_proj / out_proj weights and biases, ``small`` the other parameters in the kernel's order.
    bfloat16 projections (the released models): the small parameters as cached float32 copies;
    the kernel rounds to bfloat16 where the layer's composed bfloat16 step rounds (the
    projections' inputs and outputs), so the two agree. float32: every parameter as it is.
    Whether they apply is remembered in ``cache`` until a parameter is replaced (its storage)."""
    if torch.is_grad_enabled():
        return None
    dtype = weights[0].dtype
    if dtype == torch.bfloat16:
        small = cached_float_copies(cache, small)
        key = tuple(None if t is None else t.data_ptr() for t in (*weights, *small))
        hit = cache.get("bf16_layer")
        if hit is None or hit[0] != key:
            hit = (key, decode_step.applies_bf16_layer(None, None, None, weights, small))
            cache["bf16_layer"] = hit
        return (layer_step, (*weights, *small), options, True) if hit[1] else None
    if dtype == torch.float32:
        params = (*weights, *small)
        return (layer_step, params, options, False) if decode_step.params_apply(cache, params, "layer") else None
    return None


def run_native_call(call, x_in: torch.Tensor, state, out_state):
    """Run a :func:`native_layer_call` on ``x_in`` (b, d_model) and ``state`` (written into
    ``out_state`` when given): ``(out, new_state)`` with ``out`` in ``x_in``'s dtype, or None
    when the input or the state do not suit the kernel (the caller runs its composed step). The
    state's SSM part is float32; the window is bfloat16 with bfloat16 projections."""
    layer_step, params, options, bf16 = call
    conv_state, h = state
    if bf16:
        x = x_in if x_in.dtype == torch.float32 else x_in.float()
        if not (decode_step.applies_bf16_layer(x, conv_state, h, (), ())
                and all(o.is_contiguous() and o.dtype == s.dtype for o, s in zip(out_state or (), state))):
            return None
    else:
        x = match_parameter_dtype(x_in, torch.float32)
        if not (x.dtype == torch.float32 and h.dtype == torch.float32 and decode_step.applies(x, conv_state, h)):
            return None
    out, new = layer_step(x, state, *params, out_state=out_state, **options)
    return (out if x_in.dtype == torch.float32 else out.to(x_in.dtype)), new


class InPlaceStep:
    """``step`` and ``step_`` of the Mamba-family layers. A layer provides ``native_layer_call()``
    (its whole step as one native call, or None) and ``_composed_step(x_t, state, out_state)``.

    On the CPU outside autograd (float32, or bfloat16 projections) a layer's step runs as one
    native call (:mod:`ssmkit.ops.decode_step`); otherwise its composed step, whose reference is
    its ``torch_step``."""

    def _step(self, x_t, state, out_state):
        call = self.native_layer_call()
        if call is not None:  # the whole layer in one native call
            done = run_native_call(call, x_t, state, out_state)
            if done is not None:
                return done
        return self._composed_step(x_t, state, out_state)

    def step(self, x_t: torch.Tensor, state):
        """One token: ``x_t`` (B, d_model) -> ``(y_t, (conv_state, ssm_state))``, O(1) per token."""
        check_step_input(x_t, self.d_model)
        self._check_state(state, x_t.shape[0])
        return self._step(x_t, state, None)

    def step_(self, x_t: torch.Tensor, state, check: bool = True) -> torch.Tensor:
        """``step`` writing the new state into ``state``'s own tensors (in place) and returning
        ``y_t`` only: a decoding loop that owns its states allocates no state per token.
        ``check=False`` skips the checks of ``x_t`` and ``state``, for a loop that made the state
        (``initial_state`` or ``forward``) and checked its input once."""
        if check:
            check_step_input(x_t, self.d_model)
            self._check_state(state, x_t.shape[0])
        return self._step(x_t, state, state)[0]


def padding_lengths(mask: Optional[torch.Tensor], L: int) -> Optional[torch.Tensor]:
    """Per-sequence lengths of a right-padding mask (None for no mask). The pattern is checked
    (a host-device synchronisation) only outside ``trusted_inputs``: a model checks it once."""
    if mask is None:
        return None
    if value_checks_enabled():
        return right_padding_lengths(mask, L)
    return mask.sum(1)


def causal_conv_window(xpad: torch.Tensor, lengths: Optional[torch.Tensor], width: int) -> torch.Tensor:
    """The last ``width - 1`` conv inputs of each sequence, the conv part of a recurrent state.

    ``xpad`` (B, C, width-1+L) is the input with the previous window prepended; with ``lengths``
    the window ends at each sequence's last real token.
    """
    K1 = width - 1
    if lengths is None:
        return xpad[:, :, xpad.shape[-1] - K1:]
    idx = lengths[:, None] + torch.arange(K1, device=xpad.device)[None, :]  # (B, K-1)
    return torch.gather(xpad, 2, idx[:, None, :].expand(xpad.shape[0], xpad.shape[1], K1))


class CausalConv(nn.Conv1d):
    """Causal depthwise convolution of width ``K`` over (batch, channels, length), carrying the
    last ``K - 1`` inputs as a window so that a sequence can be processed in pieces or one token
    at a time (Mamba §3.4; the same module in Mamba and Mamba-2):

        y_t = bias + Σ_{k=0}^{K-1} w_k · x_{t-K+1+k}        (x_{<0} from the carried window)

    The parameters are those of ``nn.Conv1d(C, C, K, groups=C)`` (``weight`` (C, 1, K),
    ``bias`` (C,)), so checkpoints name them as the usual depthwise conv does.
    """

    def __init__(self, channels: int, width: int, bias: bool = True, device=None, dtype=None):
        super().__init__(channels, channels, width, groups=channels, bias=bias, device=device, dtype=dtype)
        self.channels, self.width = channels, width

    def forward(self, x: torch.Tensor, window: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None,
                return_window: bool = False):
        """``x`` (B, C, L), ``window`` (B, C, K-1) or None (zeros) -> ``y`` (B, C, L) [, new window].

        With ``lengths`` (right padding), the new window ends at each sequence's last real input."""
        K = self.width
        if window is None:
            window = x.new_zeros(x.shape[0], self.channels, K - 1)
        xpad = torch.cat([window.to(x.dtype), x], dim=-1)  # (B, C, K-1+L)
        y = depthwise_conv1d(xpad, self.weight, self.bias)  # half precision on the CPU: in float32
        if not return_window:
            return y
        return y, causal_conv_window(xpad, lengths, K)

    def step(self, x_t: torch.Tensor, window: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One input ``x_t`` (B, C) with the window (B, C, K-1) -> ``y_t`` (B, C), new window."""
        full = torch.cat([window.to(x_t.dtype), x_t.unsqueeze(-1)], dim=-1)  # (B, C, K)
        y = (full * self.weight.view(self.channels, self.width)).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return y, full[..., 1:]


def check_conv_ssm_state(state, shapes: Sequence[Tuple[int, ...]], name: str = "state") -> None:
    """Validate a ``(conv_state, ssm_state)`` pair (Mamba, Mamba-2): a pair of floating tensors of
    the given shapes, finite (the value check is skipped inside ``trusted_inputs``)."""
    if (not isinstance(state, (tuple, list)) or len(state) != 2
            or any(not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(r) for s, r in zip(state, shapes))):
        raise ValueError(f"{name} must be a (conv_state, ssm_state) pair of shapes {tuple(shapes[0])}, {tuple(shapes[1])}")
    for s in state:
        if not s.is_floating_point():
            raise TypeError(f"{name} must hold floating-point tensors, got {s.dtype}")
        check_finite(name, s)


def negative_A(A_log: torch.Tensor, cache: Optional[dict] = None) -> torch.Tensor:
    """``A = -exp(A_log)``, checked finite and < 0 (a NaN or ±inf ``A_log`` is an error; the
    check is skipped inside ``trusted_inputs``). Computed in float32 at least.

    With ``cache`` (a dict owned by the layer), outside autograd, the result is kept and reused
    until ``A_log`` changes (its version counter, storage or dtype): one exp per layer per
    decoding run instead of one per token."""
    key = None
    if cache is not None and not (torch.is_grad_enabled() and A_log.requires_grad):
        key = (A_log._version, A_log.data_ptr(), A_log.dtype, A_log.device)
        hit = cache.get("A")
        if hit is not None and hit[0] == key:
            return hit[1]
    A = -torch.exp(A_log.float() if A_log.dtype in (torch.float16, torch.bfloat16) else A_log)
    if value_checks_enabled() and not bool((torch.isfinite(A) & (A < 0)).all()):
        raise ValueError("A_log must be finite and give A = -exp(A_log) < 0 (finite, nonzero)")
    if key is not None:
        cache["A"] = (key, A)
    return A


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the recurrent SSM state for weights of ``dtype``: float32 for half
    precision (the state accumulates in float32), the weights' dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

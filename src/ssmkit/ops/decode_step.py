"""Fused single-token decoding steps of the Mamba and Mamba-2 layers (CPU, native kernel).

One decoding step of a Mamba layer is, between its two large projections, some thirty small
tensor operations per token (conv step, x_proj, dt_proj, softplus, state update, readout, D
skip, gate); at small widths their per-call overhead, not arithmetic, sets the decoding speed,
and at batch > 1 every intermediate (batch, channels, state) tensor is written and read again.
:func:`mamba_step` and :func:`mamba2_step` do all of it in one call of the native kernel
(``ssmkit.ops._native``, source ``decode_step.c``, where the formulas are written out), reading
and writing the recurrent state once. They compute the same quantities as the layers' torch
steps (:meth:`ssmkit.layers.Mamba.step`, :meth:`ssmkit.layers.Mamba2.step`), which stay the
reference and the fallback; the tests check that both agree.

``applies(...)`` says whether the native kernel can run the given tensors: CPU, one dtype
(float32 or float64) for every operand, contiguous, no autograd, library built. With
``out_state`` the new state is written into the given tensors, which may be the input state
itself (in place: nothing is allocated per token).
"""
from __future__ import annotations

import ctypes
import math
from typing import Optional, Sequence, Tuple

import torch

from . import _native

__all__ = ["StackStep", "add_rms_norm", "applies", "applies_bf16_layer", "params_apply", "mamba_layer_step", "mamba2_layer_step", "mamba_step", "mamba2_step", "rows_matmul"]


def params_apply(cache: dict, params, slot: str = "applies") -> bool:
    """:func:`applies` for a layer's parameters, remembered in ``cache[slot]`` outside autograd
    until one of them is replaced or moved (their storages, which change with dtype or device)."""
    if torch.is_grad_enabled():
        return applies(*params)
    key = tuple(None if p is None else p.data_ptr() for p in params)
    hit = cache.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    ok = applies(*params)
    cache[slot] = (key, ok)
    return ok


def applies(*tensors: Optional[torch.Tensor], strided: Optional[torch.Tensor] = None) -> bool:
    """True if the native decode kernel can run on these operands (None entries are skipped):
    CPU, one dtype (float32 or float64), contiguous (``strided``, the projection output, may have
    any strides), outside autograd, native library available."""
    ts = [t for t in tensors if t is not None]
    dtype = ts[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    grad = torch.is_grad_enabled()
    if strided is not None:
        if strided.dtype != dtype or strided.device.type != "cpu" or strided.dim() != 2 or (grad and strided.requires_grad):
            return False
    for t in ts:
        if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous() or (grad and t.requires_grad):
            return False
    return _native.available()


def _out(state: Sequence[torch.Tensor], out_state) -> Tuple[torch.Tensor, torch.Tensor]:
    if out_state is not None:
        return out_state[0], out_state[1]
    return torch.empty_like(state[0]), torch.empty_like(state[1])


def mamba_step(xz: torch.Tensor, state, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
               x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor, dt_proj_bias: Optional[torch.Tensor],
               A: torch.Tensor, D: torch.Tensor, out_state=None):
    """Mamba's step from the in_proj output ``xz`` (b, 2E, any strides) and ``state`` = (window (b, E, K-1),
    h (b, E, N)) -> ``y`` (b, E) (gated, before out_proj) and the new state. The operands must
    satisfy :func:`applies`; nothing is checked here (the layer did)."""
    win, h = state
    b, E2 = xz.shape
    E, N, K = E2 // 2, A.shape[1], conv_weight.shape[-1]
    R = dt_proj_weight.shape[1]
    win_out, h_out = _out(state, out_state)
    y = xz.new_empty(b, E)
    lib = _native._lib  # loaded: the caller checked applies()
    fn = lib.mamba_step_f32 if xz.dtype == torch.float32 else lib.mamba_step_f64
    if fn(xz.data_ptr(), xz.stride(0), xz.stride(1), win.data_ptr(), win_out.data_ptr(), conv_weight.data_ptr(), _native.ptr(conv_bias),
          x_proj_weight.data_ptr(), dt_proj_weight.data_ptr(), _native.ptr(dt_proj_bias), A.data_ptr(), D.data_ptr(),
          h.data_ptr(), h_out.data_ptr(), y.data_ptr(), b, E, K, R, N):
        raise MemoryError("mamba_step: the native kernel could not allocate its scratch buffer")
    return y, (win_out, h_out)


def mamba2_step(zxbcdt: torch.Tensor, state, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
                dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor, norm_weight: torch.Tensor, *,
                headdim: int, ngroups: int, d_state: int, dt_limit=(0.0, math.inf), eps: float = 1e-5,
                norm_before_gate: bool = False, out_state=None):
    """Mamba-2's step from the in_proj output ``zxbcdt`` (b, 2E + 2GN + H, any strides) and ``state`` =
    (window (b, E + 2GN, K-1), h (b, H, P, N)) -> ``y`` (b, E) (after the gated group RMSNorm,
    before out_proj) and the new state. Operands must satisfy :func:`applies`."""
    win, h = state
    b = zxbcdt.shape[0]
    H = A.shape[0]
    K = conv_weight.shape[-1]
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    hi = min(hi, 1e30)  # the kernel is compiled without infinities (fast-math): an open limit is huge
    win_out, h_out = _out(state, out_state)
    y = zxbcdt.new_empty(b, H * headdim)
    lib = _native._lib  # loaded: the caller checked applies()
    fn = lib.mamba2_step_f32 if zxbcdt.dtype == torch.float32 else lib.mamba2_step_f64
    if fn(zxbcdt.data_ptr(), zxbcdt.stride(0), zxbcdt.stride(1), win.data_ptr(), win_out.data_ptr(), conv_weight.data_ptr(), _native.ptr(conv_bias),
          dt_bias.data_ptr(), A.data_ptr(), D.data_ptr(), norm_weight.data_ptr(), h.data_ptr(), h_out.data_ptr(),
          y.data_ptr(), b, H, headdim, ngroups, d_state, K, lo, hi, float(eps), int(bool(norm_before_gate))):
        raise MemoryError("mamba2_step: the native kernel could not allocate its scratch buffer")
    return y, (win_out, h_out)


_ROWS_FN = {torch.float32: "rows_matmul_f32", torch.bfloat16: "rows_matmul_bf16"}


def rows_matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``x Wᵀ + bias`` for a few rows ``x`` (b, K) by the native kernel, which reads every row of
    the weight (M, K) once for all rows of x (float32 or bfloat16, accumulated in float32), several
    distant weight rows at a time (concurrent memory streams, which one core reads faster than one:
    four for one or two rows of x, two for three or more rows of length K <= 1024, which then go
    in one pass).
    Each output is the same sum whatever the thread count or b. None when the kernel does not
    apply (then the caller uses torch)."""
    name = _ROWS_FN.get(weight.dtype)
    if (name is None or x.dtype != weight.dtype or x.device.type != "cpu" or weight.device.type != "cpu"
            or (bias is not None and (bias.dtype != weight.dtype or not bias.is_contiguous()))
            or not weight.is_contiguous() or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
        return None
    lib = _native.library()
    if lib is None:
        return None
    x = x.contiguous()
    b, K = x.shape
    M = weight.shape[0]
    y = x.new_empty(b, M)
    if getattr(lib, name)(x.data_ptr(), weight.data_ptr(), _native.ptr(bias), y.data_ptr(), b, M, K, torch.get_num_threads()):
        raise MemoryError("rows_matmul: the native kernel could not allocate its buffer")
    return y


def add_rms_norm(h: Optional[torch.Tensor], r: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The residual stream between two pre-norm blocks in one call: ``r += h`` in place (when
    ``h`` is given), then ``weight ⊙ r / sqrt(mean(r²) + eps)`` over the last dimension (RMSNorm),
    returned as a new tensor. float32, contiguous (b, d) operands on the CPU, outside autograd;
    the caller checks that (:func:`applies`)."""
    out = torch.empty_like(r)
    _native._lib.add_rms_norm_f32(_native.ptr(h), r.data_ptr(), weight.data_ptr(), out.data_ptr(), r.shape[0],
                                       r.shape[1], float(eps))
    return out


def applies_bf16_layer(x: torch.Tensor, win: torch.Tensor, h: torch.Tensor, weights, params) -> bool:
    """True if a layer step with bfloat16 projections (``mamba_layer_step`` / ``mamba2_layer_step``
    given bfloat16 ``weights``) can run: outside autograd on the CPU, ``x``, ``h`` and the small
    ``params`` contiguous float32, the projection ``weights`` (None entries skipped) and the window
    ``win`` contiguous bfloat16, native library available."""
    if torch.is_grad_enabled():
        return False
    for t, dtype in ((win, torch.bfloat16), *((w, torch.bfloat16) for w in weights), (x, torch.float32),
                     (h, torch.float32), *((p, torch.float32) for p in params)):
        if t is not None and (t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous()):
            return False
    return _native.available()


def mamba_layer_step(x: torch.Tensor, state, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                     conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A, D, out_state=None):
    """A whole Mamba layer's step in one native call: ``x`` (b, d_model) ->
    ``out_proj(mamba_step(in_proj(x)))`` (b, d_model) and the new state, the projections by the
    few-row kernel of :func:`rows_matmul`. float32 operands (:func:`applies`), or bfloat16
    projection weights and conv window with everything else float32 (:func:`applies_bf16_layer`;
    the projections' inputs and outputs rounded to bfloat16 as a bfloat16 layer rounds them, the
    rest computed in float32, ``x`` and the output float32)."""
    win, h = state
    b, Dm = x.shape
    E, N, K = A.shape[0], A.shape[1], conv_weight.shape[-1]
    win_out, h_out = _out(state, out_state)
    out = x.new_empty(b, Dm)
    fn = _native._lib.mamba_layer_step_bf16 if in_proj_weight.dtype == torch.bfloat16 else _native._lib.mamba_layer_step_f32
    if fn(
            x.data_ptr(), in_proj_weight.data_ptr(), _native.ptr(in_proj_bias), out_proj_weight.data_ptr(),
            _native.ptr(out_proj_bias), out.data_ptr(), win.data_ptr(), win_out.data_ptr(), conv_weight.data_ptr(),
            _native.ptr(conv_bias), x_proj_weight.data_ptr(), dt_proj_weight.data_ptr(), _native.ptr(dt_proj_bias), A.data_ptr(),
            D.data_ptr(), h.data_ptr(), h_out.data_ptr(), b, Dm, E, K, dt_proj_weight.shape[1], N,
            torch.get_num_threads()):
        raise MemoryError("mamba_layer_step: the native kernel could not allocate its buffers")
    return out, (win_out, h_out)


def mamba2_layer_step(x: torch.Tensor, state, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                      conv_weight, conv_bias, dt_bias, A, D, norm_weight, *, headdim: int, ngroups: int, d_state: int,
                      dt_limit=(0.0, math.inf), eps: float = 1e-5, norm_before_gate: bool = False, out_state=None):
    """A whole Mamba-2 layer's step in one native call, as :func:`mamba_layer_step` (float32, or
    bfloat16 projection weights and window)."""
    win, h = state
    b, Dm = x.shape
    H, K = A.shape[0], conv_weight.shape[-1]
    win_out, h_out = _out(state, out_state)
    out = x.new_empty(b, Dm)
    fn = _native._lib.mamba2_layer_step_bf16 if in_proj_weight.dtype == torch.bfloat16 else _native._lib.mamba2_layer_step_f32
    if fn(
            x.data_ptr(), in_proj_weight.data_ptr(), _native.ptr(in_proj_bias), out_proj_weight.data_ptr(),
            _native.ptr(out_proj_bias), out.data_ptr(), win.data_ptr(), win_out.data_ptr(), conv_weight.data_ptr(),
            _native.ptr(conv_bias), dt_bias.data_ptr(), A.data_ptr(), D.data_ptr(), norm_weight.data_ptr(), h.data_ptr(),
            h_out.data_ptr(), b, Dm, H, headdim, ngroups, d_state, K, float(dt_limit[0]), min(float(dt_limit[1]), 1e30),
            float(eps), int(bool(norm_before_gate)), torch.get_num_threads()):
        raise MemoryError("mamba2_layer_step: the native kernel could not allocate its buffers")
    return out, (win_out, h_out)


class StackStep:
    """A stack of pre-norm RMSNorm blocks around Mamba (or Mamba-2) layers, decoded in ONE native
    call per token (``mamba_stack_step`` / ``mamba2_stack_step`` in decode_step.c): the residual
    stream ``r`` (b, d_model) float32, ``x = RMSNorm_0(r)``, then per layer ``r += layer(x)``,
    ``x = RMSNorm_next(r)``; returns the last ``x`` (after the stack's final norm).

    These are the native calls the per-layer path makes (:func:`mamba_layer_step` or
    :func:`mamba2_layer_step` per layer, :func:`add_rms_norm` between them), in the same order,
    so the numbers are the same; what goes is the Python work around each layer (attribute
    look-ups, caches, checks, argument conversion), several percent of a token at the 130m
    shapes. The pointers are taken once: the caller keeps the operands alive and unchanged
    (the model rebuilds the plan when a parameter changes).

    ``calls``: each layer's ``native_layer_call()`` (same kernel, options, bfloat16-ness and
    shapes for all); ``norms``: the nl + 1 float32 RMSNorm weights (contiguous, d_model);
    ``eps``: their epsilons. Raises ValueError when the layers differ."""

    def __init__(self, calls, norms: Sequence[torch.Tensor], eps: Sequence[float]):
        if not calls:
            raise ValueError("StackStep: no layers")
        fn, params0, options, bf16 = calls[0]
        n = len(calls)
        shapes0 = [None if t is None else tuple(t.shape) for t in params0]
        for fn_l, params, opts, bf in calls:
            if fn_l is not fn or opts != options or bf != bf16 or \
                    [None if t is None else tuple(t.shape) for t in params] != shapes0:
                raise ValueError("StackStep: every layer must have the same kernel, options and shapes")
        if len(norms) != n + 1 or len(eps) != n + 1:
            raise ValueError(f"StackStep: {n} layers need {n + 1} norms and epsilons")
        d_model = params0[0].shape[1]
        for w in norms:
            if w.dtype != torch.float32 or not w.is_contiguous() or w.shape != (d_model,) or w.device.type != "cpu":
                raise ValueError(f"StackStep: the norm weights must be contiguous float32 ({d_model},) on the CPU")
        self.mamba2, self.bf16, self.n, self.d_model = fn is mamba2_layer_step, bf16, n, d_model
        self.options = options
        self._keep = ([c[1] for c in calls], list(norms))  # the operands stay alive with the plan
        per = 12 if self.mamba2 else 13
        self._per = per
        self._table = (ctypes.c_void_p * (per * n))()
        for l, (_, params, _, _) in enumerate(calls):
            row = [_native.ptr(t) for t in params]
            for i, v in enumerate(row[:4] + [None] + row[4:] + [None]):
                self._table[l * per + i] = v
        self._norms = (ctypes.c_void_p * (n + 1))(*[w.data_ptr() for w in norms])
        self._eps = (ctypes.c_double * (n + 1))(*[float(e) for e in eps])
        if self.mamba2:
            A, conv_w = params0[7], params0[4]
            H, P, G, N = A.shape[0], options["headdim"], options["ngroups"], options["d_state"]
            E = H * P
            self._win, self._h = E + 2 * G * N, E * N
            lo, hi = options["dt_limit"]
            self._dims = (d_model, H, P, G, N, conv_w.shape[-1])
            self._tail = (float(lo), min(float(hi), 1e30), float(options["eps"]), int(bool(options["norm_before_gate"])))
        else:
            A, conv_w, dt_w = params0[9], params0[4], params0[7]
            E, N = A.shape
            self._win, self._h = E, E * N
            self._dims = (d_model, E, conv_w.shape[-1], dt_w.shape[1], N)
            self._tail = ()
        self._K1 = conv_w.shape[-1] - 1
        self._tables = {}

    def _table_for(self, states, b: int):
        """The pointer table with the states' tensors filled in, or None when they do not fit the
        layers (dtype, size, layout). One table per set of states (the parameters' part shared),
        so two threads decoding different states never see each other's pointers."""
        key = (b,) + tuple(t.data_ptr() for s in states for t in s)
        table = self._tables.get(key)
        if table is not None:
            return table
        if len(states) != self.n:
            return None
        win_dtype = torch.bfloat16 if self.bf16 else torch.float32
        table = (ctypes.c_void_p * len(self._table)).from_buffer_copy(self._table)
        for l, state in enumerate(states):
            if len(state) != 2:
                return None
            win, h = state
            if (win.dtype != win_dtype or h.dtype != torch.float32 or not win.is_contiguous() or not h.is_contiguous()
                    or win.numel() != b * self._win * self._K1 or h.numel() != b * self._h
                    or win.device.type != "cpu" or h.device.type != "cpu"):
                return None
            table[l * self._per + 4] = win.data_ptr()
            table[l * self._per + self._per - 1] = h.data_ptr()
        if len(self._tables) >= 8:  # a few sets of states at a time (a loop reuses its own)
            self._tables.clear()
        self._tables[key] = table
        return table

    def __call__(self, r: torch.Tensor, states) -> Optional[torch.Tensor]:
        """One token: ``r`` (b, d_model) contiguous float32, the embedded tokens (updated in place
        to the residual stream after the last layer); ``states``: per layer (window, h), updated
        in place. Returns the final normed features (b, d_model) float32, or None (nothing done)
        when ``r`` or the states do not fit the layers."""
        if r.dtype != torch.float32 or r.dim() != 2 or r.shape[1] != self.d_model or not r.is_contiguous():
            return None
        b = r.shape[0]
        table = self._table_for(states, b)
        if table is None:
            return None
        out = torch.empty_like(r)
        lib = _native._lib
        fn = lib.mamba2_stack_step if self.mamba2 else lib.mamba_stack_step
        if fn(int(self.bf16), self.n, table, self._norms, self._eps, r.data_ptr(), out.data_ptr(), b,
              *self._dims, *self._tail, torch.get_num_threads()):
            raise MemoryError("StackStep: the native kernel could not allocate its buffers")
        return out

"""The backbone shared by every model: input encoder -> n_layers x block -> final norm.

A block is residual around one sequence layer. Pre-norm (the default):
``x + dropout(mixer(layer(norm(x))))``; post-norm (``prenorm=False``, the original S4 block):
``norm(x + dropout(mixer(layer(x))))``. Channel-independent LTI layers
(``needs_channel_mixer``) are followed by the S4 papers' position-wise mixer (GELU, then a linear
map to 2H and a GLU); block layers (Mamba, Mamba-2, S5) mix channels themselves. Swapping the
layer by name changes nothing else.

Options that express the released Mamba / Mamba-2 language models exactly: ``norm="rms"`` (no
bias, computed in float32), ``norm_eps``, ``residual_in_fp32`` (the residual stream is kept in
float32 whatever the weights' dtype) and ``pad_vocab_size_multiple`` (the embedding has
``vocab_size`` rounded up to a multiple of it).

Padding masks may be right padding (real tokens first) or left padding (pad tokens first, as
batched generation uses): a left-padded batch is rotated so that each sequence's real tokens
come first, run, and rotated back, so leading pad tokens never touch the state.
"""
from __future__ import annotations

import inspect
import weakref
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (check_bool, check_choice, check_finite, check_float, check_fraction, check_mask, check_positive_int,
                       match_parameter_dtype, trusted_inputs, value_checks_enabled)
from ..layers import get_layer
from ..layers.mamba_family import cached_float_copies
from ..ops import decode_step
from ..ops.layer_norm import layer_norm, layer_norm_with_skip
from .mixer import ChannelMixer

__all__ = ["Backbone", "Block", "LayerNorm", "RMSNorm", "make_norm", "NORMS"]

NORMS = ("layer", "rms", "batch")


class RMSNorm(nn.Module):
    """``w ⊙ x / sqrt(mean(x²) + eps)`` over the last dimension, computed in float32 (Zhang &
    Sennrich 2019), no bias — the norm of the released Mamba models."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        if dtype == self.weight.dtype and dtype in (torch.float32, torch.float64):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused operation
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        return self.weight * F.rms_norm(xf, (xf.shape[-1],), None, self.eps).to(dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (same parameters and state dict) whose forward
    runs :func:`ssmkit.ops.layer_norm.layer_norm`: the native kernel for float32 on the CPU
    (torch's CPU LayerNorm costs about 0.7 ns an element at the LTI blocks' widths), torch's
    function elsewhere. The native path has first-order gradients only (like the fused mixer and
    kernels of the blocks): no double backward."""

    def _last_dim(self, x) -> bool:
        """Normalised over x's last dimension only (else torch's module: other shapes, and its
        own error for a wrong width)."""
        return len(self.normalized_shape) == 1 and tuple(x.shape[-1:]) == tuple(self.normalized_shape)

    def forward(self, x):
        if not self._last_dim(x):
            return super().forward(x)
        return layer_norm(x, self.weight, self.bias, self.eps)

    def with_skip(self, x):
        """``(self(x), x)`` for a pre-norm block's residual: on the native route the gradient the
        returned x receives is added to x's inside this norm's backward pass
        (:func:`ssmkit.ops.layer_norm.layer_norm_with_skip`)."""
        if not self._last_dim(x):
            return super().forward(x), x
        return layer_norm_with_skip(x, self.weight, self.bias, self.eps)


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (..., d) features (statistics over batch and length)."""

    def forward(self, x):
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def make_norm(kind: str, d: int, eps: float = 1e-5, device=None, dtype=None) -> nn.Module:
    """``layer`` (LayerNorm with bias), ``rms`` (RMSNorm) or ``batch`` (BatchNorm) over d channels."""
    check_choice("norm", kind, NORMS)
    if kind == "layer":
        return LayerNorm(d, eps=eps, device=device, dtype=dtype)
    if kind == "rms":
        return RMSNorm(d, eps=eps, device=device, dtype=dtype)
    return _BatchNorm(d, eps=eps, device=device, dtype=dtype)


class Block(nn.Module):
    def __init__(self, layer: nn.Module, d_model: int, dropout: float, norm: str = "layer", norm_eps: float = 1e-5,
                 prenorm: bool = True, residual_in_fp32: bool = False, device=None, dtype=None):
        super().__init__()
        self.norm = make_norm(norm, d_model, norm_eps, device=device, dtype=dtype)
        self.layer = layer
        self.mixer = (ChannelMixer(d_model, device=device, dtype=dtype)
                      if getattr(layer, "needs_channel_mixer", False) else nn.Identity())
        self.dropout = nn.Dropout(dropout)
        self.prenorm, self.residual_in_fp32 = prenorm, residual_in_fp32
        self._plain = isinstance(self.mixer, nn.Identity) and dropout == 0.0  # residual = x + h

    def _branch_input(self, x):
        """The residual branch's input, in the weights' dtype (the residual may be float32)."""
        return self.norm(x.to(self.norm.weight.dtype)) if self.prenorm else x.to(self.norm.weight.dtype)

    def _residual(self, x, h):
        r = x.float() if self.residual_in_fp32 else x
        if self._plain:
            y = r + h
        elif isinstance(self.mixer, ChannelMixer) and (self.dropout.p == 0 or not self.training):
            y = self.mixer(h, residual=r)  # the sum in the mixer's own pass where it can be
        else:
            y = r + self.dropout(self.mixer(h))
        return y if self.prenorm else self.norm(y)

    def forward(self, x, mask=None, state=None, return_state=False):
        if self.prenorm and isinstance(self.norm, LayerNorm) and x.dtype == self.norm.weight.dtype:
            xn, x = self.norm.with_skip(x)  # the residual's gradient joins x's in the norm's backward
        else:
            xn = self._branch_input(x)
        out = self.layer(xn, initial_state=state, return_state=return_state, mask=mask)
        h, new_state = out if return_state else (out, None)
        y = self._residual(x, h)
        if mask is not None:
            y = y * mask[..., None]
        return (y, new_state) if return_state else y

    def step(self, x_t, state):
        h, state = self.layer.step(self._branch_input(x_t), state)
        return self._residual(x_t, h), state

    def step_(self, x_t, state):
        """``step`` for a decoding loop that owns ``state`` and made it: layers with an in-place
        ``step_`` (Mamba, Mamba-2) update the state's tensors, unchecked, and return it; others
        return a new one."""
        step_ = getattr(self.layer, "step_", None)
        if step_ is not None:
            return self._residual(x_t, step_(self._branch_input(x_t), state, check=False)), state
        return self.step(x_t, state)


def _build_layer(cls, d_model: int, kw: Dict[str, Any], device, dtype) -> nn.Module:
    """A layer built on ``device`` in ``dtype``: through its factory arguments when it has them,
    otherwise moved after construction."""
    params = inspect.signature(cls.__init__).parameters
    if "device" in params and "dtype" in params:
        return cls(d_model, **kw, device=device, dtype=dtype)
    layer = cls(d_model, **kw)
    return layer.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else layer


class Backbone(nn.Module):
    """Embedding (``vocab_size``) or linear input projection (``d_input``) -> blocks -> norm.

    Args:
        layer: registered layer name (``s4d``, ``rtf``, ``s4``, ``mamba``, ...).
        layer_kwargs: passed to the layer constructor after ``d_model`` (e.g. ``d_state``).
        dropout: on each block's residual branch.
        norm: ``layer`` (default), ``rms`` or ``batch``; ``norm_eps`` its epsilon.
        prenorm: norm before each layer (default) or after the residual sum (then no final norm).
        residual_in_fp32: keep the residual stream in float32 (half-precision weights).
        pad_vocab_size_multiple: round the embedding's vocabulary up to a multiple of this.
        device, dtype: where and in which dtype the parameters are created.
    """

    def __init__(self, d_model: int = 64, n_layers: int = 4, layer: str = "s4d", layer_kwargs: Optional[Dict[str, Any]] = None,
                 vocab_size: Optional[int] = None, d_input: int = 1, dropout: float = 0.0, *, norm: str = "layer",
                 norm_eps: float = 1e-5, prenorm: bool = True, residual_in_fp32: bool = False,
                 pad_vocab_size_multiple: int = 1, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_layers", n_layers)
        check_fraction("dropout", dropout)
        check_choice("norm", norm, NORMS)
        check_float("norm_eps", norm_eps, low=0.0, low_open=True)
        check_bool("prenorm", prenorm)
        check_bool("residual_in_fp32", residual_in_fp32)
        check_positive_int("pad_vocab_size_multiple", pad_vocab_size_multiple)
        cls = get_layer(layer)
        self._native_stack = hasattr(cls, "native_layer_call")  # whether decoding may run as one call
        fk = dict(device=device, dtype=dtype)
        self.d_model, self.layer_name, self.vocab_size = d_model, layer, vocab_size
        self.norm_kind, self.norm_eps, self.prenorm, self.residual_in_fp32 = norm, norm_eps, prenorm, residual_in_fp32
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        check_positive_int("d_input", d_input)  # (unused with a vocabulary, but still an int >= 1)
        if vocab_size is not None:
            check_positive_int("vocab_size", vocab_size)
            m = pad_vocab_size_multiple
            self.padded_vocab_size = -(-vocab_size // m) * m
            self.encoder = nn.Embedding(self.padded_vocab_size, d_model, **fk)
        else:
            check_positive_int("d_input", d_input)
            self.padded_vocab_size = None
            self.encoder = nn.Linear(d_input, d_model, **fk)
        self.d_input = d_input
        if layer_kwargs is not None and not isinstance(layer_kwargs, dict):
            raise TypeError(f"layer_kwargs must be a dict of the layer's options (or None), got {type(layer_kwargs).__name__}")
        kw = dict(layer_kwargs or {})
        self.layer_kwargs = dict(kw)
        self.blocks = nn.ModuleList([
            Block(_build_layer(cls, d_model, kw, device, dtype), d_model, dropout, norm, norm_eps, prenorm,
                  residual_in_fp32, **fk) for _ in range(n_layers)])
        self.norm = make_norm(norm, d_model, norm_eps, **fk) if prenorm else nn.Identity()

    # --- input checks (once, at the model's entry) ----------------------------------------
    def _check_tokens(self, x, name="x"):
        if x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold token ids (int64) for a token model, got {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.padded_vocab_size):
            raise ValueError(f"{name} token ids must be in [0, {self.padded_vocab_size}), got range "
                             f"[{int(x.min())}, {int(x.max())}]")

    def _check_input(self, x, name="x"):
        want = 2 if self.vocab_size is not None else 3
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != want:
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
        if self.vocab_size is not None:
            self._check_tokens(x, name)
            return
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point (batch, length, {self.d_input}), got {x.dtype}")
        if x.shape[-1] != self.d_input:
            raise ValueError(f"{name} must have last dimension d_input={self.d_input}, got shape {tuple(x.shape)}")
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")

    def _check_states(self, states, batch: int, name: str = "states"):
        if not isinstance(states, (list, tuple)) or len(states) != len(self.blocks):
            got = f"{len(states)} entries" if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"{name} must be a list of one state per layer ({len(self.blocks)}), got {got}")
        for i, (given, block) in enumerate(zip(states, self.blocks)):
            _check_state_like(f"{name}[{i}]", given, block.layer.initial_state(batch, device="meta"))

    # --- forward ---------------------------------------------------------------------------
    def forward(self, x, mask=None, states: Optional[List[Any]] = None, return_state: bool = False):
        """``x`` (B, L) token ids or (B, L, d_input) -> features (B, L, d_model) [, states].

        ``mask`` (B, L), True at real tokens: right padding or left padding."""
        self._check_input(x)
        if x.shape[1] < 1:
            raise ValueError(f"x must have length >= 1, got shape {tuple(x.shape)}")
        mask = check_mask(mask, x)
        if states is not None:
            self._check_states(states, x.shape[0])
        if x.shape[0] == 0:  # an empty batch: empty features (and empty states)
            h = self._out_dtype_zeros(0, x.shape[1])
            return (h, self.initial_state(0)) if return_state else h
        shift = None
        if mask is not None:
            shift = _left_padding_shift(mask)
            if shift is not None:  # rotate each row so its real tokens come first
                x, mask = _roll_rows(x, -shift), _roll_rows(mask, -shift)
        with trusted_inputs():
            out = self._run(x, mask, states, return_state)
        if shift is None:
            return out
        if return_state:
            return _roll_rows(out[0], shift), out[1]
        return _roll_rows(out, shift)

    def _out_dtype_zeros(self, b: int, L: int):
        p = self.encoder.weight
        dtype = torch.float32 if self.residual_in_fp32 else p.dtype
        return torch.zeros(b, L, self.d_model, device=p.device, dtype=dtype)

    def _embed(self, x):
        # real features in another floating dtype are cast to the encoder's (docs/reliability.md)
        h = self.encoder(match_parameter_dtype(x, self.encoder.weight.dtype))
        return h.float() if self.residual_in_fp32 else h

    def _final(self, h):
        if not self.prenorm:
            return h
        return self.norm(h.to(self.norm.weight.dtype))

    def _run(self, x, mask, states, return_state):
        h = self._embed(x)
        new_states = []
        for i, block in enumerate(self.blocks):
            s = None if states is None else states[i]
            if return_state:
                h, s = block(h, mask=mask, state=s, return_state=True)
                new_states.append(s)
            else:
                h = block(h, mask=mask, state=s)
        h = self._final(h)
        return (h, new_states) if return_state else h

    def initial_state(self, batch_size: int, device=None, dtype=None) -> List[Any]:
        return [b.layer.initial_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def step(self, x_t, states: List[Any]):
        """One position: ``x_t`` (B,) token ids or (B, d_input) -> (B, d_model), new states."""
        want = 1 if self.vocab_size is not None else 2
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != want:
            raise ValueError(f"x_t must have {want} dimension(s), got "
                             f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}")
        if value_checks_enabled():  # a decoding loop inside trusted_inputs checked its tokens and made its states
            self._check_input(x_t.unsqueeze(1), "x_t")
            self._check_states(states, x_t.shape[0])
        with trusted_inputs():
            return self._step(x_t, states)

    def _step(self, x_t, states: List[Any]):
        """``step`` without input checks (for ssmkit's own decoding loops, inside trusted_inputs)."""
        h = self._embed(x_t)
        new = []
        for block, s in zip(self.blocks, states):
            h, s = block.step(h, s)
            new.append(s)
        return self._final(h), new

    def step_(self, x_t, states: List[Any]):
        """``step`` for ssmkit's own decoding loops, inside ``trusted_inputs``: no input checks,
        and ``states`` (a list the loop owns, made by ``forward`` or ``initial_state``) is
        updated in place (each layer's tensors where the layer can, else its list entry).
        Returns the features (B, d_model)."""
        plan = self._stack_plan()
        if plan is not None:  # the whole stack in one native call (None: the states do not fit it)
            out = plan(self._residual_input(x_t), states)
            if out is not None:
                return out
        weights = self._fused_rms_weights()
        if weights is not None:
            return self._step_fused_rms(x_t, states, weights)
        h = self._embed(x_t)
        for i, block in enumerate(self.blocks):
            h, states[i] = block.step_(h, states[i])
        return self._final(h)

    def _fused_rms_weights(self) -> Optional[List[torch.Tensor]]:
        """The float32 weights of every RMSNorm (the blocks', then the final one) when the residual
        stream between layers can run as one native call per layer, else None: pre-norm RMSNorm
        blocks with a plain residual (no mixer, no dropout), outside autograd, and a float32
        residual (float32 norms, or half-precision ones with ``residual_in_fp32``, whose float32
        copies are cached until the weights change)."""
        if not (self.prenorm and self.norm_kind == "rms" and not torch.is_grad_enabled()):
            return None
        if not all(b._plain for b in self.blocks):
            return None
        norms = [b.norm.weight for b in self.blocks] + [self.norm.weight]
        if norms[0].dtype in (torch.bfloat16, torch.float16) and all(b.residual_in_fp32 for b in self.blocks):
            norms = list(cached_float_copies(self.__dict__.setdefault("_f32_norms", {}), norms))
        elif norms[0].dtype != torch.float32:
            return None
        return norms if decode_step.applies(*norms) else None

    def _stack_plan(self) -> Optional[decode_step.StackStep]:
        """The whole stack's decoding step as one native call (:class:`ssmkit.ops.decode_step.StackStep`):
        pre-norm RMSNorm blocks (:meth:`_fused_rms_weights`) around layers that all have a
        one-call native step (``native_layer_call``: a Mamba or Mamba-2 backbone, float32 or bfloat16
        projections). Built once and reused while no parameter or submodule of the backbone is
        replaced, moved or changed in place (torch's version counters; a change made through
        ``.data`` is not seen, as by every cache of derived weights) and the norms' epsilons and
        the layers' step options stay the same; else None."""
        if (torch.is_grad_enabled() or not (self.prenorm and self.norm_kind == "rms")
                or not self.__dict__.get("_native_stack", True)):  # other layer kinds: no watch per token
            return None
        cached = _STACK_PLANS.get(self)
        if cached is not None and _watch_unchanged(*cached[1]) and cached[2] == _stack_options(cached[3]):
            return cached[0]
        plan = None
        weights = self._fused_rms_weights()
        calls = [getattr(b.layer, "native_layer_call", lambda: None)() for b in self.blocks]
        if weights is not None and all(c is not None for c in calls):
            try:
                plan = decode_step.StackStep(calls, weights, [b.norm.eps for b in self.blocks] + [self.norm.eps])
            except ValueError:
                plan = None
        modules = ([b.norm for b in self.blocks] + [self.norm], [b.layer for b in self.blocks])
        _STACK_PLANS[self] = (plan, _watch(self), _stack_options(modules), modules)
        return plan

    def _residual_input(self, x_t) -> torch.Tensor:
        """The embedded tokens as the float32 residual stream, a tensor of its own (written in place)."""
        r = self._embed(x_t).float().contiguous()
        if r.data_ptr() == self.encoder.weight.data_ptr():  # never write into the embedding
            r = r.clone()
        return r

    def _step_fused_rms(self, x_t, states: List[Any], weights: List[torch.Tensor]):
        """``step_`` with the residual add and the next RMSNorm fused (same numbers up to float
        rounding): r = embed(x); for each block, y = layer(norm(r)); r += y. ``weights``: the
        float32 norm weights (:meth:`_fused_rms_weights`)."""
        r = self._residual_input(x_t)
        blocks = self.blocks
        x = decode_step.add_rms_norm(None, r, weights[0], blocks[0].norm.eps)
        for i, block in enumerate(blocks):
            y = block.layer.step_(x, states[i], check=False) if hasattr(block.layer, "step_") else None
            if y is None:
                y, states[i] = block.layer.step(x, states[i])
            nxt = blocks[i + 1].norm if i + 1 < len(blocks) else self.norm
            y = y.float()
            if not y.is_contiguous():
                y = y.contiguous()
            x = decode_step.add_rms_norm(y, r, weights[i + 1], nxt.eps)
        return x


#: Backbone -> (its one-call decoding plan or None, what it was built from, the options it read,
#: the norm and layer modules): kept outside the module, so copying or pickling a model never
#: carries the plan's raw pointers; dropped with the backbone.
_STACK_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _stack_options(modules) -> list:
    """What the one-call plan read besides parameters: every norm's epsilon and the layers' step options."""
    norms, layers = modules
    return [getattr(m, "eps", None) for m in norms] + [
        l._step_options() for l in layers if getattr(type(l), "_step_options", None) is not None]


def _watch(module: nn.Module):
    """What :func:`_watch_unchanged` compares: every parameter slot of every submodule (the tensor
    in it, its version counter and storage) and every submodule slot."""
    params, empty, mods = [], [], []
    for m in module.modules():
        mods.append((m._modules, tuple(m._modules.values())))
        for name, t in m._parameters.items():
            if t is None:
                empty.append((m._parameters, name))
            else:
                params.append((m._parameters, name, t, t._version, t.data_ptr()))
    return params, empty, mods


def _watch_unchanged(params, empty, mods) -> bool:
    """True if no parameter or submodule recorded by :func:`_watch` was replaced, moved or changed in place."""
    for d, name, t, version, ptr in params:
        if d.get(name) is not t or t._version != version or t.data_ptr() != ptr:
            return False
    for d, name in empty:
        if d.get(name) is not None:
            return False
    for d, snap in mods:  # modules compare by identity; a leaf only needs to stay a leaf
        if len(d) != len(snap) or (snap and tuple(d.values()) != snap):
            return False
    return True


def _check_state_like(name: str, given, template) -> None:
    """``given`` has the structure of ``template`` (a layer's ``initial_state``): a tensor, or a
    tuple of tensors, of the same shapes, floating (complex where the template is complex)."""
    parts = template if isinstance(template, tuple) else (template,)
    if isinstance(template, tuple):
        if not isinstance(given, (tuple, list)) or len(given) != len(parts):
            raise ValueError(f"{name} must be a tuple of {len(parts)} tensors like the layer's initial_state, "
                             f"got {type(given).__name__}")
        got = tuple(given)
    else:
        got = (given,)
    for g, t in zip(got, parts):
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(t.shape):
            raise ValueError(f"{name} must hold tensors of shape {tuple(t.shape)}, got "
                             f"{tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__}")
        if not (g.is_floating_point() or (t.is_complex() and g.is_complex())):
            raise TypeError(f"{name} must hold {'complex' if t.is_complex() else 'floating-point'} tensors, got {g.dtype}")
        check_finite(name, g)


def _left_padding_shift(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """For a left-padding mask (False..., True...) with at least one padded row: the number of
    leading pad positions per row; None for right padding or no padding. Other patterns are left
    to the layers (which refuse them by name)."""
    L = mask.shape[1]
    lengths = mask.sum(1)
    pos = torch.arange(L, device=mask.device)[None, :]
    if bool((pos < lengths[:, None]).eq(mask).all()):
        return None  # right padding (or none)
    if bool((pos >= (L - lengths)[:, None]).eq(mask).all()):
        return L - lengths
    raise ValueError("mask must be right padding (True for real tokens, then False) or left padding (False, then True)")


def _roll_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Row b rotated by ``shift[b]`` along dim 1: out[b, t] = x[b, (t - shift[b]) mod L]."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device)[None, :] - shift[:, None]) % L  # (B, L)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(x.shape)
    return torch.gather(x, 1, idx)

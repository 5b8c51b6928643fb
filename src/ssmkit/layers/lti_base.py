"""Common machinery of the LTI layers (S4, S4D, RTF): ``y = K * u + D u`` per channel.

A subclass provides

- ``kernel(L) -> (n_kernels, L)``: the real convolution kernel ``K_k = C Ā^k B̄``
  (``n_kernels = d_model``, or ``2 d_model`` for a bidirectional layer: forward kernels first);
- ``discrete_ssm() -> (Ad, Bd, C, D)``: the dense recurrence it steps with;
- ``_advance(state, u_t) -> state`` (``x_k = Ā x_{k-1} + B̄ u_k``) and ``_readout(state) -> (batch, H)``
  (``C x_k``), from which :meth:`step` is built;
- the class attributes ``complex_state`` and the property ``state_width`` (the state is
  (batch, d_model, state_width), complex when ``complex_state``),

and may override ``_final_state`` and ``_initial_response``; the defaults compute them in
closed form from the dense system (:func:`ssmkit.kernels.ssm_final_state`,
:func:`ssmkit.kernels.ssm_initial_response`: O(log L) batched products, no loop over tokens).
S4 stores one state entry per conjugate pair of modes; ``_state_to_full`` /
``_full_to_state`` map between that and the dense system's state.

``forward`` computes the convolution view (FFT, O(L log L)); ``step`` the recurrent view
(O(N) per token for S4D and RTF); the tests check that both give the same outputs.
Padding masks must be right padding (real tokens first): padded positions get ``y = 0`` and
the returned state is each sequence's state after its own last real token.

``bidirectional=True`` (the S4 papers' option for classification) adds a second set of
kernels run over the reversed sequence: ``y = K_fwd * u + rev(K_bwd * rev(u)) + D u``. Such a
layer is not causal: ``step``, ``initial_state=`` and ``return_state=`` are refused.

Inputs are checked once at ``forward`` / ``step``; the kernels and the convolution are then
called inside :func:`ssmkit._checks.trusted_inputs` (no second full-tensor check).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from .._checks import (check_bool, check_int, check_mask, check_positive_int, check_sequence_input, check_state,
                       check_step_input, match_parameter_dtype, right_padding_lengths, trusted_inputs)
from ..kernels.state import ssm_final_state, ssm_initial_response
from ..ops.fftconv import fftconv
from .base import SequenceLayer

__all__ = ["LTILayer", "factory_kwargs"]


def factory_kwargs(device=None, dtype=None) -> dict:
    """``{"device", "dtype"}`` for a layer's parameters (PyTorch's factory convention).

    ``dtype`` must be a real floating dtype of full precision (float32 or float64); None means
    torch's default dtype."""
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (or None), got {dtype!r}")
    return {"device": torch.device(device) if device is not None else None,
            "dtype": dtype if dtype is not None else torch.get_default_dtype()}


class LTILayer(SequenceLayer):
    needs_channel_mixer = True
    complex_state = True

    def __init__(self, d_model: int, bidirectional: bool = False, device=None, dtype=None):
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.factory = factory_kwargs(device, dtype)
        self.n_kernels = d_model * (2 if bidirectional else 1)
        self.D = nn.Parameter(torch.randn(d_model).to(**self.factory))
        self._caches = {}

    def _parameter(self, value: torch.Tensor) -> nn.Parameter:
        """A parameter from an init value (computed on the CPU), placed on the layer's device/dtype."""
        return nn.Parameter(value.to(**self.factory))

    # ---- to implement -------------------------------------------------------------------
    def kernel(self, L: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def discrete_ssm(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _advance(self, state, u_t: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def _readout(self, state) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def state_width(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- the dense system, for closed-form states ---------------------------------------
    def _dense_AB(self):
        """``(Ā, B̄)`` of the dense system (subclasses may skip computing C)."""
        Ad, Bd, _, _ = self.discrete_ssm()
        return Ad, Bd

    def _state_to_full(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def _full_to_state(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # ---- shared ------------------------------------------------------------------------
    def _cached(self, name: str, compute: Callable[[], Any], params: Optional[Sequence[torch.Tensor]] = None):
        """``compute()``, reused while no gradient is recorded and ``params`` (default: all of the
        layer's parameters) are unchanged: same storage, version counter, dtype and device."""
        if torch.is_grad_enabled():
            return compute()
        params = tuple(self.parameters()) if params is None else tuple(params)
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        hit = self._caches.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        out = compute()
        self._caches[name] = (key, out)
        return out

    @staticmethod
    def _check_L(L) -> int:
        return check_positive_int("L", L)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """The zero state (batch_size, d_model, state_width): complex for S4 and S4D (complex128 when
        ``dtype`` is float64), real for RTF."""
        check_int("batch_size", batch_size, minimum=0)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        real = dtype if dtype is not None else self.D.dtype
        if self.complex_state:
            real = real.to_real() if real.is_complex else real
            dtype = torch.complex128 if real == torch.float64 else torch.complex64
        else:
            dtype = real.to_real() if real.is_complex else real
        return torch.zeros(batch_size, self.d_model, self.state_width, dtype=dtype,
                           device=device if device is not None else self.D.device)

    def _check_state(self, name: str, state, batch: int) -> torch.Tensor:
        """A finite state of the right shape, cast to the dtype the layer computes its state in (the
        parameters' precision: complex for S4 and S4D, real for RTF), as forward and step return it."""
        check_state(name, state, (batch, self.d_model, self.state_width), complex_ok=True)
        real = self.D.dtype
        want = (torch.complex128 if real == torch.float64 else torch.complex64) if self.complex_state else real
        if not self.complex_state and state.is_complex():
            raise TypeError(f"{name} must be real for this layer (its state is {want}), got {state.dtype}")
        return state.to(want)

    def _refuse_bidirectional(self, what: str) -> None:
        if self.bidirectional:
            raise ValueError(f"{what} is not available for a bidirectional layer (bidirectional=True): its "
                             "output at a position depends on later inputs, so it has no causal recurrence")

    def step(self, x_t: torch.Tensor, state) -> Tuple[torch.Tensor, Any]:
        """One token: ``x_t`` (batch, H) -> ``(y_t, state)``."""
        self._refuse_bidirectional("step")
        check_step_input(x_t, self.d_model)
        state = self._check_state("state", state, x_t.shape[0])
        dtype, x_t = x_t.dtype, match_parameter_dtype(x_t, self.D.dtype)
        with trusted_inputs():
            state = self._advance(state, x_t)
            return (self._readout(state) + self.D * x_t).to(dtype), state

    def _final_state(self, u: torch.Tensor, state0: Optional[torch.Tensor], lengths: Optional[torch.Tensor]):
        Ad, Bd = self._dense_AB()
        x0 = None if state0 is None else self._state_to_full(state0)
        return self._full_to_state(ssm_final_state(Ad, Bd, u, x0, lengths))

    def _initial_response(self, state0: torch.Tensor, L: int) -> torch.Tensor:
        Ad, _, C, _ = self.discrete_ssm()
        y = ssm_initial_response(Ad, C, self._state_to_full(state0), L)
        return y.real if y.is_complex() else y

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        check_bool("return_state", return_state)
        dtype, x = x.dtype, match_parameter_dtype(x, self.D.dtype)  # docs/reliability.md
        if initial_state is not None:
            self._refuse_bidirectional("initial_state")
        if return_state:
            self._refuse_bidirectional("return_state")
        bsz, L, H = x.shape
        mask = check_mask(mask, x)
        lengths = right_padding_lengths(mask, L)
        if initial_state is not None:
            initial_state = self._check_state("initial_state", initial_state, bsz)
        with trusted_inputs():
            if mask is not None:
                x = x * mask[..., None]
            K = self.kernel(L)
            if self.bidirectional:
                # one convolution over 2H channels: the forward ones, then the reversed sequence
                y2 = fftconv(torch.cat([x, x.flip(1)], dim=-1), K)
                y = torch.addcmul(y2[..., :H] + y2[..., H:].flip(1), x, self.D)
            else:
                y = fftconv(x, K, self.D)
            if initial_state is not None:
                y = y + self._initial_response(initial_state, L).to(y.dtype)
            if mask is not None:
                y = y * mask[..., None]
            y = y.to(dtype)  # computed in the parameters' dtype, returned in the input's
            if not return_state:
                return y
            return y, self._final_state(x, initial_state, lengths)

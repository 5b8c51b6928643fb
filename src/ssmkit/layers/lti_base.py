"""Common machinery of the LTI layers (S4, S4D, RTF): ``y = K * u + D u`` per channel.

A subclass provides

- ``kernel(L) -> (H, L)``: the real convolution kernel ``K_k = C Ā^k B̄``;
- ``discrete_ssm() -> (Ad, Bd, C, D)``: the dense recurrence it steps with;
- ``initial_state(batch_size, device, dtype)``;
- ``_advance(state, u_t) -> state`` (``x_k = Ā x_{k-1} + B̄ u_k``) and ``_readout(state) -> (B, H)``
  (``C x_k``), from which :meth:`step` is built;

and may override ``_final_state`` and ``_initial_response`` with vectorised versions (the
defaults run ``_advance`` over the sequence, O(L) small steps).

``forward`` computes the convolution view (FFT, O(L log L)); ``step`` the recurrent view
(O(N) per token for S4D and RTF); the tests check that both give the same outputs.
Padding masks must be right padding (real tokens first): padded positions get ``y = 0`` and
the returned state is each sequence's state after its own last real token.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from ..ops.fftconv import fftconv
from .._checks import check_mask, check_sequence_input, check_step_input, right_padding_lengths
from .base import SequenceLayer

__all__ = ["LTILayer"]


class LTILayer(SequenceLayer):
    needs_channel_mixer = True

    def __init__(self, d_model: int):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be an int >= 1, got {d_model!r}")
        self.d_model = d_model
        self.D = nn.Parameter(torch.randn(d_model))

    # ---- to implement -------------------------------------------------------------------
    def kernel(self, L: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def discrete_ssm(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _advance(self, state, u_t: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def _readout(self, state) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------
    @staticmethod
    def _check_L(L) -> int:
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"L must be an int >= 1, got {L!r}")
        return L

    def _check_state(self, state, batch: int):
        want = tuple(self.initial_state(1, device="meta").shape)
        want = (batch,) + want[1:]
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != want:
            raise ValueError(f"state must be a tensor of shape {want}, got "
                             f"{tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__}")
        return state

    def step(self, x_t: torch.Tensor, state) -> Tuple[torch.Tensor, Any]:
        """One token: ``x_t`` (B, H) -> ``(y_t, state)``."""
        check_step_input(x_t, self.d_model)
        self._check_state(state, x_t.shape[0])
        state = self._advance(state, x_t)
        return self._readout(state) + self.D * x_t, state

    def _final_state(self, u: torch.Tensor, state0, lengths: Optional[torch.Tensor]):
        state = state0
        for k in range(u.shape[1]):
            new = self._advance(state, u[:, k])
            if lengths is not None:
                keep = (k < lengths).view(-1, *([1] * (new.dim() - 1)))
                new = torch.where(keep, new, state)
            state = new
        return state

    def _initial_response(self, state0, L: int) -> torch.Tensor:
        out = []
        s = state0
        zero = torch.zeros(state0.shape[0], self.d_model, dtype=self.D.dtype, device=self.D.device)
        for _ in range(L):
            s = self._advance(s, zero)
            out.append(self._readout(s))
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor, initial_state=None, return_state: bool = False, mask: Optional[torch.Tensor] = None):
        check_sequence_input(x, self.d_model)
        B, L, H = x.shape
        mask = check_mask(mask, x)
        lengths = right_padding_lengths(mask, L)
        if mask is not None:
            x = x * mask[..., None]
        y = fftconv(x, self.kernel(L), self.D)
        if initial_state is not None:
            self._check_state(initial_state, B)
            y = y + self._initial_response(initial_state, L)
        if mask is not None:
            y = y * mask[..., None]
        if not return_state:
            return y
        state0 = self.initial_state(B, device=x.device, dtype=x.dtype) if initial_state is None else initial_state
        return y, self._final_state(x, state0, lengths)

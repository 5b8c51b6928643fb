"""Helpers shared by the Mamba family (Mamba, Mamba-2): the causal conv's carried window, the
(conv_state, ssm_state) check and ``A = -exp(A_log)``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._checks import check_finite

__all__ = ["causal_conv_window", "check_conv_ssm_state", "negative_A"]


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


def check_conv_ssm_state(state, ref: Tuple[torch.Tensor, torch.Tensor], name: str = "state") -> None:
    """Validate a ``(conv_state, ssm_state)`` pair (Mamba, Mamba-2) against the shapes of ``ref``
    (the layer's ``initial_state`` on the meta device): a pair of finite tensors of those shapes."""
    if (not isinstance(state, (tuple, list)) or len(state) != 2
            or any(not isinstance(s, torch.Tensor) or s.shape != r.shape for s, r in zip(state, ref))):
        raise ValueError(f"{name} must be a (conv_state, ssm_state) pair of shapes {tuple(ref[0].shape)}, {tuple(ref[1].shape)}")
    for s in state:
        check_finite(name, s)


def negative_A(A_log: torch.Tensor) -> torch.Tensor:
    """``A = -exp(A_log)``, checked finite and < 0 (a NaN or ±inf ``A_log`` is an error)."""
    A = -torch.exp(A_log)
    if not bool((torch.isfinite(A) & (A < 0)).all()):
        raise ValueError("A_log must be finite and give A = -exp(A_log) < 0 (finite, nonzero)")
    return A

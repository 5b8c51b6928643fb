"""The SequenceLayer protocol, the layer registry and optimizer hints (input checks live in
``ssmkit._checks``, helpers of the Mamba family in ``layers/mamba_family.py``).

Every layer maps ``x`` of shape (batch, length, d_model) to ``y`` of the same shape and can be
run two ways that agree to float tolerance: ``forward`` over a whole sequence, and ``step``
one token at a time with constant memory (see docs/architecture.md).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch
from torch import nn


__all__ = [
    "SequenceLayer",
    "register_layer",
    "get_layer",
    "available_layers",
    "set_optim_hints",
    "get_optim_hints",
    "run_steps",
]

_REGISTRY: Dict[str, Type["SequenceLayer"]] = {}


def register_layer(name: str) -> Callable[[Type["SequenceLayer"]], Type["SequenceLayer"]]:
    """Class decorator: make a layer constructible by name (``get_layer(name)``)."""

    def deco(cls):
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"layer name {name!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
        cls.layer_name = key
        return cls

    return deco


def get_layer(name: str) -> Type["SequenceLayer"]:
    """Return the layer class registered under ``name`` (e.g. "s4d", "mamba")."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown layer {name!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def available_layers() -> Tuple[str, ...]:
    """Names of all registered layers, sorted."""
    return tuple(sorted(_REGISTRY))


# --- optimizer hints -------------------------------------------------------------------------
_HINT_ATTR = "_ssmkit_optim"


def set_optim_hints(param: nn.Parameter, *, lr: Optional[float] = None, weight_decay: Optional[float] = 0.0) -> nn.Parameter:
    """Tag a parameter for special optimizer treatment (the S4 convention).

    ``lr``: an absolute learning rate for this parameter (None: the trainer's default).
    ``weight_decay``: its weight decay (default 0.0: SSM parameters such as ``log_dt``, ``A``,
    RTF's ``a``/``b`` are not decayed). The trainer groups parameters by these tags.
    """
    hints = {}
    if lr is not None:
        hints["lr"] = float(lr)
    if weight_decay is not None:
        hints["weight_decay"] = float(weight_decay)
    setattr(param, _HINT_ATTR, hints)
    return param


def get_optim_hints(param: nn.Parameter) -> Dict[str, float]:
    """The hints set by :func:`set_optim_hints` (an empty dict for untagged parameters)."""
    return dict(getattr(param, _HINT_ATTR, {}))


def run_steps(layer: "SequenceLayer", x: torch.Tensor, state: Any = None) -> Tuple[torch.Tensor, Any]:
    """Run ``layer.step`` over a whole sequence ``x`` (B, L, H): the recurrent view of ``forward``."""
    state = layer.initial_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for k in range(x.shape[1]):
        y, state = layer.step(x[:, k], state)
        ys.append(y)
    return torch.stack(ys, 1), state


class SequenceLayer(nn.Module):
    """Base class of every layer in :mod:`ssmkit.layers`.

    Subclasses implement:

    - ``forward(x, initial_state=None, return_state=False, mask=None)``: ``x`` (B, L, H) ->
      ``y`` (B, L, H), or ``(y, final_state)`` when ``return_state``. ``mask`` (B, L) bool is
      True at real tokens; at padded positions the state passes through unchanged and ``y`` is 0.
    - ``step(x_t, state) -> (y_t, state)`` with ``x_t`` of shape (B, H): O(1) time and memory.
    - ``initial_state(batch_size, device=None, dtype=None)``: the zero state.

    ``needs_channel_mixer`` says whether the backbone must add a position-wise channel mixer
    after this layer: True for channel-independent LTI layers (S4, S4D, RTF), False for layers
    that are whole blocks (Mamba, Mamba-2, S5).
    """

    needs_channel_mixer: bool = False
    layer_name: str = ""
    d_model: int

    def step(self, x_t: torch.Tensor, state: Any) -> Tuple[torch.Tensor, Any]:  # pragma: no cover
        raise NotImplementedError

    def initial_state(self, batch_size: int, device=None, dtype=None) -> Any:  # pragma: no cover
        raise NotImplementedError

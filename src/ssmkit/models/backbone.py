"""The backbone shared by every model: input encoder -> n_layers x block -> final norm.

A block is pre-norm residual: ``x + dropout(mixer(layer(norm(x))))``. Channel-independent LTI
layers (``needs_channel_mixer``) are followed by the S4 papers' position-wise mixer
(GELU, then a linear map to 2H and a GLU); block layers (Mamba, Mamba-2, S5) mix channels
themselves. Swapping the layer by name changes nothing else.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..layers import get_layer
from .._checks import check_mask

__all__ = ["Backbone", "Block"]


class Block(nn.Module):
    def __init__(self, layer: nn.Module, d_model: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.layer = layer
        self.mixer = (nn.Sequential(nn.GELU(), nn.Linear(d_model, 2 * d_model), nn.GLU(dim=-1))
                      if getattr(layer, "needs_channel_mixer", False) else nn.Identity())
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None, state=None, return_state=False):
        out = self.layer(self.norm(x), initial_state=state, return_state=return_state, mask=mask)
        h, new_state = out if return_state else (out, None)
        y = x + self.dropout(self.mixer(h))
        if mask is not None:
            y = y * mask[..., None]
        return (y, new_state) if return_state else y

    def step(self, x_t, state):
        h, state = self.layer.step(self.norm(x_t), state)
        return x_t + self.dropout(self.mixer(h)), state


class Backbone(nn.Module):
    """Embedding (``vocab_size``) or linear input projection (``d_input``) -> blocks -> norm.

    Args:
        layer: registered layer name (``s4d``, ``rtf``, ``s4``, ``mamba``, ...).
        layer_kwargs: passed to the layer constructor after ``d_model`` (e.g. ``d_state``).
    """

    def __init__(self, d_model: int = 64, n_layers: int = 4, layer: str = "s4d", layer_kwargs: Optional[Dict[str, Any]] = None,
                 vocab_size: Optional[int] = None, d_input: int = 1, dropout: float = 0.0):
        super().__init__()
        for k, v in dict(d_model=d_model, n_layers=n_layers).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        cls = get_layer(layer)
        self.d_model, self.layer_name, self.vocab_size = d_model, layer, vocab_size
        if vocab_size is not None:
            if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
                raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
            self.encoder = nn.Embedding(vocab_size, d_model)
        else:
            if isinstance(d_input, bool) or not isinstance(d_input, int) or d_input < 1:
                raise ValueError(f"d_input must be an int >= 1, got {d_input!r}")
            self.encoder = nn.Linear(d_input, d_model)
        self.d_input = d_input
        kw = dict(layer_kwargs or {})
        self.blocks = nn.ModuleList([Block(cls(d_model, **kw), d_model, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)

    def _encode(self, x):
        if self.vocab_size is not None:
            if x.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"x must hold token ids (int64) for a token model, got {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ValueError(f"x token ids must be in [0, {self.vocab_size}), got range [{int(x.min())}, {int(x.max())}]")
            return self.encoder(x)
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point (batch, length, {self.d_input}), got {x.dtype}")
        if x.shape[-1] != self.d_input:
            raise ValueError(f"x must have last dimension d_input={self.d_input}, got shape {tuple(x.shape)}")
        return self.encoder(x)

    def forward(self, x, mask=None, states: Optional[List[Any]] = None, return_state: bool = False):
        """``x`` (B, L) token ids or (B, L, d_input) -> features (B, L, d_model) [, states]."""
        want = 2 if self.vocab_size is not None else 3
        if x.dim() != want:
            raise ValueError(f"x must have {want} dimensions, got shape {tuple(x.shape)}")
        h = self._encode(x)
        mask = check_mask(mask, h)
        new_states = []
        for i, block in enumerate(self.blocks):
            s = None if states is None else states[i]
            if return_state:
                h, s = block(h, mask=mask, state=s, return_state=True)
                new_states.append(s)
            else:
                h = block(h, mask=mask, state=s)
        h = self.norm(h)
        return (h, new_states) if return_state else h

    def initial_state(self, batch_size: int, device=None, dtype=None) -> List[Any]:
        return [b.layer.initial_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def step(self, x_t, states: List[Any]):
        """One position: ``x_t`` (B,) token ids or (B, d_input) -> (B, d_model), new states."""
        h = self.encoder(x_t)
        new = []
        for block, s in zip(self.blocks, states):
            h, s = block.step(h, s)
            new.append(s)
        return self.norm(h), new

"""The task contract shared by every dataset and the trainer.

A :class:`Task` bundles train/val/test ``torch.utils.data.Dataset`` objects whose items are
``(x, y)`` pairs:

- ``x``: ``LongTensor`` of shape (L,) when ``vocab_size`` is set (token input), otherwise a
  ``FloatTensor`` of shape (L, d_input) (real-valued input such as pixels or a time series).
- ``y``: for ``kind == "classify"`` a ``LongTensor`` scalar (one label per sequence); for
  ``kind == "tokens"`` a ``LongTensor`` of shape (L,) with a target per position and
  ``IGNORE_INDEX`` where nothing is scored; for ``kind == "regress"`` a float scalar.

Sequences in one dataset may have different lengths; :func:`pad_collate` pads a batch and
returns the padding mask (True at real positions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["Task", "IGNORE_INDEX", "TASK_KINDS", "pad_collate"]

IGNORE_INDEX = -100
TASK_KINDS = ("classify", "tokens", "regress")


@dataclass
class Task:
    name: str
    kind: str  # "classify" | "tokens" | "regress"
    train: Dataset
    test: Dataset
    val: Optional[Dataset] = None
    vocab_size: Optional[int] = None  # token input if set, else real input of width d_input
    d_input: int = 1
    num_classes: int = 2  # classes, or the output vocabulary of a "tokens" task
    max_len: int = 0  # longest sequence in the task
    description: str = ""
    options: Dict[str, Any] = field(default_factory=dict)  # the resolved construction options

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}, got {self.kind!r}")


def pad_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """Stack ``(x, y)`` items of possibly different lengths, right-padding with zeros.

    Returns ``(x, y, mask)``: ``mask`` (B, L) bool is True at real positions; per-position
    targets are padded with ``IGNORE_INDEX``.
    """
    xs: List[torch.Tensor] = [b[0] for b in batch]
    ys: List[torch.Tensor] = [b[1] for b in batch]
    lengths = torch.tensor([x.shape[0] for x in xs])
    L = int(lengths.max())
    B = len(xs)
    x = xs[0].new_zeros((B, L) + tuple(xs[0].shape[1:]))
    mask = torch.arange(L)[None, :] < lengths[:, None]
    for i, xi in enumerate(xs):
        x[i, : xi.shape[0]] = xi
    if ys[0].dim() == 0:
        y = torch.stack(ys)
    else:
        y = ys[0].new_full((B, L), IGNORE_INDEX)
        for i, yi in enumerate(ys):
            y[i, : yi.shape[0]] = yi
    return x, y, mask

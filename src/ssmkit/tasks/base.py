"""The task contract shared by every dataset and the trainer.

A :class:`Task` bundles three ``torch.utils.data.Dataset`` objects, ``train``, ``val`` and
``test``, whose items are ``(x, y)`` pairs:

- ``x``: ``LongTensor`` of shape (L,) when ``vocab_size`` is set (token input), otherwise a
  ``FloatTensor`` of shape (L, d_input) (real-valued input such as pixels or a time series).
- ``y``: for ``kind == "classify"`` a ``LongTensor`` scalar (one label per sequence); for
  ``kind == "tokens"`` a ``LongTensor`` of shape (L,) with a target per position and
  ``IGNORE_INDEX`` where nothing is scored; for ``kind == "regress"`` a float scalar.

``val`` is for model selection (early stopping, the best checkpoint) and ``test`` only for
the final figure. Sequences in one dataset may have different lengths; :func:`pad_collate`
pads a batch and returns the padding mask (True at real positions).

``Task.options`` holds every option that shaped the data, resolved (defaults filled in, the
normalisation mode spelled out), so that ``build_task(task.name, **task.options)`` rebuilds
the same data; :meth:`Task.describe` adds the split sizes and shapes (a JSON-ready dict).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["Task", "TensorDataset", "IGNORE_INDEX", "TASK_KINDS", "SPLITS", "pad_collate"]

IGNORE_INDEX = -100
TASK_KINDS = ("classify", "tokens", "regress")
SPLITS = ("train", "val", "test")


class TensorDataset(Dataset):
    """``(x[i], y[i])`` pairs; ``x`` is a tensor (equal lengths) or a list of tensors (unequal
    lengths), ``y`` a tensor."""

    def __init__(self, x, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def subset(self, indices: torch.Tensor) -> "TensorDataset":
        """A new dataset of the items at ``indices`` (a 1-D LongTensor), in that order."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if isinstance(self.x, torch.Tensor):
            return TensorDataset(self.x[indices], self.y[indices])
        return TensorDataset([self.x[int(i)] for i in indices], self.y[indices])


@dataclass
class Task:
    name: str
    kind: str  # "classify" | "tokens" | "regress"
    train: Dataset
    val: Dataset
    test: Dataset
    vocab_size: Optional[int] = None  # token input if set, else real input of width d_input
    d_input: int = 1
    num_classes: int = 2  # classes, or the output vocabulary of a "tokens" task
    max_len: int = 0  # longest sequence in the task
    description: str = ""
    options: Dict[str, Any] = field(default_factory=dict)  # every option that shaped the data, resolved
    files: Dict[str, str] = field(default_factory=dict)  # the files read, by split, for file-based tasks

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}, got {self.kind!r}")
        for split in SPLITS:
            if getattr(self, split) is None:
                raise ValueError(f"task {self.name!r} needs a {split} split")

    def split(self, name: str) -> Dataset:
        """The dataset of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def describe(self) -> Dict[str, Any]:
        """A JSON-ready summary: name, kind, options, split sizes, input and output sizes."""
        out: Dict[str, Any] = {"name": self.name, "kind": self.kind, "description": self.description,
                               "options": dict(self.options),
                               "sizes": {s: len(getattr(self, s)) for s in SPLITS}, "max_len": self.max_len}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        else:
            out["d_input"] = self.d_input
        if self.kind != "regress":
            out["num_classes"] = self.num_classes
        if self.files:
            out["files"] = dict(self.files)
        return out


def pad_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """Stack ``(x, y)`` items of possibly different lengths, right-padding with zeros.

    Returns ``(x, y, mask)``: ``mask`` (batch, L) bool is True at real positions; per-position
    targets are padded with ``IGNORE_INDEX``.
    """
    if len(batch) == 0:
        raise ValueError("batch must hold at least one (x, y) item, got an empty batch")
    xs: List[torch.Tensor] = [b[0] for b in batch]
    ys: List[torch.Tensor] = [b[1] for b in batch]
    lengths = torch.tensor([x.shape[0] for x in xs])
    L = int(lengths.max())
    n = len(xs)
    x = xs[0].new_zeros((n, L) + tuple(xs[0].shape[1:]))
    mask = torch.arange(L)[None, :] < lengths[:, None]
    for i, xi in enumerate(xs):
        x[i, : xi.shape[0]] = xi
    if ys[0].dim() == 0:
        y = torch.stack(ys)
    else:
        y = ys[0].new_full((n, L), IGNORE_INDEX)
        for i, yi in enumerate(ys):
            y[i, : yi.shape[0]] = yi
    return x, y, mask

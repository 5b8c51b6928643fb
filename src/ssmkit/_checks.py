"""Input validation shared by every public function.

Errors name the argument and say what was expected, so a user never gets a traceback from
deep inside torch or, worse, a silent NaN.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

__all__ = [
    "check_tensor",
    "check_positive",
    "check_positive_int",
    "check_choice",
    "check_finite",
]


def check_tensor(
    name: str,
    x,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
    complex_ok: bool = False,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the expected rank/shape/dtype with finite values.

    ``shape`` may hold ``None`` for free dimensions. ``floating`` requires a real floating
    dtype (or complex when ``complex_ok``). Returns ``x`` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if shape is not None:
        if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if floating:
        ok = x.is_floating_point() or (complex_ok and x.is_complex())
        if not ok:
            kind = "a floating or complex" if complex_ok else "a floating-point"
            raise TypeError(f"{name} must have {kind} dtype, got {x.dtype}")
    if finite:
        check_finite(name, x)
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ValueError if ``x`` holds NaN or ±inf (skipped while tracing/compiling)."""
    if (x.is_floating_point() or x.is_complex()) and x.numel() > 0:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_positive(name: str, v, *, allow_zero: bool = False):
    """Check a positive scalar (float or tensor: all entries)."""
    if isinstance(v, torch.Tensor):
        if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got {v.dtype}")
        check_finite(name, v)
        bad = (v < 0) if allow_zero else (v <= 0)
        if bool(bad.any()):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got min {v.min().item():g}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {v!r}")
    return v


def check_positive_int(name: str, v, *, minimum: int = 1) -> int:
    """Check an integer >= ``minimum``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_choice(name: str, v, choices: Iterable[str]) -> str:
    """Check that ``v`` is one of ``choices`` (case-sensitive strings)."""
    choices = tuple(choices)
    if v not in choices:
        raise ValueError(f"unknown {name} {v!r}; expected one of {', '.join(map(repr, choices))}")
    return v

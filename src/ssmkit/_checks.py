"""Input validation shared by every public function: one vocabulary, one rule per concept.

Errors name the argument and say what was expected, so a user never gets a traceback from
deep inside torch or, worse, a silent NaN. Every public entry point validates its inputs with
these helpers; internal calls between ssmkit's own modules may run inside
:func:`trusted_inputs`, which skips the full-tensor value checks (finiteness, ranges) that
would otherwise read every element (and, on an accelerator, synchronise host and device).
Shape, dtype and scalar checks always run: they cost nothing.

The vocabulary (docs/reliability.md lists what each public entry point checks):

- scalars: :func:`check_int`, :func:`check_positive_int`, :func:`check_even_int`,
  :func:`check_float`, :func:`check_positive`, :func:`check_fraction`, :func:`check_bool`,
  :func:`check_choice`, :func:`check_dt_range`;
- tensors: :func:`check_tensor` (rank, shape, dtype family, allowed dtypes, finite values),
  :func:`check_finite`, :func:`check_dtype`, :func:`check_state` (a recurrent state);
- an input whose dtype differs from the parameters': :func:`match_parameter_dtype`.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import threading
from typing import Iterable, Iterator, Optional, Sequence

import torch

__all__ = [
    "check_tensor",
    "check_dtype",
    "check_finite",
    "check_state",
    "check_int",
    "check_positive_int",
    "check_even_int",
    "check_float",
    "check_positive",
    "check_fraction",
    "check_bool",
    "check_choice",
    "check_dt_range",
    "check_sequence_input",
    "check_step_input",
    "check_mask",
    "right_padding_lengths",
    "match_parameter_dtype",
    "trusted_inputs",
    "value_checks_enabled",
    "REAL_DTYPES",
    "FULL_PRECISION",
]

# the real floating dtypes every kernel computes in; half precision is accepted only where a
# function says so (and then computed in float32)
FULL_PRECISION = (torch.float32, torch.float64)
REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_local = threading.local()


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)


def value_checks_enabled() -> bool:
    """False inside :func:`trusted_inputs` (and while torch.compile traces)."""
    return not (getattr(_local, "trusted", 0) or _is_compiling())


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Skip full-tensor value checks (finite values, ranges) inside this block.

    For ssmkit's own internal calls, after the public entry point has checked its inputs once
    (e.g. a model checks its input, then its layers trust it). Shape and dtype checks still run.
    """
    _local.trusted = getattr(_local, "trusted", 0) + 1
    try:
        yield
    finally:
        _local.trusted -= 1


# --- scalars ---------------------------------------------------------------------------------
def _describe(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def check_int(name: str, v, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """An integer (not a bool, not a float such as 3.0, not a string) within [minimum, maximum]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(v)}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_positive_int(name: str, v, *, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (default 1)."""
    return check_int(name, v, minimum=minimum)


def check_even_int(name: str, v, *, minimum: int = 2) -> int:
    """An even integer >= ``minimum`` (state sizes of layers that keep conjugate pairs)."""
    v = check_int(name, v, minimum=minimum)
    if v % 2:
        raise ValueError(f"{name} must be even (the state holds complex-conjugate pairs), got {v}")
    return v


def check_float(name: str, v, *, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (int or float, not bool) in the interval given by ``low``/``high``;
    ``low_open``/``high_open`` exclude the end points."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(v)}")
    v = float(v)
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    want = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number in {want}, got {v!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be in {want}, got {v!r}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValueError(f"{name} must be in {want}, got {v!r}")
    return v


def check_positive(name: str, v, *, allow_zero: bool = False):
    """A positive finite number, or a real tensor whose entries all are (returned unchanged)."""
    if isinstance(v, torch.Tensor) and v.numel() != 1:
        if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got {v.dtype}")
        if value_checks_enabled() and v.numel():
            check_finite(name, v)
            bad = (v < 0) if allow_zero else (v <= 0)
            if bool(bad.any()):
                raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got min {v.min().item():g}")
        return v
    check_float(name, v, low=0.0, low_open=not allow_zero)
    return v


def check_fraction(name: str, v, *, allow_zero: bool = True, allow_one: bool = False) -> float:
    """A number in [0, 1) by default (a dropout rate, a held-out fraction)."""
    return check_float(name, v, low=0.0, high=1.0, low_open=not allow_zero, high_open=not allow_one)


def check_bool(name: str, v) -> bool:
    """A real bool (not 0/1, not a string)."""
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(v)}")
    return v


def check_choice(name: str, v, choices: Iterable[str]) -> str:
    """One of ``choices`` (case-sensitive strings)."""
    choices = tuple(choices)
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"unknown {name} {v!r}; expected one of {', '.join(map(repr, choices))}")
    return v


def check_dt_range(dt_min, dt_max, *, names: Sequence[str] = ("dt_min", "dt_max")) -> tuple:
    """The log-uniform range of the discretization step: 0 < dt_min <= dt_max, both finite."""
    lo = check_float(names[0], dt_min, low=0.0, low_open=True)
    hi = check_float(names[1], dt_max, low=0.0, low_open=True)
    if lo > hi:
        raise ValueError(f"{names[0]} must be <= {names[1]}, got {names[0]}={lo:g} > {names[1]}={hi:g}")
    return lo, hi


# --- tensors ---------------------------------------------------------------------------------
def check_dtype(name: str, x: torch.Tensor, allowed: Sequence[torch.dtype]) -> torch.Tensor:
    """``x.dtype`` is one of ``allowed``."""
    if x.dtype not in tuple(allowed):
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names}; got {str(x.dtype).replace('torch.', '')}")
    return x


def check_tensor(
    name: str,
    x,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
    complex_ok: bool = False,
    dtypes: Sequence[torch.dtype] | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the expected rank/shape/dtype with finite values.

    ``shape`` may hold ``None`` for free dimensions. ``floating`` requires a real floating
    dtype (or complex when ``complex_ok``); ``dtypes`` restricts it to a list. ``finite``
    checks every value (skipped inside :func:`trusted_inputs`). Returns ``x`` unchanged.
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
            kind = "a floating or complex" if complex_ok else "a real floating-point"
            raise TypeError(f"{name} must have {kind} dtype, got {x.dtype}")
    if dtypes is not None:
        check_dtype(name, x, dtypes)
    if finite:
        check_finite(name, x)
    return x


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or ±inf in ``x`` (non-empty, floating or complex): its minimum and maximum are
    finite (both are NaN if any element is). One reduction without a boolean tensor, about 15x
    faster than ``isfinite(x).all()`` on the CPU; that is the fallback where ``aminmax`` is not
    implemented."""
    try:
        v = torch.view_as_real(x.resolve_conj()) if x.is_complex() else x
        lo, hi = torch.aminmax(v)
    except (RuntimeError, NotImplementedError):
        return bool(torch.isfinite(x).all())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ValueError if ``x`` holds NaN or ±inf (skipped inside :func:`trusted_inputs`)."""
    if value_checks_enabled() and (x.is_floating_point() or x.is_complex()) and x.numel() > 0:
        if not _all_finite(x):
            raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_state(name: str, state, shape: Sequence[int], *, complex_ok: bool = True) -> torch.Tensor:
    """A recurrent state: a floating (or complex) tensor of exactly ``shape``, finite."""
    shape = tuple(int(s) for s in shape)
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shape}, got {type(state).__name__}")
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(state.shape)}")
    return check_tensor(name, state, floating=True, complex_ok=complex_ok)


# --- sequences (the SequenceLayer protocol's inputs) --------------------------------------
def check_sequence_input(x, d_model: int, name: str = "x") -> torch.Tensor:
    """Validate a (batch, length, d_model) real floating tensor with length >= 1."""
    check_tensor(name, x, ndim=3, floating=True)
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} must have shape (batch, length, {d_model}), got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have length >= 1, got shape {tuple(x.shape)}")
    return x


def check_mask(mask, x: torch.Tensor, name: str = "mask") -> Optional[torch.Tensor]:
    """Validate a (batch, length) padding mask, True at real tokens. Returns it as bool."""
    if mask is None:
        return None
    check_tensor(name, mask, shape=(x.shape[0], x.shape[1]), finite=False)
    if mask.dtype != torch.bool:
        if mask.is_floating_point():
            raise TypeError(f"{name} must be bool (True at real tokens), got {mask.dtype}")
        mask = mask != 0
    return mask


def right_padding_lengths(mask: Optional[torch.Tensor], L: int) -> Optional[torch.Tensor]:
    """Per-sequence lengths of a right-padding mask (True, ..., True, False, ...); None for no mask.

    Raises ValueError for any other pattern: the layers' final states assume real tokens first.
    """
    if mask is None:
        return None
    lengths = mask.sum(1)
    if not bool((torch.arange(L, device=mask.device)[None, :] < lengths[:, None]).eq(mask).all()):
        raise ValueError("mask must be right padding (True for real tokens, then False)")
    return lengths


def match_parameter_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The one rule for a floating input whose dtype differs from the parameters' ``dtype``: it
    is cast to ``dtype`` (so a float32 model computes in float32 whatever it is given), and
    the caller returns its output in the input's dtype (layers) or the model's dtype (models).

    Inside ``torch.autocast`` on the input's device, an input in the autocast dtype is left as
    it is: mixed precision is expected there and autocast chooses each operation's dtype (other
    dtypes, e.g. float64, which autocast does not convert, are still cast). Non-floating inputs
    (token ids) are returned unchanged."""
    if x.dtype == dtype or not x.is_floating_point() or not dtype.is_floating_point:
        return x
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype == torch.get_autocast_dtype(device):
        return x
    return x.to(dtype)


def check_step_input(x_t, d_model: int) -> torch.Tensor:
    """Validate one token ``x_t`` of shape (batch, d_model) for ``step``: real floating, finite."""
    if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2 or x_t.shape[-1] != d_model:
        raise ValueError(f"x_t must have shape (batch, {d_model}), got "
                         f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}")
    return check_tensor("x_t", x_t, floating=True)

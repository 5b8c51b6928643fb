"""Building blocks of the reliability suite (tests/test_reliability_properties.py).

A *case* is one call of a public entry point with drawn arguments, plus what the call must do:

- ``bad``: arguments that were made invalid (NaN/inf, a wrong type, an out-of-range number, a
  wrong shape). The call must raise ValueError/TypeError whose message names one of ``names``
  (by default the bad arguments themselves) as a whole word.
- ``maybe``: arguments whose value the entry point may accept or refuse (half precision, int or
  complex dtypes, length 0): either a correct answer or a ValueError/TypeError naming one of them.
- otherwise the call must succeed with a finite output that passes ``check`` (shape), and, when
  any input is in lower precision or not contiguous, agree with the same call on float64
  contiguous copies of the inputs (``ref``) within a tolerance set by the lowest precision.

Tensor arguments are drawn as :class:`T` descriptions (shape, dtype, values, memory layout,
injected NaN/inf) so that a failing case prints as a short readable line and rebuilds
bit-for-bit from its description.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from hypothesis import strategies as st

# relative max-norm tolerance against the float64 result, by the lowest precision of any input
TOLERANCE = {torch.float64: 1e-7, torch.complex128: 1e-7, torch.float32: 2e-3, torch.complex64: 2e-3,
             torch.float16: 2e-2, torch.bfloat16: 8e-2}
LOW_PRECISION = (torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
SPECIALS = ("nan", "inf", "-inf")


# --- tensor arguments ------------------------------------------------------------------------
@dataclass
class T:
    """A tensor argument described by its shape, dtype, values and memory layout.

    ``kind``: ``normal`` (N(0,1)), ``unit`` (U(-1,1)), ``pos`` (U(0.05,1)), ``neg`` (-U(0.05,1)),
    ``cneg`` (complex: real part -U(0.05,1), imaginary N(0,1)), ``tokens:V`` (ints in [0, V)),
    ``mask:l1,l2,...`` (right padding with these lengths), ``fixed`` (``value`` as given).
    ``layout``: ``contig``, ``strided`` (every other element of a wider buffer), ``transposed``
    (column-major memory), ``expanded`` (stride 0 along the first dimension).
    ``special``: NaN or ±inf written into one element.
    """

    shape: tuple
    dtype: torch.dtype = torch.float32
    kind: str = "normal"
    layout: str = "contig"
    special: str = ""
    seed: int = 0
    scale: float = 1.0
    value: Optional[torch.Tensor] = field(default=None, repr=False)

    def numel(self) -> int:
        return math.prod(self.shape)

    def values64(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        shape, kind = tuple(self.shape), self.kind
        if kind == "fixed":
            return self.value.clone()
        if kind.startswith("tokens:"):
            return torch.randint(0, int(kind.split(":")[1]), shape, generator=g)
        if kind.startswith("mask:"):
            lengths = [int(v) for v in kind.split(":")[1].split(",") if v != ""]
            L = shape[1]
            return torch.arange(L)[None, :] < torch.tensor(lengths, dtype=torch.long).reshape(-1, 1)
        if kind == "normal":
            v = torch.randn(shape, generator=g, dtype=torch.float64)
        elif kind == "unit":
            v = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
        elif kind == "pos":
            v = 0.05 + 0.95 * torch.rand(shape, generator=g, dtype=torch.float64)
        elif kind == "neg":
            v = -(0.05 + 0.95 * torch.rand(shape, generator=g, dtype=torch.float64))
        elif kind == "cneg":
            re_ = -(0.05 + 0.95 * torch.rand(shape, generator=g, dtype=torch.float64))
            v = torch.complex(re_, torch.randn(shape, generator=g, dtype=torch.float64))
        elif kind == "cnormal":
            v = torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                              torch.randn(shape, generator=g, dtype=torch.float64))
        else:
            raise ValueError(kind)
        return v * self.scale

    def build(self) -> torch.Tensor:
        v = self.values64()
        if v.is_complex() and not self.dtype.is_complex:
            v = v.real if self.dtype.is_floating_point else v.real.round()
        if self.dtype.is_complex and not v.is_complex():
            v = v.to(torch.complex128)
        if self.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8) and v.is_floating_point():
            v = v.round()
        v = v.to(self.dtype)
        if self.special and v.numel() and (v.is_floating_point() or v.is_complex()):
            flat = v.reshape(-1).clone()
            flat[self.seed % flat.numel()] = float(self.special)
            v = flat.reshape(v.shape)
        return apply_layout(v, self.layout)

    def describe(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        extra = "" if self.layout == "contig" else f",{self.layout}"
        sp = f",{self.special}" if self.special else ""
        kind = "" if self.kind in ("normal", "fixed") else f",{self.kind}"
        return f"T{tuple(self.shape)}{dt}{kind}{extra}{sp}"


def apply_layout(v: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``v`` in a different memory layout (a non-contiguous view)."""
    if layout == "contig" or v.dim() == 0 or v.numel() == 0:
        return v
    if layout == "strided":
        buf = torch.zeros(v.shape[:-1] + (2 * v.shape[-1],), dtype=v.dtype)
        out = buf[..., ::2]
        out.copy_(v)
        return out
    if layout == "transposed":
        if v.dim() < 2:
            return apply_layout(v, "strided")
        return v.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "expanded":
        return v[:1].expand(v.shape) if v.shape[0] > 1 else apply_layout(v, "strided")
    raise ValueError(layout)


def describe(v) -> str:
    if isinstance(v, T):
        return v.describe()
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)}{str(v.dtype).replace('torch.', '')}"
    if isinstance(v, (list, tuple)) and any(isinstance(e, (T, torch.Tensor, list, tuple)) for e in v):
        inner = ", ".join(describe(e) for e in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    r = repr(v)
    return r if len(r) < 60 else r[:57] + "..."


def build(v):
    """Build every :class:`T` inside ``v`` (nested lists/tuples/dicts)."""
    if isinstance(v, T):
        return v.build()
    if isinstance(v, list):
        return [build(e) for e in v]
    if isinstance(v, tuple):
        return tuple(build(e) for e in v)
    if isinstance(v, dict):
        return {k: build(e) for k, e in v.items()}
    return v


def upcast(v):
    """float64 / complex128 contiguous copies of every floating tensor in ``v`` (the reference)."""
    if isinstance(v, torch.Tensor):
        if v.is_complex():
            return v.to(torch.complex128).contiguous()
        if v.is_floating_point():
            return v.to(torch.float64).contiguous()
        return v.contiguous()
    if isinstance(v, list):
        return [upcast(e) for e in v]
    if isinstance(v, tuple):
        return tuple(upcast(e) for e in v)
    if isinstance(v, dict):
        return {k: upcast(e) for k, e in v.items()}
    return v


def _tensors(v):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for e in v:
            yield from _tensors(e)
    elif isinstance(v, dict):
        for e in v.values():
            yield from _tensors(e)


def lowest_precision(v) -> Optional[torch.dtype]:
    """The least precise floating dtype among the tensors in ``v`` (None: no floating tensor)."""
    order = [torch.bfloat16, torch.float16, torch.float32, torch.complex64, torch.float64, torch.complex128]
    found = [t.dtype for t in _tensors(v) if t.dtype in order]
    return min(found, key=order.index) if found else None


def needs_reference(v) -> bool:
    """True when some tensor of ``v`` is not float64/complex128 or not contiguous."""
    for t in _tensors(v):
        if (t.is_floating_point() or t.is_complex()) and t.dtype not in (torch.float64, torch.complex128):
            return True
        if not t.is_contiguous():
            return True
    return False


# --- strategies ------------------------------------------------------------------------------
seeds = st.integers(0, 2**16)
layouts = st.sampled_from(("strided", "transposed", "expanded"))
odd_dtypes = st.sampled_from((torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.int64))
specials = st.sampled_from(SPECIALS)

# values that no int argument accepts, and those no positive-int argument accepts
NOT_INTS = (True, False, 2.0, 2.5, "3", float("nan"), float("inf"), None, [2])
BAD_POSITIVE_INTS = NOT_INTS + (0, -1, -7)
BAD_NONNEG_INTS = NOT_INTS + (-1, -7)
# values that no positive real argument accepts
NOT_REALS = ("0.1", None, [0.1], True)
BAD_POSITIVE_REALS = NOT_REALS + (0, 0.0, -0.5, -1, float("nan"), float("inf"), float("-inf"))
BAD_NONNEG_REALS = NOT_REALS + (-0.5, -1, float("nan"), float("inf"), float("-inf"))
BAD_FINITE_REALS = NOT_REALS + (float("nan"), float("inf"), float("-inf"))
BAD_BOOLS = (0, 1, "yes", None, 1.0)
BAD_CHOICES = ("", "nope", 3, None, "LEGS ")


# --- cases -----------------------------------------------------------------------------------
@dataclass
class Case:
    """One call of an entry point and what it must do (see the module docstring)."""

    what: str  # "S4D.forward", ...
    call: Callable[[Dict[str, Any]], Any]
    args: Dict[str, Any]
    bad: Sequence[str] = ()
    maybe: Sequence[str] = ()
    names: Sequence[str] = ()  # acceptable names in an error (defaults to bad + maybe)
    check: Optional[Callable[[Any, Dict[str, Any]], Optional[str]]] = None  # output -> problem or None
    ref: Optional[Callable[[Dict[str, Any]], Any]] = None  # the float64 call (default: call)
    always_compare: bool = False  # compare with ``ref`` even for float64 contiguous inputs
    compare: bool = True  # compare with the float64 reference when useful
    tol: Optional[float] = None  # override of the tolerance
    finite_output: bool = True  # outputs must be finite
    deterministic: bool = True  # a second call on the same inputs gives bit-identical outputs

    def describe(self) -> str:
        args = ", ".join(f"{k}={describe(v)}" for k, v in self.args.items())
        flags = ""
        if self.bad:
            flags += f"  [bad: {', '.join(self.bad)}]"
        if self.maybe:
            flags += f"  [maybe: {', '.join(self.maybe)}]"
        return f"{self.what}({args}){flags}"


def names_any(message: str, names: Sequence[str]) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


def _flatten_out(out):
    return list(_tensors(out))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.is_complex() or b.is_complex():
        a, b = a.to(torch.complex128), b.to(torch.complex128)
    else:
        a, b = a.to(torch.float64), b.to(torch.float64)
    if a.numel() == 0:
        return 0.0
    err = float((a - b).abs().max())
    scale = float(b.abs().max())
    return err / max(scale, 1e-12) if scale > 1e-6 else err


def evaluate(case: Case) -> Optional[tuple]:
    """Run ``case``; None if it behaves, else ``(category, detail)``."""
    args = build(case.args)
    names = tuple(case.names) or tuple(case.bad) + tuple(case.maybe)
    try:
        out = case.call(args)
    except (ValueError, TypeError) as e:
        msg = f"{type(e).__name__}: {e}"
        if not case.bad and not case.maybe:
            return ("refused a valid input", msg)
        if not names_any(str(e), names):
            return (f"error does not name {'/'.join(names)}", msg)
        return None
    except Exception as e:  # noqa: BLE001 - the point is to see every other kind
        return (f"bare {type(e).__name__}", f"{type(e).__name__}: {str(e)[:300]}")
    if case.bad:
        return (f"accepted invalid {'/'.join(case.bad)}", f"returned {describe_out(out)}")
    tensors = _flatten_out(out)
    if case.finite_output:
        for t in tensors:
            if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
                return ("non-finite output", f"returned {describe_out(out)}")
    if case.check is not None:
        try:
            problem = case.check(out, args)
        except Exception as e:  # noqa: BLE001 - a check that cannot even run on the output
            problem = f"checking the output raised {type(e).__name__}: {str(e)[:200]}"
        if problem:
            return ("wrong output", problem)
    if case.deterministic and tensors:
        try:
            again = _flatten_out(case.call(build(case.args)))
        except Exception as e:  # noqa: BLE001
            return ("not deterministic", f"a second identical call raised {type(e).__name__}: {str(e)[:200]}")
        if len(again) != len(tensors) or not all(torch.equal(a, b) for a, b in zip(tensors, again)):
            return ("not deterministic", "a second identical call gave different outputs")
    if case.compare and (needs_reference(args) or (case.always_compare and case.ref is not None)):
        ref_call = case.ref or case.call
        try:
            ref = ref_call(upcast(args))
        except Exception as e:  # noqa: BLE001
            return ("float64 reference failed", f"{type(e).__name__}: {str(e)[:200]}")
        rt = _flatten_out(ref)
        if len(rt) != len(tensors):
            return ("wrong output", f"{len(tensors)} tensors vs {len(rt)} for float64")
        low = lowest_precision(args) or torch.float64
        tol = case.tol or TOLERANCE[low]
        for i, (a, b) in enumerate(zip(tensors, rt)):
            if tuple(a.shape) != tuple(b.shape):
                return ("wrong output", f"output {i} shape {tuple(a.shape)} vs {tuple(b.shape)} for float64")
            if not (a.is_floating_point() or a.is_complex()):
                if not torch.equal(a, b):
                    return ("differs from float64 result", f"output {i} (integer) differs")
                continue
            e = _rel_err(a, b)
            if not e <= tol:
                return ("differs from float64 result", f"output {i}: rel. error {e:.3g} > {tol:g} ({low})")
    return None


def describe_out(out) -> str:
    ts = _flatten_out(out)
    if not ts:
        return repr(out)[:80]
    parts = []
    for t in ts[:4]:
        fin = "" if not (t.is_floating_point() or t.is_complex()) or not t.numel() else \
            (" finite" if bool(torch.isfinite(t).all()) else " NON-FINITE")
        parts.append(f"{tuple(t.shape)}{str(t.dtype).replace('torch.', '')}{fin}")
    return ", ".join(parts)


def shape_is(*expected):
    """A ``check`` that the flattened output tensors have these shapes (None: any)."""
    def check(out, args):
        ts = _flatten_out(out)
        got = [tuple(t.shape) for t in ts]
        want = [tuple(e) if e is not None else None for e in expected]
        if len(got) < len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            return f"output shapes {got}, expected {want}"
        return None
    return check


# --- generic perturbations ---------------------------------------------------------------------
def perturb_tensor(draw, t: T, allow=("special", "dtype", "layout")) -> tuple:
    """A variant of the valid tensor ``t``: returns (new T, effect) with effect "bad", "maybe" or
    "ok" (the entry point must still give the right answer)."""
    how = draw(st.sampled_from(allow))
    if how == "special":
        if t.numel() == 0 or not (t.dtype.is_floating_point or t.dtype.is_complex):
            return t, "ok"  # nothing to write NaN into (no elements, or bool/integer values)
        return replace(t, special=draw(specials)), "bad"
    if how == "dtype":
        dt = draw(odd_dtypes)
        if dt == t.dtype:
            return t, "ok"
        if dt == torch.float64 and t.dtype in (torch.float32, torch.float64):
            return replace(t, dtype=dt), "maybe"
        if t.dtype.is_complex and dt == torch.complex64:
            return replace(t, dtype=dt), "maybe"
        return replace(t, dtype=dt), "maybe"
    if how == "layout":
        return replace(t, layout=draw(layouts)), "ok"
    raise ValueError(how)

"""Property-based reliability suite: every public entry point, fed random shapes, dtypes,
strides, empty batches, length 0 and 1, NaN/inf in every tensor argument and state, and
out-of-range scalars, either returns a correct finite answer of the right shape or raises a
ValueError/TypeError that names the argument (docs/reliability.md states the contract).

How it runs: each entry point's hypothesis loop (``derandomize=True``: the same examples on
every run) executes in a child process, which records every case before calling it; a case
that aborts or segfaults the child (or hangs) is reported as a failure of that entry point and
the remaining entry points continue in a fresh child. Cases that break the contract do not
stop the loop: every one is collected, grouped by kind, and printed by the failing test.

``pytest -m slow tests/test_reliability_properties.py`` runs many more examples per entry point.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ssmkit
from ssmkit import lti
from ssmkit.kernels import vandermonde_kernel_ref
from ssmkit.layers import run_steps
from ssmkit.ops import causal_conv_ref, linear_scan_ref, selective_scan_ref, ssd_ref

try:  # running as the child process: tests/ is on sys.path
    from strategies import (BAD_BOOLS, BAD_CHOICES, BAD_FINITE_REALS, BAD_NONNEG_INTS, BAD_NONNEG_REALS,
                            BAD_POSITIVE_INTS, BAD_POSITIVE_REALS, NOT_INTS, TOLERANCE, Case, T, evaluate,
                            lowest_precision, perturb_tensor, seeds, shape_is, specials, upcast)
except ImportError:  # pragma: no cover
    from .strategies import (BAD_BOOLS, BAD_CHOICES, BAD_FINITE_REALS, BAD_NONNEG_INTS, BAD_NONNEG_REALS,
                             BAD_POSITIVE_INTS, BAD_POSITIVE_REALS, NOT_INTS, TOLERANCE, Case, T, evaluate,
                             lowest_precision, perturb_tensor, seeds, shape_is, specials, upcast)

HERE = Path(__file__).resolve().parent
ENTRY_POINTS: "OrderedDict[str, callable]" = OrderedDict()


def entry(name, examples=30):
    """Register a case builder ``fn(draw) -> Case`` for entry point ``name``."""
    def deco(fn):
        fn.examples = examples
        ENTRY_POINTS[name] = fn
        return fn
    return deco


# --- helpers for the builders -------------------------------------------------------------
def pick(draw, options):
    return draw(st.sampled_from(options))


def sizes(draw, lo=0, hi=3):
    """A batch size, with 0 drawn often."""
    return draw(st.one_of(st.just(0), st.integers(lo, hi)))


def tensor_case(draw, what, fn, tensors, scalars=None, *, bad_scalars=None, check=None, ref=None, shape_names=None,
                modes=("valid", "tensor", "tensor", "scalar", "type", "alldtype"), compare=True, tol=None,
                extra_bad=None, maybe=(), error_names=(), module=False, always_compare=None):
    """The generic case: valid tensors/scalars, then at most one perturbation.

    ``tensors``: name -> T (valid); ``scalars``: name -> valid value; ``bad_scalars``: name ->
    values that must be refused; ``extra_bad``: name -> (value, names) special invalid values
    (a wrong shape, a value out of the domain) that must be refused naming one of ``names``.
    """
    tensors = {k: v for k, v in tensors.items()}
    scalars = dict(scalars or {})
    bad, may, names = [], list(maybe), list(error_names)
    modes = list(modes)
    if extra_bad:
        modes.append("extra")
    if not bad_scalars:
        modes = [m for m in modes if m != "scalar"]
    present = [k for k, v in tensors.items() if v is not None]
    mode = pick(draw, modes) if present or "scalar" in modes else "valid"
    if mode in ("tensor", "type", "alldtype") and not present:
        mode = "valid"
    if mode == "tensor":
        k = pick(draw, present)
        new, effect = perturb_tensor(draw, tensors[k])
        tensors[k] = new
        {"bad": bad, "maybe": may}.get(effect, []).append(k)
    elif mode == "alldtype":
        dt = pick(draw, (torch.float16, torch.bfloat16, torch.float64))
        for k in present:
            t = tensors[k]
            if t.dtype.is_floating_point and t.dtype != dt:
                tensors[k] = replace(t, dtype=dt)
                if dt != torch.float64 or module:
                    may.append(k)
    elif mode == "type":
        k = pick(draw, present)
        tensors[k] = pick(draw, ("a string", [1.0, 2.0], {"value": 1.0}))
        bad.append(k)
    elif mode == "scalar":
        k = pick(draw, sorted(bad_scalars))
        scalars[k] = pick(draw, tuple(bad_scalars[k]))
        bad.append(k)
    elif mode == "extra":
        k = pick(draw, sorted(extra_bad))
        value, nm = extra_bad[k]
        if k in tensors:
            tensors[k] = value
        else:
            scalars[k] = value
        bad.append(k)
        names.extend(nm)
    args = {**tensors, **scalars}
    return Case(what, lambda a: fn(**a), args, bad=bad, maybe=may, names=tuple(names) + tuple(bad) + tuple(may),
                check=check, ref=ref, compare=compare, tol=tol,
                always_compare=ref is not None if always_compare is None else always_compare)


# --- HiPPO ---------------------------------------------------------------------------------
MEASURES = ("legt", "lmu", "legs", "lagt", "fout")


@entry("transition")
def _transition(draw):
    measure = pick(draw, MEASURES)
    N = draw(st.integers(1, 8)) if measure != "fout" else 2 * draw(st.integers(1, 4))
    dtype = pick(draw, (torch.float64, torch.float32))
    return tensor_case(draw, "transition", ssmkit.transition, {},
                       dict(measure=measure, N=N, dtype=dtype, theta=draw(st.floats(0.1, 10))),
                       bad_scalars=dict(N=BAD_POSITIVE_INTS, theta=BAD_POSITIVE_REALS, measure=BAD_CHOICES,
                                        dtype=("float32", 3, torch.int64, None)),
                       check=shape_is((N, N), (N,)), modes=("valid", "scalar", "scalar"))


@entry("discretize")
def _discretize(draw):
    N = draw(st.integers(1, 5))
    A = T((N, N), torch.float64, kind="fixed", value=ssmkit.transition("legs", N)[0])
    B = T((N,), torch.float64, seed=draw(seeds))
    per_channel = draw(st.booleans())
    H = sizes(draw)
    dt = T((H,), torch.float64, "pos", seed=draw(seeds), scale=0.1) if per_channel else draw(st.floats(1e-3, 1.0))
    S = (H,) if per_channel else ()
    return tensor_case(draw, "discretize", ssmkit.discretize, dict(A=A, B=B, dt=dt) if per_channel else dict(A=A, B=B),
                       dict(method=pick(draw, ("bilinear", "zoh", "forward_euler", "backward_euler")),
                            **({} if per_channel else dict(dt=dt))),
                       bad_scalars=dict(method=BAD_CHOICES, **({} if per_channel else dict(dt=BAD_POSITIVE_REALS))),
                       extra_bad=dict(B=(T((N + 1,), torch.float64), ("A", "B"))),
                       check=shape_is(S + (N, N), S + (N,)))


@entry("basis")
def _basis(draw):
    measure = pick(draw, MEASURES)
    N = draw(st.integers(1, 6)) if measure != "fout" else 2 * draw(st.integers(1, 3))
    P = sizes(draw, 1, 9)
    s = T((P,), torch.float64, "pos", seed=draw(seeds))
    return tensor_case(draw, "basis", ssmkit.basis, dict(s=s), dict(measure=measure, N=N, theta=1.0),
                       bad_scalars=dict(N=BAD_POSITIVE_INTS, measure=BAD_CHOICES, theta=BAD_POSITIVE_REALS),
                       check=shape_is((P, N)))


@entry("nplr")
def _nplr(draw):
    return tensor_case(draw, "nplr", ssmkit.nplr, {}, dict(measure=pick(draw, ("legs", "legt")), N=2 * draw(st.integers(1, 4))),
                       bad_scalars=dict(N=BAD_POSITIVE_INTS + (3, 5), measure=BAD_CHOICES + ("lagt",)),
                       modes=("valid", "scalar", "scalar"))


@entry("HiPPO")
def _hippo_ctor(draw):
    return tensor_case(draw, "HiPPO", ssmkit.HiPPO, {},
                       dict(measure=pick(draw, MEASURES), N=2 * draw(st.integers(1, 4)), dt=0.01, theta=1.0,
                            method=pick(draw, ("bilinear", "zoh", "forward_euler", "backward_euler"))),
                       bad_scalars=dict(N=BAD_POSITIVE_INTS, dt=BAD_POSITIVE_REALS, theta=BAD_POSITIVE_REALS,
                                        measure=BAD_CHOICES, method=BAD_CHOICES),
                       modes=("valid", "scalar", "scalar", "scalar"))


def _memory(draw):
    measure = pick(draw, ("legs", "legt", "lagt", "fout"))
    N = 2 * draw(st.integers(1, 3))
    return ssmkit.HiPPO(measure, N, dt=0.05, theta=1.0), measure, N


@entry("HiPPO.encode")
def _hippo_encode(draw):
    mem, measure, N = _memory(draw)
    batched = draw(st.booleans())
    b, L = sizes(draw), draw(st.integers(0, 12))
    lead = (b,) if batched else ()
    u = T(lead + (L,), pick(draw, (torch.float64, torch.float32)), seed=draw(seeds))
    tensors = dict(u=u)
    maybe = ["u"] if L == 0 else []
    if draw(st.booleans()):
        tensors["c0"] = T(lead + (N,), torch.float64, seed=draw(seeds))
    if L and "c0" not in tensors and draw(st.integers(0, 3)) == 0:  # c0/k0 continue a uniform stream
        steps = torch.rand(L, generator=torch.Generator().manual_seed(draw(seeds)), dtype=torch.float64) + 0.1
        tensors["times"] = T((L,), torch.float64, "fixed", value=torch.cumsum(steps, 0) * 0.05)
    grad = draw(st.integers(0, 4)) == 0
    extra = dict(k0=(-1, ("k0",)), c0=(T(lead + (N + 1,), torch.float64), ("c0",)))
    if L >= 2 and "c0" not in tensors:
        extra["times"] = (T((L,), torch.float64, "fixed", value=torch.zeros(L)), ("times",))

    def call(u, grad=grad, **kw):
        if grad and isinstance(u, torch.Tensor) and u.is_floating_point():
            u = u.clone().requires_grad_(True)
        return mem.encode(u, **kw)

    return tensor_case(draw, "HiPPO.encode" + ("[u.requires_grad]" if grad else ""), call, tensors,
                       dict(k0=draw(st.integers(0, 5)) if "c0" in tensors else 0), bad_scalars=dict(k0=BAD_NONNEG_INTS),
                       extra_bad=extra, maybe=maybe, check=shape_is(lead + (L, N)))


@entry("HiPPO.step")
def _hippo_step(draw):
    mem, measure, N = _memory(draw)
    b = sizes(draw)
    c = T((b, N), torch.float64, seed=draw(seeds))
    scalar_u = draw(st.booleans())
    u_t = draw(st.floats(-2, 2)) if scalar_u else T((b,), torch.float64, seed=draw(seeds))
    tensors = dict(c=c) if scalar_u else dict(c=c, u_t=u_t)
    if draw(st.integers(0, 2)) == 0:  # irregular steps: sample times t > t_prev > 0
        t_prev = draw(st.floats(0.01, 5))
        scalars = dict(t=t_prev + draw(st.floats(0.001, 1)), t_prev=t_prev)
        if scalar_u:
            scalars["u_t"] = u_t
        return tensor_case(draw, f"HiPPO({measure!r}).step", mem.step, tensors, scalars,
                           bad_scalars=dict(t=BAD_FINITE_REALS + (t_prev, t_prev - 0.5), t_prev=BAD_FINITE_REALS),
                           error_names=("t", "t_prev", "t - t_prev"), check=shape_is((b, N)))
    scalars = dict(k=draw(st.integers(0, 20)))
    if scalar_u:
        scalars["u_t"] = u_t
    bad_scalars = dict(k=NOT_INTS[:-3] + (-1,)) if measure == "legs" else {}
    if scalar_u:  # (a one-element list broadcasts like a tensor: not refused here)
        bad_scalars["u_t"] = tuple(v for v in BAD_FINITE_REALS if not isinstance(v, list))
    return tensor_case(draw, f"HiPPO({measure!r}).step", mem.step, tensors, scalars, bad_scalars=bad_scalars,
                       extra_bad=dict(c=(T((b, N + 1), torch.float64), ("c",))), check=shape_is((b, N)))


@entry("HiPPO.reconstruct")
def _hippo_reconstruct(draw):
    mem, measure, N = _memory(draw)
    b = sizes(draw)
    c = T((b, N), torch.float64, seed=draw(seeds))
    P = draw(st.integers(1, 20))
    with_s = draw(st.booleans())
    tensors = dict(c=c)
    scalars = dict(num_points=P)
    if with_s:
        tensors["s"] = T((P,), torch.float64, "pos", seed=draw(seeds))
    return tensor_case(draw, f"HiPPO({measure!r}).reconstruct", mem.reconstruct, tensors, scalars,
                       bad_scalars=dict(num_points=BAD_POSITIVE_INTS) if not with_s else None,
                       extra_bad=dict(c=(T((b, N + 1), torch.float64), ("c",))), check=shape_is((b, P)))


@entry("HiPPO.initial_state")
def _hippo_initial_state(draw):
    mem, measure, N = _memory(draw)
    b = draw(st.one_of(st.none(), st.integers(0, 3)))
    return tensor_case(draw, "HiPPO.initial_state", mem.initial_state, {},
                       dict(batch_size=b, dtype=pick(draw, (torch.float64, torch.float32))),
                       bad_scalars=dict(batch_size=BAD_NONNEG_INTS[:-4] + (-1,), dtype=("float32", 3)),
                       check=shape_is(((b,) if b is not None else ()) + (N,)), modes=("valid", "scalar"))


# --- kernels ---------------------------------------------------------------------------------
def _length(draw, hi=24):
    L = draw(st.integers(0, hi))
    return L, BAD_POSITIVE_INTS


@entry("naive_kernel")
def _naive(draw):
    H, N = sizes(draw), draw(st.integers(1, 4))
    L = draw(st.integers(1, 20))
    dt = pick(draw, (torch.float64, torch.float32))
    Ad = T((H, N, N), dt, "unit", seed=draw(seeds), scale=0.9 / N)
    return tensor_case(draw, "naive_kernel", ssmkit.naive_kernel,
                       dict(Ad=Ad, Bd=T((H, N), dt, seed=draw(seeds)), C=T((H, N), dt, seed=draw(seeds))), dict(L=L),
                       bad_scalars=dict(L=BAD_POSITIVE_INTS), check=shape_is((H, L)),
                       extra_bad=dict(Bd=(T((H, N + 1), dt), ("Ad", "Bd")), C=(T((H, N + 1), dt), ("Ad", "C"))))


@entry("vandermonde_kernel")
def _vandermonde(draw):
    H, M, L = sizes(draw), draw(st.integers(1, 4)), draw(st.integers(1, 20))
    conj = draw(st.booleans())
    dt = pick(draw, (torch.complex64, torch.complex128))
    log_dA = T((H, M), dt, "cneg", seed=draw(seeds), scale=0.3)
    CB = T((H, M), dt, "cnormal", seed=draw(seeds))

    def ref(log_dA, CB, L, lag_block, conj_pairs):
        return vandermonde_kernel_ref(torch.exp(log_dA), CB, L, conj_pairs=conj_pairs)

    return tensor_case(draw, "vandermonde_kernel", ssmkit.vandermonde_kernel, dict(log_dA=log_dA, CB=CB),
                       dict(L=L, lag_block=pick(draw, (None, 1, 3, 64)), conj_pairs=conj),
                       bad_scalars=dict(L=BAD_POSITIVE_INTS, lag_block=BAD_POSITIVE_INTS[:-4] + (0, -2), conj_pairs=BAD_BOOLS),
                       extra_bad=dict(CB=(T((H, M + 1), dt, "cnormal"), ("CB", "log_dA"))),
                       check=shape_is((H, L)), ref=lambda a: ref(**a))


@entry("dplr_kernel")
def _dplr(draw):
    H, M, L, r = sizes(draw), draw(st.integers(1, 3)), draw(st.integers(1, 16)), draw(st.integers(1, 2))
    cd = pick(draw, (torch.complex64, torch.complex128))
    rd = torch.float32 if cd == torch.complex64 else torch.float64
    ts = dict(Lambda=T((H, M), cd, "cneg", seed=draw(seeds)), P=T((r, H, M), cd, "cnormal", seed=draw(seeds), scale=0.3),
              B=T((H, M), cd, "cnormal", seed=draw(seeds)), Ct=T((H, M), cd, "cnormal", seed=draw(seeds)),
              dt=T((H,), rd, "pos", seed=draw(seeds), scale=0.1))
    extra_bad = dict(B=(T((H, M + 1), cd, "cnormal"), ("B", "Lambda")))
    if H:  # (an empty dt holds no negative step: nothing to refuse)
        extra_bad["dt"] = (T((H,), rd, "neg"), ("dt",))
    return tensor_case(draw, "dplr_kernel", ssmkit.dplr_kernel, ts,
                       dict(L=L, freq_block=pick(draw, (512, 1, 4)), conj_pairs=draw(st.booleans()),
                            method=pick(draw, ("vandermonde", "cauchy"))),
                       bad_scalars=dict(L=BAD_POSITIVE_INTS, freq_block=BAD_POSITIVE_INTS, conj_pairs=BAD_BOOLS,
                                        method=BAD_CHOICES),
                       extra_bad=extra_bad,
                       check=shape_is((H, L)))


def _stable_poly(seed, H, N, radius=0.8, dtype=torch.float64):
    """Real denominators a_1..a_N whose poles lie inside |z| <= radius (random conjugate pairs)."""
    g = torch.Generator().manual_seed(seed)
    roots = []
    for _ in range(H):
        rs = []
        while len(rs) < N:
            rad = float(torch.rand(1, generator=g)) * radius
            ang = float(torch.rand(1, generator=g)) * math.pi
            if N - len(rs) >= 2:
                z = rad * complex(math.cos(ang), math.sin(ang))
                rs += [z, z.conjugate()]
            else:
                rs.append(complex(rad if ang < 1.5 else -rad, 0))
        roots.append(rs)
    r = torch.tensor(roots, dtype=torch.complex128).reshape(H, N)
    return lti.poly_from_roots(r).real.to(dtype)


@entry("rational_kernel")
def _rational(draw):
    H, N, L = sizes(draw), draw(st.integers(1, 4)), draw(st.integers(1, 20))
    dt = pick(draw, (torch.float64, torch.float32))
    a = T((H, N), dt, "fixed", value=_stable_poly(draw(seeds), H, N))
    ts = dict(a=a, b=T((H, N), dt, seed=draw(seeds)))
    if draw(st.booleans()):
        ts["h0"] = T((H,), dt, seed=draw(seeds))
    # a pole on the unit circle: (1 - z) times a stable factor
    unit = torch.cat([torch.ones(H, 1, dtype=torch.float64), _stable_poly(1, H, N - 1)], 1) if N > 1 else torch.ones(H, 1)
    unit_a = unit.clone()
    if N > 1:
        unit_a = unit[:, 1:] - unit[:, :-1]
        unit_a = torch.cat([unit_a, -unit[:, -1:]], 1)
    else:
        unit_a = -torch.ones(H, 1, dtype=torch.float64)
    extra = dict(b=(T((H, N + 1), dt), ("a", "b")))
    if H:
        extra["a"] = (T((H, N), dt, "fixed", value=unit_a), ("a",))
    return tensor_case(draw, "rational_kernel", ssmkit.rational_kernel, ts, dict(L=L),
                       bad_scalars=dict(L=BAD_POSITIVE_INTS), extra_bad=extra, check=shape_is((H, L)))


# --- operators -----------------------------------------------------------------------------
@entry("fftconv")
def _fftconv(draw):
    b, L, H = sizes(draw), draw(st.integers(0, 20)), draw(st.integers(1, 3))
    Lk = draw(st.integers(1, 24))
    dt = pick(draw, (torch.float64, torch.float32))
    layout = pick(draw, ("blh", "bhl"))
    shape = (b, L, H) if layout == "blh" else (b, H, L)
    ts = dict(u=T(shape, dt, seed=draw(seeds)), K=T((H, Lk), dt, seed=draw(seeds), scale=0.5))
    if draw(st.booleans()):
        ts["D"] = T((H,), dt, seed=draw(seeds))

    def ref(a):
        a = dict(a)
        if a.pop("layout") == "bhl":
            return causal_conv_ref(**dict(a, u=a["u"].transpose(1, 2))).transpose(1, 2)
        return causal_conv_ref(**a)

    return tensor_case(draw, "fftconv", ssmkit.fftconv, ts, dict(layout=layout), maybe=["u"] if L == 0 else [],
                       bad_scalars=dict(layout=BAD_CHOICES + ("lbh",)),
                       extra_bad=dict(K=(T((H + 1, Lk), dt), ("K", "u")), D=(T((H + 1,), dt), ("D",))),
                       check=shape_is(shape), ref=ref)


@entry("selective_scan", examples=45)
def _selective_scan(draw):
    b, d, L, n = sizes(draw), 2 * draw(st.integers(1, 2)), draw(st.integers(0, 12)), draw(st.integers(1, 4))
    dt = pick(draw, (torch.float32, torch.float64))
    G = pick(draw, (0, 1, 2))  # 0: (batch, N, L)
    softplus = draw(st.booleans())

    def bc():
        g = pick(draw, (0, 1, 2))
        return T((b, n, L) if g == 0 else (b, g, n, L), dt, seed=draw(seeds))

    ts = dict(u=T((b, d, L), dt, seed=draw(seeds)),
              delta=T((b, d, L), dt, "normal" if softplus else "pos", seed=draw(seeds)),
              A=T((d, n), dt, "neg", seed=draw(seeds)), B=bc(), C=bc())
    for k, shp in (("D", (d,)), ("z", (b, d, L)), ("delta_bias", (d,)), ("initial_state", (b, d, n))):
        if draw(st.booleans()):  # without softplus, delta + delta_bias is the step: >= 0
            ts[k] = T(shp, dt, "pos" if k == "delta_bias" and not softplus else "normal", seed=draw(seeds))
    scalars = dict(delta_softplus=softplus, return_last_state=draw(st.booleans()), checkpoint_every=pick(draw, (64, 1, 3)))
    extra = dict(A=(T((d, n), dt, "pos"), ("A",)), C=(T((b, 3, n, L), dt), ("C",)), B=(T((b, n + 1, L), dt), ("B",)))
    if not softplus and L and b:
        extra["delta"] = (T((b, d, L), dt, "neg"), ("delta",))
    shapes = [(b, d, L)] + ([(b, d, n)] if scalars["return_last_state"] else [])

    def ref(a):
        a = dict(a)
        a.pop("checkpoint_every", None)
        for k in ("B", "C"):  # one group per channel, so the reference sees B and C grouped alike
            M = a[k]
            M = M[:, None] if M.dim() == 3 else M
            a[k] = M.repeat_interleave(d // M.shape[1], dim=1)
        return selective_scan_ref(**a)

    return tensor_case(draw, "selective_scan", ssmkit.selective_scan, ts, scalars, maybe=["u"] if L == 0 else [],
                       bad_scalars=dict(delta_softplus=BAD_BOOLS, return_last_state=BAD_BOOLS,
                                        checkpoint_every=BAD_POSITIVE_INTS),
                       extra_bad=extra, check=shape_is(*shapes), ref=ref)


@entry("ssd", examples=35)
def _ssd(draw):
    b, L, H, P, N = sizes(draw), draw(st.integers(0, 12)), 2 * draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    G = pick(draw, (1, 2))
    dt = pick(draw, (torch.float32, torch.float64))
    ts = dict(x=T((b, L, H, P), dt, seed=draw(seeds)), dt=T((b, L, H), dt, "pos", seed=draw(seeds)),
              A=T((H,), dt, "neg", seed=draw(seeds)), B=T((b, L, G, N), dt, seed=draw(seeds)),
              C=T((b, L, G, N), dt, seed=draw(seeds)))
    if draw(st.booleans()):
        ts["initial_state"] = T((b, H, P, N), dt, seed=draw(seeds))
    extra = dict(A=(T((H,), dt, "pos"), ("A",)), C=(T((b, L, G, N + 1), dt), ("C", "B")))
    if L and b:
        extra["dt"] = (T((b, L, H), dt, "neg"), ("dt",))

    def ref(a):
        a = dict(a)
        a.pop("chunk_size", None)
        return ssd_ref(**a)

    return tensor_case(draw, "ssd", ssmkit.ssd, ts, dict(chunk_size=pick(draw, (64, 1, 4))), maybe=["x"] if L == 0 else [],
                       bad_scalars=dict(chunk_size=BAD_POSITIVE_INTS), extra_bad=extra,
                       check=shape_is((b, L, H, P), (b, H, P, N)), ref=ref)


@entry("linear_scan")
def _linear_scan(draw):
    b, L, D = sizes(draw), draw(st.integers(0, 12)), draw(st.integers(1, 3))
    dt = pick(draw, (torch.float32, torch.float64, torch.complex64))
    ts = dict(a=T((b, L, D), dt, "unit", seed=draw(seeds), scale=0.95), b=T((b, L, D), dt, seed=draw(seeds)))
    if draw(st.booleans()):
        ts["initial_state"] = T((b, D), dt, seed=draw(seeds))
    return tensor_case(draw, "linear_scan", ssmkit.linear_scan, ts, maybe=["a", "b"] if L == 0 else [],
                       extra_bad=dict(initial_state=(T((b, D + 1), dt), ("initial_state",))), check=shape_is((b, L, D)),
                       ref=lambda a: linear_scan_ref(**a))


# --- layers ----------------------------------------------------------------------------------
D_MODEL = 4
LAYER_CTORS = {
    "S4": (dict(d_state=4, measure="legs", l_max=16),
           dict(bidirectional=BAD_BOOLS, d_state=BAD_POSITIVE_INTS + (3,), measure=BAD_CHOICES, l_max=BAD_POSITIVE_INTS,
                dt_min=BAD_POSITIVE_REALS, dt_max=BAD_POSITIVE_REALS, ssm_lr=BAD_NONNEG_REALS)),
    "S4D": (dict(d_state=4, init="legs", discretization="zoh"),
            dict(bidirectional=BAD_BOOLS, d_state=BAD_POSITIVE_INTS + (3,), init=BAD_CHOICES, discretization=BAD_CHOICES,
                 dt_min=BAD_POSITIVE_REALS, dt_max=BAD_POSITIVE_REALS, ssm_lr=BAD_NONNEG_REALS)),
    "RTF": (dict(d_state=4, l_max=16, init="zeros", constraint="none"),
            dict(bidirectional=BAD_BOOLS, d_state=BAD_POSITIVE_INTS, l_max=BAD_POSITIVE_INTS, init=BAD_CHOICES, constraint=BAD_CHOICES,
                 ssm_lr=BAD_NONNEG_REALS)),
    "S5": (dict(d_state=4), dict(d_state=BAD_POSITIVE_INTS + (3,), dt_min=BAD_POSITIVE_REALS, dt_max=BAD_POSITIVE_REALS,
                                 ssm_lr=BAD_NONNEG_REALS)),
    "Mamba": (dict(d_state=4, d_conv=3, expand=2),
              dict(d_state=BAD_POSITIVE_INTS, d_conv=BAD_POSITIVE_INTS, expand=BAD_POSITIVE_INTS,
                   dt_rank=BAD_POSITIVE_INTS[:-3] + (0, -1, "full"), dt_min=BAD_POSITIVE_REALS, dt_max=BAD_POSITIVE_REALS,
                   dt_init_floor=BAD_NONNEG_REALS, bias=BAD_BOOLS, conv_bias=BAD_BOOLS)),
    "Mamba2": (dict(d_state=4, d_conv=3, expand=2, headdim=4, chunk_size=4),
               dict(d_state=BAD_POSITIVE_INTS, d_conv=BAD_POSITIVE_INTS, expand=BAD_POSITIVE_INTS,
                    headdim=BAD_POSITIVE_INTS + (3,), ngroups=BAD_POSITIVE_INTS + (3,), chunk_size=BAD_POSITIVE_INTS,
                    dt_min=BAD_POSITIVE_REALS, dt_max=BAD_POSITIVE_REALS, dt_init_floor=BAD_NONNEG_REALS,
                    A_init_range=((0.0, 1.0), (-1.0, 2.0), (4.0, 2.0), "1", (1.0, float("nan")), None))),
}
LTI_LAYERS = ("S4", "S4D", "RTF")
_LAYER_CACHE = {}


def _layer(name):
    """One float32 layer per class (and its float64 copy): construction is not what is tested here."""
    if name not in _LAYER_CACHE:
        torch.manual_seed(0)
        layer = getattr(ssmkit, name)(D_MODEL, **LAYER_CTORS[name][0]).eval()
        if name == "RTF":  # nonzero numerator so that the output depends on the input
            with torch.no_grad():
                for p in layer.parameters():
                    if not p.abs().sum():
                        p.normal_(0, 0.1)
        _LAYER_CACHE[name] = (layer, copy.deepcopy(layer).double())
    return _LAYER_CACHE[name]


def _state_specs(layer, b, seed, scale=0.3):
    """Random T descriptions with the shapes/dtypes of ``layer.initial_state(b)``."""
    s = layer.initial_state(b)
    parts = s if isinstance(s, tuple) else (s,)
    specs = tuple(T(tuple(p.shape), p.dtype, "cnormal" if p.is_complex() else "normal", seed=seed + i, scale=scale)
                  for i, p in enumerate(parts))
    return specs if isinstance(s, tuple) else specs[0]


def _flat_state(spec):
    return list(spec) if isinstance(spec, tuple) else [spec]


def _with_part(spec, i, new):
    if isinstance(spec, tuple):
        parts = list(spec)
        parts[i] = new
        return tuple(parts)
    return new


def _state_perturbation(draw, spec, b, state_name):
    """A broken state: NaN/inf in a part, a wrong shape, a wrong type, too few parts."""
    parts = _flat_state(spec)
    i = draw(st.integers(0, len(parts) - 1))
    how = pick(draw, ("special", "shape", "type", "dtype", "layout") + (("short",) if isinstance(spec, tuple) else ()))
    p = parts[i]
    if how == "special":
        if p.numel() == 0:
            return spec, None
        return _with_part(spec, i, replace(p, special=draw(specials))), "bad"
    if how == "shape":
        shp = list(p.shape)
        shp[-1] += 1
        return _with_part(spec, i, replace(p, shape=tuple(shp))), "bad"
    if how == "type":
        return pick(draw, (2.5, "state", [1.0])), "bad"
    if how == "short":
        return spec[:1], "bad"
    if how == "dtype":
        return _with_part(spec, i, replace(p, dtype=pick(draw, (torch.float16, torch.float64, torch.int64)))), "maybe"
    return _with_part(spec, i, replace(p, layout=pick(draw, ("strided", "transposed")))), None


def _layer_case(draw, name):
    layer, layer64 = _layer(name)
    methods = ["ctor", "forward", "forward", "forward", "step", "step", "initial_state"] + \
        (["kernel", "discrete_ssm"] if name in LTI_LAYERS else [])
    method = pick(draw, methods)
    what = f"{name}.{method}" if method != "ctor" else name
    if method == "ctor":
        valid, bad_scalars = LAYER_CTORS[name]
        extra = {}
        if "dt_min" in bad_scalars:
            extra["dt_min"] = (0.5, ("dt_min", "dt_max"))
            valid = dict(valid, dt_max=0.1)
        return tensor_case(draw, what, lambda **kw: getattr(ssmkit, name)(**kw), {}, dict(d_model=D_MODEL, **valid),
                           bad_scalars=dict(bad_scalars, d_model=BAD_POSITIVE_INTS), extra_bad=extra,
                           modes=("valid", "scalar", "scalar", "scalar"))
    if method == "initial_state":
        b = sizes(draw)
        return tensor_case(draw, what, layer.initial_state, {}, dict(batch_size=b, dtype=pick(draw, (None, torch.float64))),
                           bad_scalars=dict(batch_size=BAD_NONNEG_INTS[:-3] + (-1,), dtype=("float32", 3)),
                           modes=("valid", "scalar"))
    if method == "kernel":
        L = draw(st.integers(1, 20))
        return tensor_case(draw, what, layer.kernel, {}, dict(L=L), bad_scalars=dict(L=BAD_POSITIVE_INTS),
                           check=shape_is((D_MODEL, L)), modes=("valid", "scalar"))
    if method == "discrete_ssm":
        return Case(what, lambda a: layer.discrete_ssm(), {}, ref=lambda a: layer64.discrete_ssm(), compare=False)
    b = sizes(draw)
    seed = draw(seeds)
    if method == "step":
        x_t = T((b, D_MODEL), torch.float32, seed=seed)
        state = _state_specs(layer, b, seed + 1)
        tensors, state_name = dict(x_t=x_t, state=state), "state"
        shapes = [(b, D_MODEL)]
        call, ref = (lambda a: layer.step(**a)), (lambda a: layer64.step(**a))
    else:
        L = draw(st.integers(0, 10))
        tensors = dict(x=T((b, L, D_MODEL), torch.float32, seed=seed))
        state_name = "initial_state"
        if draw(st.booleans()):
            tensors["initial_state"] = _state_specs(layer, b, seed + 1)
        if b and L and draw(st.booleans()):
            lengths = [draw(st.integers(1, L)) for _ in range(b)]
            tensors["mask"] = T((b, L), torch.bool, "mask:" + ",".join(map(str, lengths)))
        shapes = [(b, L, D_MODEL)]
        call, ref = (lambda a: layer(**a)), (lambda a: layer64(**a))
    bad, maybe = [], []
    if method == "forward":
        maybe += ["x"] if tensors["x"].shape[1] == 0 else []
    mode = pick(draw, ("valid", "input", "input", "state", "state", "mask", "return_state"))
    inp = "x_t" if method == "step" else "x"
    if mode == "input":
        tensors[inp], eff = perturb_tensor(draw, tensors[inp])
        (bad if eff == "bad" else maybe if eff == "maybe" else []).append(inp)
    elif mode == "state":
        if state_name not in tensors:
            tensors[state_name] = _state_specs(layer, b, seed + 1)
        tensors[state_name], eff = _state_perturbation(draw, tensors[state_name], b, state_name)
        if eff:
            (bad if eff == "bad" else maybe).append(state_name)
    elif mode == "mask" and method == "forward" and b and tensors["x"].shape[1] >= 2:
        L = tensors["x"].shape[1]
        how = pick(draw, ("float", "holes", "shape"))
        if how == "float":
            tensors["mask"] = T((b, L), torch.float32, "pos")
        elif how == "holes":
            v = torch.ones(b, L, dtype=torch.bool)
            v[:, 0] = False
            tensors["mask"] = T((b, L), torch.bool, "fixed", value=v)
        else:
            tensors["mask"] = T((b, L + 1), torch.bool, "mask:" + ",".join(["1"] * b))
        bad.append("mask")
    scalars = {}
    if method == "forward":
        scalars["return_state"] = draw(st.booleans())
        if mode == "return_state":
            scalars["return_state"] = pick(draw, BAD_BOOLS)
            maybe.append("return_state")
    check = shape_is(*shapes)
    if method == "forward":
        check = _recurrent_view_check(layer64, check)
    return Case(what, call, {**tensors, **scalars}, bad=bad, maybe=maybe, check=check, ref=ref)


def _state_rows(state, i):
    if state is None:
        return None
    return tuple(p[i:i + 1] for p in state) if isinstance(state, tuple) else state[i:i + 1]


def _recurrent_view_check(layer64, shape_check):
    """``forward`` agrees with the recurrent view: stepping the float64 layer through each
    sequence's real tokens (from the same initial state) gives the outputs at the real positions
    and, with ``return_state``, the final state."""
    def check(out, args):
        problem = shape_check(out, args)
        if problem:
            return problem
        x = args["x"]
        b, L = x.shape[:2]
        if not (b and L) or x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            return None
        y, state = (out if isinstance(out, tuple) else (out, None))
        mask = args.get("mask")
        lengths = mask.sum(1).tolist() if isinstance(mask, torch.Tensor) else [L] * b
        init = upcast(args.get("initial_state"))
        # the layer under test holds float32 parameters, and an input in another dtype is computed
        # in the parameters' dtype (docs/reliability.md): float64 inputs get float32 accuracy
        tol = 10 * TOLERANCE[lowest_precision([args, torch.zeros(0)]) or torch.float64]
        for i in range(b):
            li = int(lengths[i])
            with torch.no_grad():
                ys, st_i = run_steps(layer64, x[i:i + 1, :li].double(), _state_rows(init, i))
            e = _rel_err_max(y[i:i + 1, :li], ys)
            if e > tol:
                return f"sequence {i} (length {li}): outputs differ from stepping the layer by {e:.3g} > {tol:g}"
            if state is not None:
                got = _state_rows(state, i)
                for g, w in zip(got if isinstance(got, tuple) else (got,), st_i if isinstance(st_i, tuple) else (st_i,)):
                    e = _rel_err_max(g, w)
                    if e > tol:
                        return f"sequence {i} (length {li}): final state differs from stepping the layer by {e:.3g} > {tol:g}"
        return None
    return check


def _rel_err_max(a, b):
    a = a.detach().to(torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64)
    b = b.detach().to(a.dtype)
    if not a.numel():
        return 0.0
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-3)


for _name in LAYER_CTORS:
    entry(_name, examples=40)(lambda draw, _n=_name: _layer_case(draw, _n))


# --- models --------------------------------------------------------------------------------
_MODEL_CACHE = {}


def _layer_kwargs(layer):
    return LAYER_CTORS[{"s4d": "S4D", "mamba": "Mamba", "mamba2": "Mamba2"}[layer]][0]


def _models(layer):
    if layer not in _MODEL_CACHE:
        torch.manual_seed(0)
        kw = dict(_layer_kwargs(layer))
        tok = ssmkit.Backbone(D_MODEL, 2, layer, kw, vocab_size=5).eval()
        real = ssmkit.Backbone(D_MODEL, 2, layer, kw, d_input=2).eval()
        clf = ssmkit.SequenceClassifier(copy.deepcopy(real), 3).eval()
        lm = ssmkit.LanguageModel(copy.deepcopy(tok), 5).eval()
        _MODEL_CACHE[layer] = dict(tok=tok, real=real, clf=clf, lm=lm,
                                   real64=copy.deepcopy(real).double(), clf64=copy.deepcopy(clf).double())
    return _MODEL_CACHE[layer]


@entry("Backbone", examples=40)
def _backbone(draw):
    layer = pick(draw, ("s4d", "mamba", "mamba2"))
    method = pick(draw, ("ctor", "forward", "forward", "step", "initial_state"))
    if method == "ctor":
        return tensor_case(draw, "Backbone", ssmkit.Backbone, {},
                           dict(d_model=D_MODEL, n_layers=1, layer=layer, layer_kwargs=dict(_layer_kwargs(layer)),
                                vocab_size=pick(draw, (None, 4)),
                                d_input=1, dropout=0.0),
                           bad_scalars=dict(d_model=BAD_POSITIVE_INTS, n_layers=BAD_POSITIVE_INTS, layer=BAD_CHOICES,
                                            vocab_size=tuple(v for v in BAD_POSITIVE_INTS[:-2] if v is not None) + (0, -1), d_input=BAD_POSITIVE_INTS,
                                            dropout=BAD_NONNEG_REALS + (1.0, 1.5), layer_kwargs=("d_state=4", [1], 3)),
                           modes=("valid", "scalar", "scalar"))
    m = _models(layer)
    tokens = draw(st.booleans())
    net = m["tok"] if tokens else m["real"]
    b = sizes(draw)
    if method == "initial_state":
        return tensor_case(draw, f"Backbone({layer}).initial_state", net.initial_state, {}, dict(batch_size=b),
                           bad_scalars=dict(batch_size=(-1, 2.5, "2", True)), modes=("valid", "scalar"))
    seed = draw(seeds)
    states = list(_state_specs(blk.layer, b, seed + 10 * i) for i, blk in enumerate(net.blocks))
    bad, maybe = [], []
    if method == "step":
        x = T((b,), torch.int64, "tokens:5", seed=seed) if tokens else T((b, 2), torch.float32, seed=seed)
        args = dict(x_t=x, states=states)
        call, ref = net.step, (None if tokens else m["real64"].step)
        shapes = [(b, D_MODEL)]
        xname = "x_t"
    else:
        L = draw(st.integers(0, 8))
        x = T((b, L), torch.int64, "tokens:5", seed=seed) if tokens else T((b, L, 2), torch.float32, seed=seed)
        args = dict(x=x)
        if draw(st.booleans()):
            args["states"] = states
        args["return_state"] = draw(st.booleans())
        call, ref = net.forward, (None if tokens else m["real64"].forward)
        shapes = [(b, L, D_MODEL)]
        xname = "x"
        if L == 0:
            maybe.append("x")
    mode = pick(draw, ("valid", "x", "x", "states"))
    if mode == "x":
        if tokens:
            how = pick(draw, ("range", "float", "neg"))
            if b:
                v = x.values64().clone()
                if how != "float" and v.numel():
                    v.view(-1)[0] = 5 if how == "range" else -1
                    args[xname] = T(x.shape, torch.int64, "fixed", value=v)
                    bad.append(xname)
                elif how == "float":
                    args[xname] = T(x.shape, torch.float32, seed=seed)
                    bad.append(xname)
        else:
            args[xname], eff = perturb_tensor(draw, x)
            (bad if eff == "bad" else maybe if eff == "maybe" else []).append(xname)
    elif mode == "states":
        args["states"] = states
        how = pick(draw, ("short", "nan", "type"))
        if how == "short":
            args["states"] = states[:1]
            bad.append("states")
        elif how == "type":
            args["states"] = pick(draw, ("s", 3, None if method == "step" else "s"))
            bad.append("states")
        else:
            args["states"][0], eff = _state_perturbation(draw, states[0], b, "states")
            if eff:
                (bad if eff == "bad" else maybe).append("states")
    return Case(f"Backbone({layer},{'tokens' if tokens else 'real'}).{method}", lambda a: call(**a), args, bad=bad,
                maybe=maybe, names=tuple(bad) + tuple(maybe) + (("state",) if "states" in bad else ()),
                check=shape_is(*shapes), ref=(lambda a: ref(**a)) if ref else None, compare=ref is not None)


@entry("SequenceClassifier")
def _classifier(draw):
    layer = pick(draw, ("s4d", "mamba"))
    m = _models(layer)
    if draw(st.integers(0, 2)) == 0:
        return tensor_case(draw, "SequenceClassifier", ssmkit.SequenceClassifier, {},
                           dict(backbone=m["real"], num_classes=3, pooling=pick(draw, ("mean", "last"))),
                           bad_scalars=dict(num_classes=BAD_POSITIVE_INTS, pooling=BAD_CHOICES, backbone=(None, "s4d", 3)),
                           modes=("valid", "scalar", "scalar"))
    b, L = sizes(draw), draw(st.integers(1, 8))
    ts = dict(x=T((b, L, 2), torch.float32, seed=draw(seeds)))
    if b and draw(st.booleans()):
        ts["mask"] = T((b, L), torch.bool, "mask:" + ",".join(str(draw(st.integers(1, L))) for _ in range(b)))
    return tensor_case(draw, f"SequenceClassifier({layer}).forward", m["clf"], ts, check=shape_is((b, 3)),
                       ref=lambda a: m["clf64"](**a), modes=("valid", "tensor", "tensor", "alldtype"), module=True,
                       always_compare=False)


@entry("LanguageModel")
def _lm(draw):
    layer = pick(draw, ("s4d", "mamba", "mamba2"))
    m = _models(layer)
    kind = pick(draw, ("ctor", "generate", "generate", "forward"))
    if kind == "ctor":
        return tensor_case(draw, "LanguageModel", ssmkit.LanguageModel, {}, dict(backbone=m["tok"], num_classes=5),
                           bad_scalars=dict(num_classes=tuple(v for v in BAD_POSITIVE_INTS if v is not None),
                                             backbone=(None, "s4d", 3)),
                           modes=("valid", "scalar", "scalar"))
    b, P = sizes(draw), draw(st.integers(0, 5))
    prompt = T((b, P), torch.int64, "tokens:5", seed=draw(seeds))
    if kind == "forward":
        return tensor_case(draw, f"LanguageModel({layer}).forward", m["lm"], dict(x=prompt), maybe=["x"] if P == 0 else [],
                           check=shape_is((b, P, 5)), modes=("valid",))
    n = draw(st.integers(0, 4))
    seed = draw(seeds)

    def generate(**kw):  # a freshly seeded generator per call: the same seed gives the same tokens
        return m["lm"].generate(**kw, generator=torch.Generator().manual_seed(seed))

    return tensor_case(draw, f"LanguageModel({layer}).generate", generate, dict(prompt=prompt),
                       dict(max_new_tokens=n, temperature=pick(draw, (0, 0.7, 1.0)), top_k=pick(draw, (None, 1, 3, 10))),
                       bad_scalars=dict(max_new_tokens=BAD_NONNEG_INTS, temperature=BAD_NONNEG_REALS,
                                        top_k=(0, -1, 2.5, "3", True)),
                       extra_bad=dict(prompt=(T((b, max(P, 1)), torch.float32), ("prompt",))),
                       maybe=["prompt"] if P == 0 else [], check=shape_is((b, P + n)), compare=False,
                       modes=("valid", "scalar", "scalar", "extra"))


# --- registry, tasks, training ------------------------------------------------------------
@entry("get_layer")
def _get_layer(draw):
    return tensor_case(draw, "get_layer", ssmkit.get_layer, {}, dict(name=pick(draw, ssmkit.available_layers())),
                       bad_scalars=dict(name=BAD_CHOICES), modes=("valid", "scalar"), error_names=("name", "layer"))


TASK_SMALL = {
    "copying": dict(n_train=4, n_test=2, n_tokens=3, delay=4, vocab=4),
    "selective_copying": dict(n_train=4, n_test=2, n_tokens=3, length=10, vocab=4),
    "induction_heads": dict(n_train=4, n_test=2, length=12, vocab=6),
    "associative_recall": dict(n_train=4, n_test=2, n_pairs=3, n_queries=2, vocab=8),
    "adding": dict(n_train=4, n_test=2, length=10),
    "listops": dict(n_train=4, n_test=2, min_len=5, max_len=30, max_depth=3, max_args=3),
}
TASK_BAD = {
    "copying": dict(vocab=(1, 0, -1, 2.5, "4"), n_tokens=(0, -1, 1.5), delay=(-1, 2.5, "4")),
    "selective_copying": dict(vocab=(1, 0, 2.5), n_tokens=(0, -1), length=(0, -1, 2, 2.5)),
    "induction_heads": dict(vocab=(2, 1, 0, 2.5), length=(0, -1, 1, 2.5), test_length=(-1, 2.5)),
    "associative_recall": dict(vocab=(0, 1, 2, 2.5), n_pairs=(0, -1, 2.5), n_queries=(0, -1, 2.5)),
    "adding": dict(length=(0, 1, -1, 2.5)),
    "listops": dict(min_len=(0, -1, 2.5), max_len=(2, -1, 2.5), max_depth=(0, -1), max_args=(0, 1, -1)),
}


def _check_task(task, args):
    again = ssmkit.build_task(task.name, **args)  # the same seed gives the same data
    for split, split2 in ((task.train, again.train), (task.test, again.test)):
        for i in range(min(len(split), 3)):
            if not all(torch.equal(u, v) for u, v in zip(split[i], split2[i])):
                return f"two builds with the same seed differ at item {i}"
    for split in (task.train, task.test):
        if len(split) != (args.get("n_train") if split is task.train else args.get("n_test")):
            return f"split has {len(split)} items, asked for {args.get('n_train')}/{args.get('n_test')}"
        for i in range(min(len(split), 2)):
            x, y = split[i]
            if x.dim() < 1 or x.shape[0] < 1:
                return f"empty item x {tuple(x.shape)}"
            if task.vocab_size is not None and (int(x.min()) < 0 or int(x.max()) >= task.vocab_size):
                return f"token ids outside [0, {task.vocab_size})"
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                return "non-finite item"
    return None


@entry("build_task")
def _build_task(draw):
    name = pick(draw, sorted(TASK_SMALL))
    opts = dict(TASK_SMALL[name])
    return tensor_case(draw, f"build_task({name!r})", lambda **kw: ssmkit.build_task(name, **kw), {},
                       dict(seed=draw(st.integers(0, 5)), **opts),
                       bad_scalars=dict(TASK_BAD[name], seed=(-1, 2.5, "a", True), n_train=(-1, 2.5, "4")),
                       check=_check_task, modes=("valid", "scalar", "scalar", "scalar"))


TRAIN_BAD = dict(
    d_model=BAD_POSITIVE_INTS, n_layers=BAD_POSITIVE_INTS, epochs=BAD_POSITIVE_INTS, batch_size=BAD_POSITIVE_INTS,
    max_steps=BAD_NONNEG_INTS, warmup_steps=BAD_NONNEG_INTS, eval_every=BAD_NONNEG_INTS, log_every=BAD_POSITIVE_INTS,
    checkpoint_every=BAD_NONNEG_INTS, seed=(-1, 1.5, "a", True, None), d_state=(0, -2, "8", 2.5, 3, True),
    lr=BAD_POSITIVE_REALS, grad_clip=BAD_POSITIVE_REALS, weight_decay=BAD_NONNEG_REALS,
    dropout=BAD_NONNEG_REALS + (1.0, 2.0), time_budget=BAD_NONNEG_REALS,
    task=BAD_CHOICES, layer=BAD_CHOICES, pooling=BAD_CHOICES, precision=BAD_CHOICES + ("fp16",),
    task_options=("n_train=4", [1, 2], 3), layer_options=("x", [1], 3), init_from=(5, 1.5, True, ["a"]),
)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@entry("TrainConfig", examples=40)
def _train_config(draw):
    valid = dict(task=pick(draw, ("copying", "adding", "smnist")), layer=pick(draw, ("s4d", "mamba", "s4")),
                 d_model=draw(st.integers(1, 64)), n_layers=draw(st.integers(1, 4)),
                 d_state=pick(draw, (None, 2, 4, 16)), lr=draw(st.floats(1e-5, 1e-1)), seed=draw(st.integers(0, 9)),
                 dropout=draw(st.floats(0, 0.5)), precision=pick(draw, ("fp32", "bf16")))
    if draw(st.booleans()):
        # from_dict reads config files, where YAML leaves numbers such as 1e-3 as strings: it takes
        # numeric strings for numeric fields by design (docs/training.md), so they are not bad there
        bad = {k: tuple(v for v in vals if not (isinstance(v, str) and _is_number(v))) for k, vals in TRAIN_BAD.items()}
        return tensor_case(draw, "TrainConfig.from_dict", lambda **kw: ssmkit.TrainConfig.from_dict(kw), {}, valid,
                           bad_scalars=bad, modes=("valid", "scalar", "scalar", "scalar", "scalar"))
    return tensor_case(draw, "TrainConfig", lambda **kw: ssmkit.TrainConfig(**kw).validate(), {}, valid,
                       bad_scalars=TRAIN_BAD, modes=("valid", "scalar", "scalar", "scalar", "scalar"))


def _fit_config(**over):
    kw = dict(task="copying", task_options=dict(TASK_SMALL["copying"], n_train=8), layer="s4d",
              layer_options=dict(d_state=2), d_model=4, n_layers=1, max_steps=1, batch_size=4, warmup_steps=0,
              log_every=1)
    kw.update(over)
    return ssmkit.TrainConfig(**kw)


def _tmpdir() -> Path:
    """A fresh folder, removed when the child process exits."""
    import atexit
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="ssmkit-rel-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


@entry("fit", examples=4)
def _fit(draw):
    tmp = _tmpdir()
    (tmp / "a_file").write_text("not a folder")
    mode = pick(draw, ("valid", "config_dict", "config_type", "out_file", "resume", "bad_config"))
    what = "fit"
    args = dict(config=_fit_config(), out_dir=tmp / "run", progress=False)
    bad, maybe = [], []
    if mode == "config_dict":
        args["config"] = _fit_config().to_dict()
        maybe.append("config")
    elif mode == "config_type":
        args["config"] = pick(draw, ("config.yaml", 3, None))
        bad.append("config")
    elif mode == "out_file":
        args["out_dir"] = tmp / "a_file"
        bad.append("out_dir")
    elif mode == "resume":
        args["resume"] = pick(draw, ("yes", 1, None))
        bad.append("resume")
    elif mode == "bad_config":
        k = pick(draw, ("lr", "batch_size", "seed"))
        v = pick(draw, TRAIN_BAD[k][:4])
        args["config"] = _fit_config(**{k: v})
        bad.append(k)
        what = f"fit[config.{k}={v!r}]"
    names = tuple(bad) + tuple(maybe) + ((str(tmp / "a_file"),) if mode == "out_file" else ())
    return Case(what, lambda a: ssmkit.fit(**a), args, bad=bad, maybe=maybe, names=names, compare=False,
                finite_output=False, deterministic=False)


@entry("load_model", examples=8)
def _load_model(draw):
    tmp = _tmpdir()
    (tmp / "garbage").write_bytes(b"\x00not a checkpoint")
    (tmp / "empty").mkdir()
    path = pick(draw, (tmp / "missing", tmp / "garbage", tmp / "empty", 3, None, str(tmp / "empty")))
    return Case("load_model", lambda a: ssmkit.load_model(**a), dict(path=path), bad=["path"],
                names=("path", str(path), "checkpoint"), compare=False)


# --- conversions (ssmkit.lti) ---------------------------------------------------------------
# kernel of a conversion's result vs the kernel of its input, by the input's lowest precision
# (eigenvalues, FFTs and the rounding of the results to the input dtype)
LTI_TOL = {torch.float64: 1e-6, torch.complex128: 1e-6, torch.float32: 2e-2, torch.complex64: 2e-2,
           torch.float16: 5e-2, torch.bfloat16: 1e-1}
@entry("lti", examples=35)
def _lti(draw):
    fn = pick(draw, ("ss_to_tf", "tf_to_ss", "companion", "poly_from_roots"))
    H, N, L = sizes(draw, 1, 2), draw(st.integers(1, 4)), draw(st.integers(1, 12))
    dt = pick(draw, (torch.float64, torch.float32))
    if fn == "ss_to_tf":
        ts = dict(Ad=T((H, N, N), dt, "unit", seed=draw(seeds), scale=0.8 / N), Bd=T((H, N), dt, seed=draw(seeds)),
                  C=T((H, N), dt, seed=draw(seeds)))

        def check(out, args):
            a, b = out
            if a.shape != (H, N) or b.shape != (H, N):
                return f"shapes {tuple(a.shape)}, {tuple(b.shape)}"
            if not H:
                return None
            up = {k: v.double() for k, v in args.items() if isinstance(v, torch.Tensor)}
            K = ssmkit.naive_kernel(up["Ad"], up["Bd"], up["C"], L)
            K2 = ssmkit.rational_kernel(a.double(), b.double(), L)
            err = float((K - K2).abs().max() / K.abs().max().clamp(min=1e-12)) if K.numel() else 0.0
            tol = LTI_TOL[lowest_precision(args)]
            return None if err <= tol else f"kernel of (a, b) differs from the state-space kernel: {err:.3g} > {tol}"

        return tensor_case(draw, "lti.ss_to_tf", lti.ss_to_tf, ts, dict(L=L), bad_scalars=dict(L=BAD_POSITIVE_INTS),
                           extra_bad=dict(Bd=(T((H, N + 1), dt), ("Bd", "Ad"))), check=check, compare=False)
    if fn == "tf_to_ss":
        ts = dict(a=T((H, N), dt, "fixed", value=_stable_poly(draw(seeds), H, N)), b=T((H, N), dt, seed=draw(seeds)))

        def check(out, args):
            if tuple(out[0].shape) != (H, N, N) or tuple(out[2].shape) != (H, N):
                return f"shapes {[tuple(t.shape) for t in out]}"
            if not H:
                return None
            Ad, Bd, C = (t.double() for t in out)
            K = ssmkit.naive_kernel(Ad, Bd, C, L)
            K2 = ssmkit.rational_kernel(args["a"].double(), args["b"].double(), L)
            err = float((K - K2).abs().max() / K2.abs().max().clamp(min=1e-12))
            tol = LTI_TOL[lowest_precision(args)]
            return None if err <= tol else f"kernel of the realisation differs: {err:.3g} > {tol}"

        return tensor_case(draw, "lti.tf_to_ss", lti.tf_to_ss, ts, dict(L=L), bad_scalars=dict(L=BAD_POSITIVE_INTS),
                           extra_bad=dict(b=(T((H, N + 1), dt), ("a", "b"))), check=check, compare=False)
    if fn == "companion":
        return tensor_case(draw, "lti.companion", lti.companion, dict(a=T((H, N), dt, seed=draw(seeds))),
                           check=shape_is((H, N, N)), modes=("valid", "tensor", "type"))
    roots = T((H, N), pick(draw, (torch.complex128, torch.float64)), "unit", seed=draw(seeds))

    def check(out, args):
        r = args["roots"].to(torch.complex128)
        c = torch.cat([torch.ones(H, 1, dtype=torch.complex128), out.to(torch.complex128)], 1)
        if tuple(out.shape) != (H, N):
            return f"shape {tuple(out.shape)}"
        if not H:
            return None
        vals = sum(c[:, j:j + 1] * r ** (N - j) for j in range(N + 1))
        return None if float(vals.abs().max()) < 1e-3 else f"polynomial does not vanish at its roots: {float(vals.abs().max()):.3g}"

    return tensor_case(draw, "lti.poly_from_roots", lti.poly_from_roots, dict(roots=roots), check=check,
                       modes=("valid", "tensor", "type"))


# --- the loop, in a child process ----------------------------------------------------------
def _heap_check():
    """Walk the C heap after each case (glibc's malloc_trim visits every chunk and aborts on a
    corrupted one), so that memory corrupted by a case aborts the process at that case, not
    cases or entry points later. A no-op where glibc is not the allocator."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


try:
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
    _LIBC.malloc_trim  # noqa: B018 - glibc only
except (OSError, AttributeError):  # pragma: no cover - another C library
    _LIBC = None


def run_entry(name: str, examples: int, out) -> None:
    """Run entry point ``name``'s hypothesis loop, writing one JSON line per case before the call
    (so a crash names its case) and one per contract violation after it."""
    builder = ENTRY_POINTS[name]

    def emit(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def loop(data):
        try:
            case = builder(data.draw)
        except Exception as e:  # noqa: BLE001 - a bug of this suite, reported like a violation
            emit(event="fail", ep=name, kind="suite error (building the case)", detail=repr(e)[:300], desc="")
            return
        emit(event="case", ep=name, desc=case.describe())
        problem = evaluate(case)
        _heap_check()
        if problem:
            emit(event="fail", ep=name, kind=problem[0], detail=problem[1], desc=case.describe())

    emit(event="start", ep=name)
    t0 = time.perf_counter()
    loop()
    emit(event="done", ep=name, seconds=round(time.perf_counter() - t0, 2))


def worker_main(argv) -> None:
    out_path, scale, names = argv[0], float(argv[1]), argv[2:]
    torch.set_num_threads(1)
    with open(out_path, "a") as out:
        for name in names:
            run_entry(name, max(1, int(ENTRY_POINTS[name].examples * scale)), out)


TIMINGS = {}  # seconds per entry point's loop in its child (for balancing the suite)

# entry points that run native code get a child of their own, so that memory corruption (which
# may abort the process only later, even at exit) is blamed on the right entry point
OWN_CHILD = ("selective_scan",)


def _spawn(names, scale):
    fd, path = tempfile.mkstemp(prefix="ssmkit-reliability-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path, str(scale), *names]
    proc = subprocess.Popen(cmd, cwd=str(HERE), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return dict(proc=proc, path=path, names=list(names), size=0, change=time.monotonic(), timed_out=False)


def _collect(job, results):
    """Read a finished child's events into ``results``. Returns (entry points still to run, crash)
    where crash is None or (entry point running at the crash, entry points done before it in
    the same child, violation)."""
    proc = job["proc"]
    _, stderr = proc.communicate()
    events = [json.loads(line) for line in Path(job["path"]).read_text().splitlines() if line.strip()]
    os.unlink(job["path"])
    done, current, last_case = [], None, None
    for ev in events:
        if ev["event"] == "start":
            current, last_case = ev["ep"], None
        elif ev["event"] == "case":
            last_case = ev["desc"]
        elif ev["event"] == "fail":
            results[ev["ep"]].append((ev["kind"], ev["detail"], ev["desc"]))
        elif ev["event"] == "done":
            done.append(ev["ep"])
            current = None
            TIMINGS[ev["ep"]] = ev.get("seconds")
    todo = [n for n in job["names"] if n not in done]
    rc = proc.returncode
    if rc == 0 and not todo:
        return [], None
    why = "timeout (no progress)" if job["timed_out"] else (f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}")
    tail = " | ".join((stderr or "").strip().splitlines()[-3:])[:400]
    if not todo:  # every entry point finished, then the process died (heap corruption found at exit)
        return [], (done[-1], done[:-1], (f"crash after the last case: {why}", tail, f"child ran {', '.join(done)}"))
    victim = current or todo[0]
    return ([n for n in todo if n != victim],
            (victim, done, (f"crash: {why}", tail, last_case or "(before the first case)")))


def run_isolated(names, scale: float, timeout: float, parallel: int = 2):
    """Run the entry points ``names`` in child processes; returns {name: [violations]}.

    Entry points are shared among ``parallel`` children (plus one child each for
    :data:`OWN_CHILD`). A child that dies (signal, exit code) or shows no progress for ``timeout``
    seconds is reported against the case it was running; the remaining entry points continue in
    a new child. Memory corruption may abort the process only later, so when other entry points
    ran before in the same child, the crashing one is run again alone and, if it then passes,
    the ones before it, latest first, until one crashes alone: the crash is reported against it."""
    results = {n: [] for n in names}
    queue = [([n], None) for n in names if n in OWN_CHILD]
    rest = [n for n in names if n not in OWN_CHILD]
    queue += [(rest[i::parallel], None) for i in range(parallel) if rest[i::parallel]]
    running = []
    while queue or running:
        while queue and len(running) < parallel:
            group, confirm = queue.pop(0)
            job = _spawn(group, scale)
            job["confirm"] = confirm
            running.append(job)
        time.sleep(0.2)
        for job in list(running):
            if job["proc"].poll() is None:
                size = os.path.getsize(job["path"])
                if size != job["size"]:
                    job["size"], job["change"] = size, time.monotonic()
                elif time.monotonic() - job["change"] > timeout:
                    job["proc"].kill()
                    job["timed_out"] = True
                continue
            running.remove(job)
            confirm = job["confirm"]
            fresh = {n: [] for n in job["names"]} if confirm else results
            todo, crash = _collect(job, fresh)
            if confirm:  # one suspect, run alone: (suspect, the victim, suspects left, the crash seen)
                suspect, victim, left, seen = confirm
                if crash:
                    kind, detail, desc = crash[2]
                    note = "" if suspect == victim else f" (memory corrupted here made {victim} die later)"
                    results[suspect].append((kind + note, detail, desc))
                elif left:  # the suspect ran cleanly alone: try the entry point that ran before it
                    queue.insert(0, ([left[-1]], (left[-1], victim, left[:-1], seen)))
                else:
                    kind, detail, desc = seen
                    results[victim].append((kind + " (not reproduced by any entry point run alone)", detail, desc))
                continue
            if todo:
                queue.insert(0, (todo, None))
            if crash:
                victim, before, violation = crash
                if before:  # memory corruption may kill the process later: find the culprit alone
                    queue.insert(0, ([victim], (victim, victim, before, violation)))
                else:
                    results[victim].append(violation)
    return results


def format_violations(name, violations, limit=12) -> str:
    groups = OrderedDict()
    for kind, detail, desc in dict.fromkeys(violations):  # hypothesis may repeat an example
        groups.setdefault(kind, []).append((detail, desc))
    lines = [f"{name}: {len(violations)} violation(s) in {len(groups)} class(es)"]
    for kind, items in groups.items():
        lines.append(f"  [{kind}] x{len(items)}")
        for detail, desc in items[:limit]:
            lines.append(f"    {desc}\n      -> {detail}")
    return "\n".join(lines)


# --- the tests -----------------------------------------------------------------------------
_RESULTS = {}


def _results(scale, timeout):
    key = scale
    if key not in _RESULTS:
        _RESULTS[key] = run_isolated(CHECKED, scale, timeout)
    return _RESULTS[key]


# Entry points that still break the contract on this branch, with the cases that do: they stay
# out of the two tests below (which must pass) until fixed, and are listed in the report of
# `python tests/test_reliability_properties.py`, which runs every entry point.
PENDING = {
}
CHECKED = [n for n in ENTRY_POINTS if n not in PENDING]


@pytest.mark.parametrize("name", CHECKED)
def test_entry_point_contract(name):
    """A few dozen derandomized cases per entry point (all entry points share one child process)."""
    violations = _results(1.0, timeout=120)[name]
    assert not violations, format_violations(name, violations)


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKED)
def test_entry_point_contract_many_examples(name):
    violations = _results(20.0, timeout=600)[name]
    assert not violations, format_violations(name, violations)


def test_harness_reports_a_crash_as_a_failure(tmp_path):
    """The isolation works: a case that aborts its process becomes a reported violation, and the
    entry points after it still run."""
    res = run_isolated(["__abort__", "get_layer"], 1.0, timeout=60)
    assert res["__abort__"] and res["__abort__"][0][0].startswith("crash: killed by signal 6"), res
    assert res["get_layer"] == []


def test_evaluate_classifies_each_kind_of_violation():
    """The judge itself: each way of breaking the contract is caught, and the contract kept passes."""
    x = T((2, 3), torch.float32, seed=1)

    def raise_(exc):
        def f(a):
            raise exc
        return f

    ok = Case("f", lambda a: a["x"] * 2, dict(x=x), check=shape_is((2, 3)))
    assert evaluate(ok) is None
    assert evaluate(replace_case(ok, check=shape_is((3, 2))))[0] == "wrong output"
    assert evaluate(replace_case(ok, call=lambda a: a["x"] / 0))[0] == "non-finite output"
    assert evaluate(replace_case(ok, call=raise_(RuntimeError("deep inside"))))[0] == "bare RuntimeError"
    assert evaluate(replace_case(ok, call=raise_(ValueError("x is bad"))))[0] == "refused a valid input"
    bad = replace_case(ok, args=dict(x=replace(x, special="nan")), bad=["x"])
    assert evaluate(bad)[0] == "accepted invalid x"
    assert evaluate(replace_case(bad, call=raise_(ValueError("x contains NaN")))) is None
    assert evaluate(replace_case(bad, call=raise_(ValueError("xs contains NaN"))))[0].startswith("error does not name")
    # a float32 answer that is wrong by more than the float32 tolerance against the float64 call
    drift = replace_case(ok, call=lambda a: a["x"] * (2 if a["x"].dtype == torch.float64 else 2.01))
    assert evaluate(drift)[0] == "differs from float64 result"
    # a strided view must give the contiguous answer
    view = replace_case(ok, args=dict(x=replace(x, dtype=torch.float64, layout="strided")),
                        call=lambda a: a["x"] * 2 + (0 if a["x"].is_contiguous() else 1))
    assert evaluate(view)[0] == "differs from float64 result"


def replace_case(case, **kw):
    return replace(case, **kw)


@entry("__abort__", examples=3)
def _abort(draw):  # used only by test_harness_reports_a_crash_as_a_failure
    return Case("abort", lambda a: os.abort(), {})


_TEST_ONLY = ("__abort__",)
for _n in _TEST_ONLY:  # not a public entry point: run only by the harness test
    _ABORT = ENTRY_POINTS.pop(_n)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    sys.path.insert(0, str(HERE))
    ENTRY_POINTS["__abort__"] = _ABORT
    worker_main(sys.argv[2:])
elif __name__ == "__main__":
    # a readable report of every violation: python tests/test_reliability_properties.py [scale] [names...]
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    chosen = sys.argv[2:] or list(ENTRY_POINTS)
    res = run_isolated(chosen, scale, timeout=300)
    for n in chosen:
        print(format_violations(n, res[n], limit=4) if res[n] else f"{n}: ok")
        if n in PENDING:
            print(f"  (pending, not in the pytest run: {PENDING[n]})")
    print("seconds per entry point:", TIMINGS)

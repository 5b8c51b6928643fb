"""Mamba-2's D skip + gated group RMSNorm (ssmkit.ops.gated_norm): the native kernel against the
composed torch reference (outputs and every gradient, float64 and float32, both gate orders,
one and two groups, a strided z), thread-count independence of the gradients, and the Mamba2
layer with the native operation against its composed path."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmkit.layers import Mamba2
from ssmkit.ops import _native
from ssmkit.ops.gated_norm import native_applies, skip_gated_rms_norm, skip_gated_rms_norm_ref

from helpers import assert_close_to_reference, raises_naming

TESTS = str(Path(__file__).resolve().parent)
SRC = str(Path(__file__).resolve().parents[1] / "src")
needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")
NAMES = ["y", "x", "D", "z (through its parent)", "weight"]


def _operands(b, L, H, P, dtype=torch.float64, pad=5, seed=0):
    """y, x (b, L, H, P), D (H,), z (b, L, H·P) as a strided slice of a wider tensor, weight,
    and the wider tensor (the leaf whose gradient z's gradient lands in)."""
    g = torch.Generator().manual_seed(seed)
    E = H * P
    rnd = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype)
    parent = rnd(b, L, E + 2 * pad, scale=2.0).requires_grad_()
    z = parent[..., pad:pad + E]
    y, x = rnd(b, L, H, P).requires_grad_(), rnd(b, L, H, P).requires_grad_()
    D = rnd(H).requires_grad_()
    w = (1 + 0.3 * rnd(E)).requires_grad_()
    return y, x, D, z, w, parent


def _grads(fn, ops, group_size, nbg, seed=1, eps=1e-5):
    y, x, D, z, w, parent = ops
    out = fn(y, x, D, z, w, group_size, eps, nbg)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return out, torch.autograd.grad(out, (y, x, D, parent, w), dout)


@needs_native
@pytest.mark.parametrize("nbg", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_native_equals_reference(nbg, groups, dtype, tol):
    b, L, H, P = 3, 37, 4, 6  # 111 rows: several blocks of the backward's partial sums, one partial
    ops = _operands(b, L, H, P, dtype)
    assert ops[3].stride(-2) != H * P  # z really is strided
    assert native_applies(*ops[:5])
    gs = H * P // groups
    out, got = _grads(skip_gated_rms_norm, ops, gs, nbg)
    ref, want = _grads(skip_gated_rms_norm_ref, ops, gs, nbg)
    assert out.shape == (b, L, H * P) and out.dtype == dtype
    assert_close_to_reference(out, ref, tol)
    for name, a, r in zip(NAMES, got, want):
        assert_close_to_reference(a, r, tol, f"grad of {name}")


@needs_native
def test_native_without_grad_and_single_row():
    """The no-autograd path and a single row (no row stride to speak of) agree with the reference."""
    ops = _operands(1, 1, 2, 4)
    with torch.no_grad():
        out = skip_gated_rms_norm(*ops[:5], 4, 1e-5, False)
        ref = skip_gated_rms_norm_ref(*ops[:5], 4, 1e-5, False)
    assert_close_to_reference(out, ref, 1e-13)


def test_falls_back_to_reference_for_other_dtypes():
    ops = _operands(2, 3, 2, 4, torch.bfloat16)
    assert not native_applies(*ops[:5])
    out = skip_gated_rms_norm(*ops[:5], 8, 1e-5, True)
    assert torch.equal(out, skip_gated_rms_norm_ref(*ops[:5], 8, 1e-5, True))


def _thread_case(threads):
    torch.set_num_threads(threads)
    ops = _operands(4, 50, 4, 8, dtype=torch.float32)
    out, g = _grads(skip_gated_rms_norm, ops, 16, False)
    return [out, *g]


@needs_native
def test_gradients_do_not_depend_on_thread_count(tmp_path):
    """The backward on 2 threads (a child process started with OMP_NUM_THREADS=2) gives
    gradients bit-identical to the same backward on 1 thread (here)."""
    code = (
        "import sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_gated_norm import _thread_case\n"
        "torch.save(_thread_case(2), sys.argv[2])\n")
    path = tmp_path / "grads_2.pt"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, "-c", code, TESTS, str(path)], check=True, env=env)
    before = torch.get_num_threads()
    try:
        one = _thread_case(1)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, torch.load(path)):
        assert torch.equal(a, b)


@needs_native
@pytest.mark.parametrize("nbg,ngroups,masked", [(False, 1, False), (True, 2, False), (False, 2, True)])
def test_mamba2_layer_native_norm_equals_composed_path(nbg, ngroups, masked):
    """Mamba2 with the native operation (fused=True) against the composed torch path
    (fused=False): outputs and the gradients of the input and every parameter, float64."""
    torch.manual_seed(0)
    layer = Mamba2(16, d_state=8, headdim=8, ngroups=ngroups, norm_before_gate=nbg, dtype=torch.float64)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.D.uniform_(-1, 1)
    x = torch.randn(2, 21, 16, dtype=torch.float64, requires_grad=True)
    mask = None
    if masked:
        mask = torch.ones(2, 21, dtype=torch.bool)
        mask[1, 15:] = False
    dout = torch.randn(2, 21, 16, dtype=torch.float64)
    results = []
    for fused in (True, False):
        layer.fused = fused
        out = layer(x, mask=mask)
        results.append((out, torch.autograd.grad(out, [x, *layer.parameters()], dout)))
    (o1, g1), (o2, g2) = results
    assert_close_to_reference(o1, o2, 1e-12)
    for (name, _), a, r in zip([("x", None), *layer.named_parameters()], g1, g2):
        assert_close_to_reference(a, r, 1e-11, f"grad of {name}")


@pytest.mark.parametrize("fn", [skip_gated_rms_norm, skip_gated_rms_norm_ref])
def test_bad_operands_are_named(fn):
    y, x, D, z, w = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8), torch.randn(4), torch.randn(2, 3, 32), torch.randn(32)
    with raises_naming(ValueError, "x"):
        fn(y, x[..., :7], D, z, w, 8, 1e-5, False)
    with raises_naming(ValueError, "D"):
        fn(y, x, D[:3], z, w, 8, 1e-5, False)
    with raises_naming(ValueError, "z"):
        fn(y, x, D, z[..., :31], w, 8, 1e-5, False)
    with raises_naming(ValueError, "weight"):
        fn(y, x, D, z, w[:16], 8, 1e-5, False)
    with raises_naming(ValueError, "group_size"):
        fn(y, x, D, z, w, 5, 1e-5, False)
    with raises_naming(ValueError, "eps"):
        fn(y, x, D, z, w, 8, -1.0, False)
    with raises_naming(ValueError, "z"):
        fn(y, x, D, z.clone().index_fill_(2, torch.tensor([0]), float("nan")), w, 8, 1e-5, False)
    with raises_naming(TypeError, "y"):
        fn(y.to(torch.int64), x, D, z, w, 8, 1e-5, False)
    # a batch of 0 rows: an empty result of the right shape
    assert fn(y[:0], x[:0], D, z[:0], w, 8, 1e-5, False).shape == (0, 3, 32)


@needs_native
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_native_stays_finite_where_the_gate_saturates(dtype, tol):
    """z far below -88 (float32's exp overflows; float64's below -709): silu(z) is -0 to the
    precision, and the native kernel (compiled with -ffast-math, where z / (1 + inf) is NaN) must
    agree with the reference."""
    ops = list(_operands(2, 9, 4, 6, dtype))
    with torch.no_grad():
        ops[5].mul_(400)  # z is a slice of this parent: entries down to about -2000
    assert float(ops[3].detach().min()) < -750
    out, got = _grads(skip_gated_rms_norm, tuple(ops), 12, False)
    ref, want = _grads(skip_gated_rms_norm_ref, tuple(ops), 12, False)
    assert bool(torch.isfinite(out).all())
    assert_close_to_reference(out, ref, tol)
    for name, a, r in zip(NAMES, got, want):
        assert bool(torch.isfinite(a).all()), name
        assert_close_to_reference(a, r, tol, f"grad of {name}")

"""The fused inner Mamba block (ssmkit.ops.mamba_fused): the native kernels against the
step-by-step reference (float64, outputs, last state and every gradient), the layer's fused
path against its composed path, and thread-count independence of the gradients."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmkit.layers import Mamba
from ssmkit.ops import _native
from ssmkit.ops.mamba_fused import fused_applies, mamba_inner, mamba_inner_ref

from helpers import assert_close_to_reference

TESTS = str(Path(__file__).resolve().parent)
SRC = str(Path(__file__).resolve().parents[1] / "src")
needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")
f64 = torch.float64
NAMES = ["xz", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A", "D",
         "conv_state", "ssm_state"]


def _operands(b, L, E, N, R, K, dtype=f64, states=True, biases=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()

    A = (-torch.rand(E, N, generator=g, dtype=dtype) * 2 - 0.1).requires_grad_()
    return [rnd(b, L, 2 * E), rnd(E, 1, K, scale=0.5), rnd(E) if biases else None, rnd(R + 2 * N, E, scale=0.3),
            rnd(E, R, scale=0.5), rnd(E) if biases else None, A, rnd(E) if biases else None,
            rnd(b, E, K - 1) if states else None, rnd(b, E, N) if states else None]


def _grads(fn, args, every=None):
    kw = {} if every is None else {"checkpoint_every": every}
    y, h = fn(*args, **kw)
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y.shape, generator=g, dtype=f64).to(y.dtype)  # the same weights for every dtype
    wh = torch.randn(h.shape, generator=g, dtype=f64).to(h.dtype)
    live = [a for a in args if a is not None]
    grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), live)
    return y, h, grads


# shapes: a full channel block and a partial one (E = 40 = 32 + 8), a single short block,
# a length shorter than the conv window, a single sequence (several backward task groups)
@needs_native
@pytest.mark.parametrize("b,L,E,N,R,K,every", [(3, 37, 40, 5, 3, 4, 8), (2, 9, 7, 3, 2, 3, 64),
                                              (2, 2, 33, 4, 1, 4, 1), (1, 70, 96, 16, 4, 4, 16)])
@pytest.mark.parametrize("states,biases", [(True, True), (False, False)])
def test_fused_equals_reference_float64_with_gradients(b, L, E, N, R, K, every, states, biases):
    args = _operands(b, L, E, N, R, K, states=states, biases=biases)
    assert fused_applies(*args)
    y, h, g = _grads(mamba_inner, args, every)
    y_ref, h_ref, g_ref = _grads(mamba_inner_ref, args)
    assert_close_to_reference(y, y_ref, 1e-12, "y")
    assert_close_to_reference(h, h_ref, 1e-12, "last state")
    names = [n for n, a in zip(NAMES, args) if a is not None]
    for name, a, r in zip(names, g, g_ref):
        assert_close_to_reference(a, r, 1e-11, f"grad of {name}")


@needs_native
def test_fused_float32_close_to_float64_reference():
    args = _operands(2, 50, 64, 16, 4, 4, dtype=torch.float32)
    y, h, g = _grads(mamba_inner, args)
    args64 = [None if a is None else a.detach().double().requires_grad_() for a in args]
    y_ref, h_ref, g_ref = _grads(mamba_inner_ref, args64)
    assert_close_to_reference(y, y_ref, 1e-5, "y")
    assert_close_to_reference(h, h_ref, 1e-5, "last state")
    for name, a, r in zip(NAMES, g, g_ref):
        assert_close_to_reference(a, r, 1e-4, f"grad of {name}")


@needs_native
def test_fused_without_grad_equals_with_grad():
    args = _operands(2, 21, 40, 4, 2, 4)
    y, h = mamba_inner(*args)
    with torch.no_grad():
        y0, h0 = mamba_inner(*args)
    assert torch.equal(y.detach(), y0) and torch.equal(h.detach(), h0)


def _mamba_layer():
    torch.manual_seed(3)
    return Mamba(24, d_state=8), (3, 30, 24)


def _mamba2_layer():
    from ssmkit.layers import Mamba2
    torch.manual_seed(4)
    return Mamba2(16, d_state=8, headdim=8, ngroups=2, chunk_size=8), (2, 19, 16)


@pytest.mark.parametrize("make", [_mamba_layer, _mamba2_layer], ids=["mamba", "mamba2"])
@pytest.mark.parametrize("dtype,tol", [(f64, 1e-11), (torch.float32, 2e-5)])
def test_layer_fused_path_equals_composed_path(make, dtype, tol):
    """``layer.fused`` (Mamba's fused inner block, Mamba-2's fused conv) against the composed
    torch operations: outputs, final state and every gradient."""
    layer, shape = make()
    layer = layer.to(dtype)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    s0 = layer.initial_state(shape[0], dtype=dtype)
    s0 = (torch.randn_like(s0[0]), torch.randn_like(s0[1]))
    results = []
    for fused in (True, False):
        layer.fused = fused
        y, (c, h) = layer(x, initial_state=s0, return_state=True)
        grads = torch.autograd.grad((y ** 2).sum() + h.sum(), [x, *layer.parameters()])
        results.append((y, c, h, grads))
    layer.fused = True
    (y1, c1, h1, g1), (y2, c2, h2, g2) = results
    assert_close_to_reference(y1, y2, tol, "y")
    assert torch.equal(c1, c2)
    assert_close_to_reference(h1, h2, tol, "state")
    for (name, _), a, r in zip([("x", None), *layer.named_parameters()], g1, g2):
        assert_close_to_reference(a, r, 10 * tol, f"grad of {name}")


@needs_native
def test_fused_gradients_do_not_depend_on_thread_count(tmp_path):
    """The same backward on 1 and 2 threads (child processes) gives bit-identical gradients (200
    channels: the conv kernels split each row into chunks of 128)."""
    code = (
        "import sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_mamba_fused import _operands, _grads\n"
        "from ssmkit.ops.mamba_fused import mamba_inner\n"
        "torch.set_num_threads(int(sys.argv[2]))\n"
        "args = _operands(2, 90, 200, 8, 3, 4, dtype=torch.float32)\n"
        "y, h, g = _grads(mamba_inner, args, 16)\n"
        "torch.save([y, h, *g], sys.argv[3])\n")
    outs = []
    for threads in (1, 2):
        path = tmp_path / f"grads_{threads}.pt"
        env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-c", code, TESTS, str(threads), str(path)], check=True, env=env)
        outs.append(torch.load(path))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# --- Mamba-2's conv + SiLU of [x, B, C] (mamba2_conv) ---------------------------------------

@needs_native
@pytest.mark.parametrize("E,GN,H,K,L", [(40, 12, 3, 4, 23), (64, 128, 2, 4, 5), (8, 4, 1, 3, 1), (300, 12, 3, 4, 9), (300, 12, 3, 3, 9)])
@pytest.mark.parametrize("with_state", [True, False])
def test_mamba2_conv_equals_reference_float64_with_gradients(E, GN, H, K, L, with_state):
    from ssmkit.ops.mamba_fused import mamba2_conv, mamba2_conv_ref
    g = torch.Generator().manual_seed(1)
    Cd = E + 2 * GN
    zx = torch.randn(3, L, E + Cd + H, generator=g, dtype=f64).requires_grad_()
    w = torch.randn(Cd, 1, K, generator=g, dtype=f64).requires_grad_()
    cb = torch.randn(Cd, generator=g, dtype=f64).requires_grad_()
    c0 = torch.randn(3, Cd, K - 1, generator=g, dtype=f64).requires_grad_() if with_state else None
    live = [zx, w, cb] + ([c0] if with_state else [])
    outs = mamba2_conv(zx, w, cb, (E, E, GN, H), c0)
    refs = mamba2_conv_ref(zx, w, cb, (E, E, GN, H), c0)
    weights = [torch.randn(r.shape, generator=g, dtype=f64) for r in refs]
    for name, o, r in zip(["z", "x", "B", "C", "dt"], outs, refs):
        assert o.is_contiguous()
        assert_close_to_reference(o, r, 1e-13, name)
    got = torch.autograd.grad(sum((o * v).sum() for o, v in zip(outs, weights)), live)
    want = torch.autograd.grad(sum((r * v).sum() for r, v in zip(refs, weights)), live)
    for name, a, r in zip(["zxbcdt", "conv_weight", "conv_bias", "conv_state"], got, want):
        assert_close_to_reference(a, r, 1e-13, f"grad of {name}")


@needs_native
def test_mamba2_conv_reads_rows_padded_as_padded_linear_leaves_them():
    """zxbcdt whose rows are 400 apart (the padded in-projection) gives the same outputs and
    gradients as its contiguous copy, without being copied first."""
    from ssmkit.ops._native import row_view
    from ssmkit.ops.mamba_fused import mamba2_conv
    g = torch.Generator().manual_seed(3)
    E, GN, H, K, L = 128, 64, 2, 4, 37
    Din = 2 * E + 2 * GN + H
    dense = torch.randn(2, L, Din, generator=g)
    strided = torch.full((2, L, 400), float("nan"))  # the padding must never be read
    strided[..., :Din] = dense
    strided = strided[..., :Din].requires_grad_()
    dense.requires_grad_()
    assert row_view(strided.detach())[0].data_ptr() == strided.data_ptr()  # taken as it is, no copy
    w = torch.randn(E + 2 * GN, 1, K, generator=g, requires_grad=True)
    cb = torch.randn(E + 2 * GN, generator=g, requires_grad=True)
    a = mamba2_conv(strided, w, cb, (E, E, GN, H))
    b = mamba2_conv(dense, w, cb, (E, E, GN, H))
    weights = [torch.randn(t.shape, generator=g) for t in b]
    for o, r in zip(a, b):
        assert torch.equal(o, r)
    ga = torch.autograd.grad(sum((o * v).sum() for o, v in zip(a, weights)), [strided, w, cb])
    gb = torch.autograd.grad(sum((o * v).sum() for o, v in zip(b, weights)), [dense, w, cb])
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)


@pytest.mark.parametrize("bad, name", [
    (dict(zxbcdt=torch.randn(2, 5, 380)), "zxbcdt"),  # not E + Ex + 2 GN + H wide: read past each row before
    (dict(conv_weight=torch.randn(250, 1, 4)), "conv_weight"),
    (dict(conv_bias=torch.randn(7)), "conv_bias"),
    (dict(conv_state=torch.randn(2, 256, 2)), "conv_state"),
    (dict(sizes=(128, 128, 64)), "sizes"),
    (dict(sizes=(128, 0, 64, 2)), "sizes[1]"),
])
def test_mamba2_conv_names_a_wrong_shape(bad, name):
    from helpers import raises_naming
    from ssmkit.ops.mamba_fused import mamba2_conv
    args = dict(zxbcdt=torch.randn(2, 5, 386), conv_weight=torch.randn(256, 1, 4), conv_bias=torch.randn(256),
                sizes=(128, 128, 64, 2), conv_state=None)
    args.update(bad)
    with raises_naming(ValueError, name):
        mamba2_conv(args["zxbcdt"], args["conv_weight"], args["conv_bias"], args["sizes"], args["conv_state"])


@pytest.mark.parametrize("bad, name", [
    (dict(xz=torch.randn(2, 9, 31)), "xz"),
    (dict(conv_weight=torch.randn(15, 1, 4)), "conv_weight"),
    (dict(x_proj_weight=torch.randn(10, 17)), "x_proj_weight"),
    (dict(D=torch.randn(5)), "D"),
    (dict(ssm_state=torch.randn(2, 16, 3)), "ssm_state"),
])
def test_mamba_inner_names_a_wrong_shape(bad, name):
    """A (E, N + 1) against an x_proj of R + 2N rows used to run, reading past each row of the
    projection; every such mismatch is now refused by name."""
    from helpers import raises_naming
    from ssmkit.ops.mamba_fused import mamba_inner
    E, N, R, K = 16, 4, 2, 4
    args = dict(xz=torch.randn(2, 9, 2 * E), conv_weight=torch.randn(E, 1, K), conv_bias=torch.randn(E),
                x_proj_weight=torch.randn(R + 2 * N, E), dt_proj_weight=torch.randn(E, R),
                dt_proj_bias=torch.randn(E), A=-torch.rand(E, N), D=torch.randn(E))
    args.update(bad)
    with raises_naming(ValueError, name):
        mamba_inner(**args)

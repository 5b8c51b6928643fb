"""linear_scan against the loop (values and gradients, real and complex), and the S5 layer."""
import pytest
import torch

from ssmkit.hippo import nplr
from ssmkit.hippo.discretize import discretize
from ssmkit.hippo.measures import transition
from ssmkit.layers import S5
from ssmkit.layers.base import run_steps
from ssmkit.ops import linear_scan, linear_scan_ref
from ssmkit.ops import scan as scan_mod

from helpers import raises_naming, rel_err

f64, c128 = torch.float64, torch.complex128


# L = 17, 9: the plain step loop; L = 64, 150: the blocked two-level scan (150 is not a square)
@pytest.mark.parametrize("dtype", [f64, c128])
@pytest.mark.parametrize("shape", [(2, 1, 3), (2, 17, 3), (1, 9, 2, 4), (2, 64, 3), (2, 150, 2, 2)])
@pytest.mark.parametrize("use_h0", [True, False])
def test_linear_scan_equals_reference(dtype, shape, use_h0):
    g = torch.Generator().manual_seed(sum(shape))
    a = (0.95 * torch.rand(shape, generator=g, dtype=f64)).to(dtype)
    if dtype == c128:
        a = a * torch.exp(1j * torch.rand(shape, generator=g, dtype=f64))
    a.requires_grad_()
    b = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    h0 = torch.randn((shape[0],) + shape[2:], generator=g, dtype=dtype, requires_grad=True) if use_h0 else None
    h1, h2 = linear_scan(a, b, h0), linear_scan_ref(a, b, h0)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    w = torch.randn(shape, generator=g, dtype=dtype)
    inputs = (a, b) + ((h0,) if use_h0 else ())
    loss = lambda h: (h * w).real.sum()
    for x, y in zip(torch.autograd.grad(loss(h1), inputs), torch.autograd.grad(loss(h2), inputs)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("L", [5, 200])
def test_linear_scan_broadcast_a_and_dtype_promotion(L):
    g = torch.Generator().manual_seed(L)
    a = (0.9 * torch.rand(1, L, 3, generator=g, dtype=f64) * torch.exp(1j * torch.rand(1, L, 3, generator=g, dtype=f64)))
    a.requires_grad_()
    b = torch.randn(4, L, 3, generator=g, dtype=f64, requires_grad=True)  # real b, complex a
    h1, h2 = linear_scan(a, b), linear_scan_ref(a, b.to(c128))
    assert h1.dtype == c128 and h1.shape == (4, L, 3)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    ga1, gb1 = torch.autograd.grad(h1.abs().sum(), (a, b))
    ga2, gb2 = torch.autograd.grad(h2.abs().sum(), (a, b))
    assert ga1.shape == a.shape and gb1.dtype == f64
    torch.testing.assert_close(ga1, ga2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb1, gb2, rtol=1e-10, atol=1e-12)


# a step shared by every time and batch entry: the time-invariant path (powers computed once)
@pytest.mark.parametrize("a_shape", [(3,), (1, 1, 2, 3), (2, 1), (1, 3)])
@pytest.mark.parametrize("L", [9, 150])
@pytest.mark.parametrize("use_h0", [True, False])
def test_linear_scan_time_invariant_step_equals_reference(a_shape, L, use_h0):
    g = torch.Generator().manual_seed(L + len(a_shape))
    shape = (3, L, 2, 3)
    a = 0.97 * torch.rand(a_shape, generator=g, dtype=f64) * torch.exp(1j * torch.rand(a_shape, generator=g, dtype=f64))
    a.requires_grad_()
    b = torch.randn(shape, generator=g, dtype=c128, requires_grad=True)
    h0 = torch.randn((3, 2, 3), generator=g, dtype=c128, requires_grad=True) if use_h0 else None
    h1, h2 = linear_scan(a, b, h0), linear_scan_ref(a, b, h0)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    w = torch.randn(shape, generator=g, dtype=c128)
    inputs = (a, b) + ((h0,) if use_h0 else ())
    loss = lambda h: (h * w).real.sum()
    for x, y in zip(torch.autograd.grad(loss(h1), inputs), torch.autograd.grad(loss(h2), inputs)):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_linear_scan_blocked_threshold_is_exercised():
    # the parametrised lengths above cover both sides of the switch to the blocked scan
    assert 17 < scan_mod._BLOCKED_MIN_LENGTH <= 64


def test_linear_scan_one_million_steps_stable_with_gradients():
    L, a0 = 1_000_000, 0.99
    g = torch.Generator().manual_seed(0)
    a = torch.full((1, L, 2), a0, requires_grad=True)
    b = torch.randn(1, L, 2, generator=g)
    b[0, :, 0] = 1.0  # channel 0: closed form h_t = (1 - a^t) / (1 - a)
    b.requires_grad_()
    h = linear_scan(a, b)
    assert torch.isfinite(h).all()
    t = torch.tensor([1.0, 10.0, 1000.0, L], dtype=f64)
    torch.testing.assert_close(h[0, t.long() - 1, 0].double(), (1 - a0 ** t) / (1 - a0), rtol=1e-5, atol=0)
    # channel 1: the end state forgets all but the last few thousand steps (0.99^3000 ≈ 1e-13)
    tail = linear_scan_ref(a[:, -3000:].detach().double(), b[:, -3000:].detach().double())
    torch.testing.assert_close(h[0, -1, 1].double(), tail[0, -1, 1], rtol=1e-4, atol=1e-4)
    # gradient of Σ_t h_t: ∂/∂b_t = (1 - a^(L-t+1)) / (1 - a)
    ga, gb = torch.autograd.grad(h.sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    s = torch.tensor([1, 500_000, L - 10, L])
    torch.testing.assert_close(gb[0, s - 1, 0].double(), (1 - a0 ** (L - s + 1).double()) / (1 - a0), rtol=1e-5, atol=0)


def test_linear_scan_bad_input():
    with pytest.raises(ValueError, match="broadcast"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 4))
    with pytest.raises(ValueError, match="broadcast"):  # a broadcasts with b, but not *to* b's shape
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 1))
    with raises_naming(ValueError, "initial_state"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 3), torch.ones(3))
    with pytest.raises(ValueError, match="^b .*NaN"):
        linear_scan(torch.ones(2, 5, 3), torch.full((2, 5, 3), float("nan")))
    with pytest.raises(ValueError, match="^a .*NaN"):
        linear_scan(torch.full((2, 5, 3), float("inf")), torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match="^initial_state .*NaN"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 3), torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match=r"\bb must have shape"):
        linear_scan(torch.ones(2, 0, 3), torch.ones(2, 0, 3))
    with raises_naming(TypeError, "b"):
        linear_scan(torch.ones(2, 5), torch.ones(2, 5, dtype=torch.long))
    with raises_naming(TypeError, "a"):
        linear_scan(torch.ones(2, 5, dtype=torch.complex32), torch.ones(2, 5))


def test_linear_scan_empty_batch_one_step_and_half_precision():
    h = linear_scan(torch.ones(0, 5, 3), torch.ones(0, 5, 3), initial_state=torch.ones(0, 3))
    assert h.shape == (0, 5, 3)
    g = torch.Generator().manual_seed(0)
    a, b, h0 = torch.rand(2, 1, 3, generator=g, dtype=f64), torch.randn(2, 1, 3, generator=g, dtype=f64), torch.randn(2, 3, dtype=f64)
    torch.testing.assert_close(linear_scan(a, b, h0), a[:, 0:1] * h0[:, None] + b, rtol=1e-14, atol=0)
    # float16 / bfloat16: computed in float32, rounded once at the end (L = 100 > blocked threshold)
    a, b = 0.95 * torch.rand(2, 100, 3, generator=g), torch.randn(2, 100, 3, generator=g)
    for dtype, tol in ((torch.float16, 1e-3), (torch.bfloat16, 8e-3)):
        h = linear_scan(a.to(dtype), b.to(dtype))
        assert h.dtype == dtype
        ref = linear_scan_ref(a.to(dtype).double(), b.to(dtype).double())
        assert float((h.double() - ref).abs().max() / ref.abs().max()) < tol, dtype


def test_s5_init_is_hippo_legs_diagonal_and_zoh():
    N, H = 8, 3
    torch.manual_seed(0)
    layer = S5(H, N).double()
    lam = torch.complex(-torch.exp(layer.A_real_log), layer.A_imag)
    # independent: eigenvalues of the normal part A + PPᵀ of HiPPO-LegS (P_n = √(n + ½)),
    # one of each conjugate pair, by a general (non-Hermitian) eigensolver
    A, _ = transition("legs", N)
    P = torch.sqrt(torch.arange(N, dtype=f64) + 0.5)
    ev = torch.linalg.eigvals(A + P[:, None] * P[None, :])
    ev = ev[ev.imag > 0]
    ev = ev[torch.argsort(ev.imag)]
    lam_sorted = lam[torch.argsort(lam.imag)]
    torch.testing.assert_close(lam_sorted, ev, rtol=1e-6, atol=1e-6)  # parameters were stored in float32
    torch.testing.assert_close(lam.real, torch.full((N // 2,), -0.5, dtype=f64))
    torch.testing.assert_close(lam, nplr("legs", N).Lambda, rtol=1e-6, atol=1e-6)
    # ZOH, against the block matrix exponential of ssmkit.hippo.discretize, mode by mode
    dA, dB, _ = layer._discrete()
    dt = torch.exp(layer.log_dt)
    Bt = torch.view_as_complex(layer.B)  # (M, H)
    for m in range(N // 2):
        for h in range(H):
            Ad, Bd = discretize(lam[m].reshape(1, 1), Bt[m, h].reshape(1), dt[m], "zoh")
            torch.testing.assert_close(dA[m], Ad[0, 0], rtol=1e-9, atol=1e-12)  # matrix_exp: ~1e-11
            torch.testing.assert_close(dB[m, h], Bd[0], rtol=1e-9, atol=1e-12)
    assert not S5.needs_channel_mixer


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_s5_forward_equals_step(dtype, tol):
    torch.manual_seed(0)
    layer = S5(6, 8).to(dtype)
    x = torch.randn(2, 90, 6, dtype=dtype)  # long enough for the blocked scan
    y, s = layer(x, return_state=True)
    ys, ss = run_steps(layer, x)
    assert rel_err(y, ys) < tol
    assert rel_err(s, ss) < tol


def test_s5_padding_continuation_gradcheck():
    torch.manual_seed(0)
    layer = S5(4, 6).double()
    x = torch.randn(3, 12, 4, dtype=f64)
    lengths = [12, 5, 1]
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    y, s = layer(torch.where(mask[..., None], x, torch.full_like(x, 3.0)), mask=mask, return_state=True)
    assert bool((y[~mask] == 0).all())
    for i, l in enumerate(lengths):
        yi, si = layer(x[i:i + 1, :l], return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s[i:i + 1], si, rtol=1e-10, atol=1e-12)
    # chunked processing (three pieces, state carried) equals one pass, outputs and final state
    y_all, s_all = layer(x, return_state=True)
    y1, s1 = layer(x[:, :4], return_state=True)
    y2, s2 = layer(x[:, 4:7], initial_state=s1, return_state=True)
    y3, s3 = layer(x[:, 7:], initial_state=s2, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y_all, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s3, s_all, rtol=1e-10, atol=1e-12)
    xs = torch.randn(1, 5, 4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (xs,), eps=1e-6, atol=1e-6)


def test_s5_bad_input():
    with raises_naming(ValueError, "d_state"):
        S5(4, 5)
    layer = S5(4, 6)
    with raises_naming(ValueError, "x"):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"\bx .*NaN"):
        layer(torch.full((2, 5, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\bx_t .*NaN"):
        layer.step(torch.full((2, 4), float("nan")), layer.initial_state(2))
    with raises_naming(ValueError, "initial_state"):
        layer(torch.randn(2, 5, 4), initial_state=layer.initial_state(3))
    with pytest.raises(ValueError, match=r"\binitial_state .*NaN"):
        layer(torch.randn(2, 5, 4), initial_state=torch.full((2, 3), float("nan"), dtype=torch.complex64))
    with raises_naming(ValueError, "mask"):
        layer(torch.randn(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    with torch.no_grad():
        layer.log_dt[0] = float("nan")
    with raises_naming(ValueError, "log_dt"):
        layer(torch.randn(2, 5, 4))


def test_s5_initial_state_of_another_dtype_is_cast_and_mask_must_be_right_padding():
    """A complex128 (or real) initial state on a float32 layer runs in the layer's precision: it
    matches the float64 layer from the same state to float32 accuracy; a mask with a gap is refused."""
    torch.manual_seed(0)
    layer = S5(4, 4)
    x = torch.randn(2, 6, 4)
    h0 = torch.randn(2, 2, dtype=torch.complex128) * 0.5
    y, h = layer(x, initial_state=h0, return_state=True)
    y64, h64 = layer.double()(x.double(), initial_state=h0, return_state=True)
    layer.float()
    assert y.dtype == torch.float32 and h.dtype == torch.complex64
    assert rel_err(y.double(), y64) < 1e-5 and rel_err(h.to(torch.complex128), h64) < 1e-5
    y_real = layer(x, initial_state=h0.real.float())  # a real state is a complex one with zero imaginary part
    assert rel_err(y_real, layer(x, initial_state=h0.real.to(torch.complex64))) < 1e-6
    layer(x, initial_state=layer.initial_state(2, dtype=torch.float64))  # the layer's own float64 state
    y1, h1 = layer.step(x[:, 0], h0)  # step casts its state the same way
    assert h1.dtype == torch.complex64 and rel_err(y1, y[:, 0]) < 1e-6
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 2] = False
    with raises_naming(ValueError, "mask"):
        layer(x, mask=mask)
    mask[0, 2:] = False  # right padding is accepted
    assert layer(x, mask=mask).shape == (2, 6, 4)

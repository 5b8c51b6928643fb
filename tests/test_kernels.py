"""Fast kernels against the naive reference, FFT convolution against the definition,
and state-space <-> transfer-function conversions, in float64."""
import numpy as np
import pytest
import torch

from ssmkit.kernels import fold, naive_kernel, rational_kernel, rational_kernel_ref, vandermonde_kernel, vandermonde_kernel_ref
from ssmkit.lti import companion, poly_from_roots, ss_to_tf, tf_to_ss
from ssmkit.ops import _native, causal_conv_ref, fftconv

from helpers import raises_naming, rel_err

f64, c128 = torch.float64, torch.complex128


@pytest.mark.parametrize("M,L", [(1, 1), (3, 17), (8, 100), (5, 1000)])
def test_vandermonde_equals_naive(M, L):
    g = torch.Generator().manual_seed(M * L)
    lam = torch.complex(-torch.rand(2, M, generator=g, dtype=f64) * 0.5 - 0.01, torch.randn(2, M, generator=g, dtype=f64) * 3)
    dt = torch.rand(2, 1, generator=g, dtype=f64) * 0.2 + 0.01
    CB = torch.randn(2, M, generator=g, dtype=c128)
    K = vandermonde_kernel(dt * lam, CB, L, lag_block=7)  # a block that does not divide L
    dA = torch.exp(dt * lam)
    # the real system of both conjugate modes, by powers
    Ad = torch.diag_embed(torch.cat([dA, dA.conj()], -1))
    Bd = torch.cat([CB, CB.conj()], -1)
    Kn = naive_kernel(Ad, Bd, torch.ones_like(Bd), L)
    assert rel_err(K, Kn.real) < 1e-10
    assert rel_err(vandermonde_kernel_ref(dA, CB, L), Kn.real) < 1e-10


@pytest.mark.parametrize("N,L", [(1, 1), (3, 5), (4, 16), (7, 33), (6, 3)])
def test_rational_kernel_equals_companion_impulse_response(N, L):
    g = torch.Generator().manual_seed(10 * N + L)
    a = torch.randn(2, N, generator=g, dtype=f64)
    a = 0.9 * a / a.abs().sum(-1, keepdim=True)  # stable
    b = torch.randn(2, N, generator=g, dtype=f64)
    K = rational_kernel(a, b, L)
    Ad, Bd, C = tf_to_ss(a, b, L)
    Kn = naive_kernel(Ad, Bd, C, L)
    assert rel_err(K, Kn) < 1e-10
    # also the plain recurrence of the AR filter: lag 0 .. L-1
    h0 = torch.randn(2, generator=g, dtype=f64)
    Kh = rational_kernel(a, b, L, h0=h0)
    torch.testing.assert_close(Kh[:, 0], K[:, 0] + h0)
    torch.testing.assert_close(Kh[:, 1:], K[:, 1:])


def test_rational_kernel_poles_near_unit_circle():
    # roots of modulus 0.99: the kernel decays slowly, aliasing would be large if truncation were wrong
    N, L = 6, 257
    r = 0.99 * torch.exp(1j * torch.tensor([0.3, -0.3, 1.1, -1.1, 2.0, -2.0], dtype=f64))
    a = poly_from_roots(r.to(c128)).real.unsqueeze(0)  # 1 + a_1 z + ... has roots 1/r: poles r
    b = torch.randn(1, N, dtype=f64, generator=torch.Generator().manual_seed(0))
    K = rational_kernel(a, b, L)
    Ad, Bd, C = tf_to_ss(a, b, L)
    Kn = naive_kernel(Ad, Bd, C, L)
    assert float((K - Kn).abs().max() / Kn.abs().max()) < 1e-9
    assert float(Kn[0, -1].abs()) > 1e-3  # still alive at lag L-1: the test is not vacuous
    # eigenvalues of the companion matrix are the poles
    ev = torch.linalg.eigvals(companion(a[0]))
    torch.testing.assert_close(ev.abs(), torch.full((N,), 0.99, dtype=f64), rtol=1e-10, atol=1e-10)


def test_fold_handles_order_above_length():
    p = torch.arange(1.0, 11.0, dtype=f64)
    torch.testing.assert_close(fold(p, 4), torch.tensor([1 + 5 + 9, 2 + 6 + 10, 3 + 7, 4 + 8], dtype=f64))
    N, L = 9, 4
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1, N, generator=g, dtype=f64)
    a = 0.5 * a / a.abs().sum()
    b = torch.randn(1, N, generator=g, dtype=f64)
    Ad, Bd, C = tf_to_ss(a, b, L)
    assert rel_err(rational_kernel(a, b, L), naive_kernel(Ad, Bd, C, L)) < 1e-10


@pytest.mark.parametrize("N,L", [(3, 8), (5, 13), (4, 1)])
def test_ss_to_tf_round_trip(N, L):
    g = torch.Generator().manual_seed(N + L)
    Ad = torch.randn(2, N, N, generator=g, dtype=f64) / N
    Bd = torch.randn(2, N, generator=g, dtype=f64)
    C = torch.randn(2, N, generator=g, dtype=f64)
    a, b = ss_to_tf(Ad, Bd, C, L)
    K = naive_kernel(Ad, Bd, C, L)
    assert rel_err(rational_kernel(a, b, L), K) < 1e-10
    # characteristic polynomial against numpy
    np.testing.assert_allclose(a[0].numpy(), np.poly(Ad[0].numpy())[1:], rtol=1e-9, atol=1e-12)
    A2, B2, C2 = tf_to_ss(a, b, L)
    assert rel_err(naive_kernel(A2, B2, C2, L), K) < 1e-10


@pytest.mark.parametrize("L", [1, 2, 7, 64, 100])
def test_fftconv_is_linear_causal_convolution(L):
    g = torch.Generator().manual_seed(L)
    u = torch.randn(2, L, 3, generator=g, dtype=f64)
    K = torch.randn(3, L, generator=g, dtype=f64)
    D = torch.randn(3, generator=g, dtype=f64)
    torch.testing.assert_close(fftconv(u, K, D), causal_conv_ref(u, K, D), rtol=1e-10, atol=1e-12)
    # causality: changing the future does not change the past
    if L > 2:
        u2 = u.clone()
        u2[:, L // 2:] += 1.0
        torch.testing.assert_close(fftconv(u2, K)[:, : L // 2], fftconv(u, K)[:, : L // 2], rtol=1e-12, atol=1e-12)


def test_kernel_bad_input():
    with raises_naming(ValueError, "L"):
        rational_kernel(torch.zeros(2, 3), torch.zeros(2, 3), 0)
    with raises_naming(ValueError, "N"):
        rational_kernel(torch.zeros(2, 3), torch.zeros(2, 4), 8)
    with raises_naming(ValueError, "K"):
        fftconv(torch.zeros(1, 5, 3), torch.zeros(2, 5))
    with raises_naming(ValueError, "u"):
        fftconv(torch.zeros(5, 3), torch.zeros(3, 5))
    with raises_naming(ValueError, "Ad"):
        naive_kernel(torch.zeros(3, 4), torch.zeros(4), torch.zeros(4), 5)
    with pytest.raises(ValueError, match="NaN"):
        vandermonde_kernel(torch.full((2,), float("nan"), dtype=c128), torch.ones(2, dtype=c128), 4)


def _real_system(N, g, radius=0.9):
    """A random real diagonalisable (Ā, B̄, C) of order N (odd N has a real eigenvalue)."""
    Ad = torch.randn(N, N, generator=g, dtype=f64)
    Ad = radius * Ad / torch.linalg.eigvals(Ad).abs().max()
    return Ad, torch.randn(N, generator=g, dtype=f64), torch.randn(N, generator=g, dtype=f64)


@pytest.mark.parametrize("N,L", [(1, 9), (3, 50), (5, 7), (7, 333), (6, 100)])
def test_vandermonde_general_modes_odd_N(N, L):
    # A real system of any order, odd included, through its eigendecomposition Ā = V diag(μ) V⁻¹:
    # K_k = Σ_n (C V)_n (V⁻¹ B̄)_n μ_n^k, all N modes kept (conj_pairs=False).
    g = torch.Generator().manual_seed(100 * N + L)
    Ad, Bd, C = _real_system(N, g)
    mu, V = torch.linalg.eig(Ad)
    CB = (C.to(c128) @ V) * torch.linalg.solve(V, Bd.to(c128))
    Kn = naive_kernel(Ad, Bd, C, L)
    for lag_block in (None, 1, 4, L, L + 3):
        K = vandermonde_kernel(torch.log(mu), CB, L, lag_block=lag_block, conj_pairs=False)
        assert K.shape == (L,) and K.is_complex()
        assert float(K.imag.abs().max()) < 1e-10 * float(Kn.abs().max())
        assert rel_err(K.real, Kn) < 1e-10


def test_vandermonde_long_and_batched():
    # a long kernel (many blocks), leading dims broadcast, against cumulative powers
    g = torch.Generator().manual_seed(5)
    w = torch.complex(-torch.rand(3, 1, 4, generator=g, dtype=f64) * 0.01, torch.randn(3, 1, 4, generator=g, dtype=f64))
    CB = torch.randn(2, 4, generator=g, dtype=c128)
    K = vandermonde_kernel(w, CB, 5000)
    assert K.shape == (3, 2, 5000)
    assert rel_err(K, vandermonde_kernel_ref(torch.exp(w), CB, 5000)) < 1e-10


def _impulse_response(a, b, n):
    """Impulse response h_0..h_{n-1} of b(z)/a(z) by the difference equation (scipy.signal.lfilter)."""
    from scipy.signal import lfilter

    e = np.zeros(n)
    e[0] = 1.0
    return lfilter(b, np.concatenate([[1.0], a]), e)


@pytest.mark.parametrize("N,L", [(6, 257), (5, 64), (3, 301)])
def test_rational_kernel_equals_aliased_impulse_response_near_unit_circle(N, L):
    # Poles of modulus 0.99 (odd N: one real pole at 0.99, next to z = 1). The kernel of the
    # truncated generating function b(z)/a(z) at the L-th roots of unity is the impulse response
    # h aliased modulo L: K_k = Σ_m h_{k + mL}; the tail beyond 4000 lags is below
    # 0.99^4000 ≈ 3e-18 relative, far under the tolerance.
    g = torch.Generator().manual_seed(N + L)
    ang = torch.rand(N // 2, generator=g, dtype=f64) * 3 + 0.05
    roots = torch.cat([ang, -ang] + ([torch.zeros(1, dtype=f64)] if N % 2 else []))
    r = 0.99 * torch.exp(1j * roots)
    a = poly_from_roots(r.to(c128)).real  # 1 + a_1 z + …: the recurrence's poles are the roots r
    b = torch.randn(N, generator=g, dtype=f64)
    torch.testing.assert_close(torch.linalg.eigvals(companion(a)).abs(), torch.full((N,), 0.99, dtype=f64))
    n = L * (4000 // L + 5)
    h = _impulse_response(a.numpy(), b.numpy(), n)
    want = torch.from_numpy(h.reshape(-1, L).sum(0))
    K = rational_kernel(a, b, L)
    err = (K - want).abs()
    assert float(err.max() / want.abs().max()) < 1e-10
    # FFT rounding is spread evenly over the lags (absolute ~1e-13 · max|K| here), so the ends are
    # held to the same max-relative bound explicitly: lag 0 (no wrap-around) and lag L-1 (most).
    for k in (0, L - 1):
        assert float(err[k]) < 1e-10 * float(want.abs().max())
    assert float(want[-10:].abs().max()) > 1e-3 * float(want.abs().max())  # alive up to lag L-1
    # the companion realisation steps the same impulse response, lag by lag
    Ad, Bd, C = tf_to_ss(a, b, L)
    x, resp = torch.zeros(N, dtype=f64), []
    for k in range(L):
        x = Ad @ x + (Bd if k == 0 else 0)
        resp.append(C @ x)
    assert float((torch.stack(resp) - want).abs().max() / want.abs().max()) < 1e-10


@pytest.mark.parametrize("L,Lk", [(10, 3), (10, 25), (33, 33)])
def test_fftconv_against_numpy_convolve(L, Lk):
    g = torch.Generator().manual_seed(L + Lk)
    u = torch.randn(2, L, 3, generator=g, dtype=f64)
    K = torch.randn(3, Lk, generator=g, dtype=f64)
    y = fftconv(u, K)
    for b in range(2):
        for h in range(3):
            want = np.convolve(u[b, :, h].numpy(), K[h].numpy())[:L]  # full linear convolution, causal part
            np.testing.assert_allclose(y[b, :, h].numpy(), want, rtol=1e-10, atol=1e-12)


def test_kernel_bad_input_more():
    with raises_naming(ValueError, "L"):
        vandermonde_kernel(torch.ones(2, dtype=c128), torch.ones(2, dtype=c128), 0)
    with raises_naming(ValueError, "lag_block"):
        vandermonde_kernel(torch.ones(2, dtype=c128), torch.ones(2, dtype=c128), 4, lag_block=0)
    with raises_naming(ValueError, "L"):
        naive_kernel(torch.eye(2), torch.ones(2), torch.ones(2), 0)
    with pytest.raises(ValueError, match="NaN"):
        fftconv(torch.full((1, 4, 2), float("nan")), torch.zeros(2, 4))
    with raises_naming(ValueError, "Bd"):
        ss_to_tf(torch.eye(3), torch.ones(4), torch.ones(3), 5)
    with raises_naming(ValueError, "b"):
        tf_to_ss(torch.zeros(2, 3), torch.zeros(2, 4), 5)


@pytest.mark.parametrize("N,L", [(1, 1), (3, 8), (6, 5), (4, 40)])
def test_rational_kernel_equals_reference_and_aliased_impulse_response(N, L):
    # the packaged reference (companion system powered step by step) agrees with the FFT route,
    # and both with scipy's impulse response of b(z)/a(z) aliased modulo L (an independent check)
    from ssmkit.kernels import rational_kernel_ref

    g = torch.Generator().manual_seed(10 * N + L)
    a = torch.randn(N, generator=g, dtype=f64)
    a = 0.6 * a / a.abs().sum()  # Σ|a| < 1: poles inside the unit disk
    b = torch.randn(N, generator=g, dtype=f64)
    ref = rational_kernel_ref(a, b, L)
    assert rel_err(rational_kernel(a, b, L), ref) < 1e-10
    n = L * (2000 // L + 3)
    h = _impulse_response(a.numpy(), b.numpy(), n)
    assert rel_err(ref, torch.from_numpy(h.reshape(-1, L).sum(0))) < 1e-10


def test_kernels_reliability_regressions():
    """conj_pairs takes a bool only; an empty batch of channels gives an empty kernel."""
    from helpers import raises_naming
    from ssmkit.kernels import dplr_kernel

    w = -0.1 + 1j * torch.randn(2, 3, dtype=torch.float64)
    CB = torch.randn(2, 3, dtype=torch.complex128)
    for bad in (0, 1, "yes", None):
        with raises_naming(TypeError, "conj_pairs"):
            vandermonde_kernel(w, CB, 8, conj_pairs=bad)
        with raises_naming(TypeError, "conj_pairs"):
            dplr_kernel(w, torch.zeros(1, 2, 3, dtype=torch.complex128), CB, CB, torch.ones(2, dtype=torch.float64) * 0.1,
                        8, conj_pairs=bad)
    for cd, rd in ((torch.complex64, torch.float32), (torch.complex128, torch.float64)):
        z = torch.zeros(0, 3, dtype=cd)
        for conj, out_dtype in ((True, rd), (False, cd)):
            for method in ("vandermonde", "cauchy"):
                K = dplr_kernel(z, torch.zeros(1, 0, 3, dtype=cd), z, z, torch.zeros(0, dtype=rd), 6, conj_pairs=conj,
                                method=method)
                assert K.shape == (0, 6) and K.dtype == out_dtype
    for rd in (torch.float32, torch.float64):
        a = torch.zeros(0, 4, dtype=rd)
        for L in (1, 17):
            K = rational_kernel(a, a, L, h0=torch.zeros(0, dtype=rd))
            assert K.shape == (0, L) and K.dtype == rd
        assert rational_kernel(torch.zeros(2, 0, 3, dtype=rd), torch.zeros(1, 3, dtype=rd), 5).shape == (2, 0, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rational_kernel_refuses_a_pole_on_the_circle_in_float32_too(dtype):
    """(1 - z)(stable factor): the denominator at z = 1 is zero only up to rounding (~1e-7 in
    float32), which must still be read as a pole on the unit circle."""
    from helpers import raises_naming

    stable = poly_from_roots(torch.tensor([0.5 + 0.3j, 0.5 - 0.3j, -0.4], dtype=torch.complex128)).real
    full = torch.cat([torch.ones(1, dtype=torch.float64), stable])  # 1 + a_1 z + ...
    with_unit = torch.cat([full, torch.zeros(1, dtype=torch.float64)]) - torch.cat([torch.zeros(1, dtype=torch.float64), full])
    a = with_unit[1:].unsqueeze(0).to(dtype)
    for L in (1, 13, 64):
        with raises_naming(ValueError, "a"):
            rational_kernel(a, torch.ones_like(a), L)
    assert torch.isfinite(rational_kernel(stable.unsqueeze(0).to(dtype), torch.ones(1, 3, dtype=dtype), 13)).all()


needs_native = pytest.mark.skipif(not _native.available(), reason="native library not built")


def _modes(shape, seed, dtype=c128):
    g = torch.Generator().manual_seed(seed)
    w = torch.complex(-torch.rand(*shape, generator=g, dtype=f64) * 0.3 - 1e-3, torch.randn(*shape, generator=g, dtype=f64) * 2)
    CB = torch.complex(torch.randn(*shape, generator=g, dtype=f64), torch.randn(*shape, generator=g, dtype=f64))
    return w.to(dtype), CB.to(dtype)


@needs_native
@pytest.mark.parametrize("shape,L", [((4, 32), 196), ((3, 13), 7), ((2, 1, 5), 3000), ((2, 9), 1), ((1, 0), 5)])
def test_native_vandermonde_equals_cumulative_powers(shape, L):
    """The recurrence's error grows like L ulp of float64: ~1e-13 at L = 3000. M = 13 and 5 leave a
    partial block of 8 modes; L = 1 and M = 0 are the edges."""
    w, CB = _modes(shape, L)
    K = vandermonde_kernel(w, CB, L, method="native")
    assert K.shape == (*shape[:-1], L) and K.dtype == f64
    assert rel_err(K, vandermonde_kernel_ref(torch.exp(w), CB, L)) < 1e-11


@needs_native
@pytest.mark.parametrize("dtype,tol", [(c128, 1e-11), (torch.complex64, 2e-6)])
def test_native_vandermonde_gradients_equal_the_blocked_route(dtype, tol):
    """Gradients of both inputs, with broadcasting (w (H, M) against CB (B, H, M): the native route
    runs on the expanded rows and autograd sums them back). In complex64 both routes round their
    float32 inputs and outputs, a few 1e-7 relative; float64 agrees to the recurrence's error."""
    w, _ = _modes((5, 11), 0, dtype)
    _, CB = _modes((3, 5, 11), 1, dtype)
    w, CB = w.requires_grad_(), CB.requires_grad_()
    gK = torch.randn(3, 5, 150, dtype=torch.float64 if dtype == c128 else torch.float32)
    outs = []
    for method in ("native", "torch"):
        K = vandermonde_kernel(w, CB, 150, method=method)
        outs.append((K.detach(), *torch.autograd.grad(K, (w, CB), gK)))
    for a, r in zip(*outs):
        assert a.shape == r.shape and a.dtype == r.dtype
        assert rel_err(a, r) < tol


@needs_native
@pytest.mark.parametrize("shape,L", [((2, 13), 3000), ((3, 11), 150), ((2, 2), 5), ((4, 1), 1), ((2, 3), 128)])
def test_native_vandermonde_gradients_equal_cumulative_powers(shape, L):
    """The backward's tiles of at most 128 lags: the table e^{t w} and the anchors e^{b T w} each err by
    at most ~T/8 + 8 and ~L/T ulp of float64; autograd through the cumulative products is the reference.
    M = 13 and 11 end in a partial group of modes, L = 150, 5 and 1 pad their tiles with zeros."""
    w, CB = _modes(shape, L)
    gK = torch.randn(*shape[:-1], L, dtype=f64, generator=torch.Generator().manual_seed(L))
    got = torch.autograd.grad(vandermonde_kernel(w.requires_grad_(), CB.requires_grad_(), L, method="native"), (w, CB), gK)
    ref = torch.autograd.grad(vandermonde_kernel_ref(torch.exp(w), CB, L), (w, CB), gK)
    for a, r in zip(got, ref):
        assert rel_err(a, r) < 1e-11


@needs_native
def test_native_vandermonde_same_numbers_for_any_thread_count():
    w, CB = _modes((37, 16), 3, torch.complex64)
    w, CB = w.requires_grad_(), CB.requires_grad_()
    gK = torch.randn(37, 99)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            K = vandermonde_kernel(w, CB, 99)
            outs.append((K.detach(), *torch.autograd.grad(K, (w, CB), gK)))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(a, r) for a, r in zip(other, outs[0]))


def test_vandermonde_method_checked_by_name():
    w, CB = _modes((2, 3), 4)
    with raises_naming(ValueError, "method"):
        vandermonde_kernel(w, CB, 5, method="fast")
    with raises_naming(ValueError, "method"):  # the native route computes the real kernel only
        vandermonde_kernel(w, CB, 5, conj_pairs=False, method="native")
    with raises_naming(ValueError, "method"):  # and has no lag blocks
        vandermonde_kernel(w, CB, 5, lag_block=2, method="native")


@pytest.mark.parametrize("a_shape,b_shape,L", [((3, 4), (3, 4), 16), ((2, 8), (2, 8), 5), ((4, 3), (4, 3), 17),
                                               ((2, 6), (2, 6), 2), ((1, 4), (3, 4), 9), ((3, 4), (1, 4), 9),
                                               ((5,), (2, 5), 7), ((2, 3, 4), (3, 4), 12), ((1, 1), (1, 1), 1)])
def test_rational_kernel_fused_backward_equals_autograd(a_shape, b_shape, L):
    """The fused function's written-out gradients (∂p_b = irfft(G conj Q), ∂p_a = -irfft(G conj(K̂ Q)))
    against autograd through the companion powers (rational_kernel_ref), in float64: even and odd L
    (the Nyquist bin), N + 1 > L (folded coefficients), L = 1, and broadcast leading dimensions
    (the gradient summed back to each input's shape). Also torch.autograd.gradcheck."""
    g = torch.Generator().manual_seed(L + 31 * a_shape[-1])
    a = (0.4 * torch.randn(*a_shape, generator=g, dtype=f64) / a_shape[-1]).requires_grad_()
    b = torch.randn(*b_shape, generator=g, dtype=f64).requires_grad_()
    K = rational_kernel(a, b, L, method="fused")
    assert type(K.grad_fn).__name__.startswith("_RationalKernel")
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    K_ref = rational_kernel_ref(a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1]), L)
    gK = torch.randn(K.shape, generator=g, dtype=f64)
    got = torch.autograd.grad(K, (a, b), gK)
    want = torch.autograd.grad(K_ref, (a, b), gK)
    assert rel_err(K, K_ref) < 1e-10
    for x, y in zip(got, want):
        assert x.shape == y.shape and rel_err(x, y) < 1e-10
    assert torch.autograd.gradcheck(lambda a, b: rational_kernel(a, b, L, method="fused"), (a, b))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's forward AD warns about torch.jit.script
def test_rational_kernel_methods_and_higher_order_derivatives():
    """``auto`` is the fused function; ``torch`` keeps autograd's graph (double backward, forward
    mode), ``auto`` switches to it under forward-mode AD; a bad method is refused by name."""
    g = torch.Generator().manual_seed(5)
    a = (0.1 * torch.randn(2, 4, generator=g, dtype=f64)).requires_grad_()
    b = torch.randn(2, 4, generator=g, dtype=f64).requires_grad_()
    assert type(rational_kernel(a, b, 10).grad_fn).__name__.startswith("_RationalKernel")
    assert rel_err(rational_kernel(a, b, 10), rational_kernel(a, b, 10, method="torch")) < 1e-12
    assert torch.autograd.gradgradcheck(lambda a, b: rational_kernel(a, b, 10, method="torch"), (a, b))
    ga = torch.autograd.grad(rational_kernel(a, b, 10, method="fused").pow(2).sum(), a, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="once_differentiable"):
        ga.sum().backward()
    import torch.autograd.forward_ad as fwAD
    t = torch.randn(2, 4, generator=g, dtype=f64)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(rational_kernel(fwAD.make_dual(a.detach(), t), b.detach(), 10)).tangent
    eps = 1e-6  # central difference of the kernel along t: error O(eps²)
    fd = (rational_kernel(a.detach() + eps * t, b.detach(), 10) - rational_kernel(a.detach() - eps * t, b.detach(), 10)) / (2 * eps)
    assert tangent is not None and rel_err(tangent, fd) < 1e-7
    with raises_naming(ValueError, "method"):
        rational_kernel(a, b, 10, method="fft")

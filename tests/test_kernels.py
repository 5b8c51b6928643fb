"""Fast kernels against the naive reference, FFT convolution against the definition,
and state-space <-> transfer-function conversions, in float64."""
import numpy as np
import pytest
import torch

from ssmkit.kernels import fold, naive_kernel, rational_kernel, vandermonde_kernel, vandermonde_kernel_ref
from ssmkit.lti import companion, poly_from_roots, ss_to_tf, tf_to_ss
from ssmkit.ops import causal_conv_ref, fftconv

f64, c128 = torch.float64, torch.complex128


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("M,L", [(1, 1), (3, 17), (8, 100), (5, 1000)])
def test_vandermonde_equals_naive(M, L):
    g = torch.Generator().manual_seed(M * L)
    lam = torch.complex(-torch.rand(2, M, generator=g, dtype=f64) * 0.5 - 0.01, torch.randn(2, M, generator=g, dtype=f64) * 3)
    dt = torch.rand(2, 1, generator=g, dtype=f64) * 0.2 + 0.01
    CB = torch.randn(2, M, generator=g, dtype=c128)
    K = vandermonde_kernel(dt * lam, CB, L, chunk=7)  # a chunk that does not divide L
    dA = torch.exp(dt * lam)
    # the real system of both conjugate modes, by powers
    Ad = torch.diag_embed(torch.cat([dA, dA.conj()], -1))
    Bd = torch.cat([CB, CB.conj()], -1)
    Kn = naive_kernel(Ad, Bd, torch.ones_like(Bd), L)
    assert rel(K, Kn.real) < 1e-10
    assert rel(vandermonde_kernel_ref(dA, CB, L), Kn.real) < 1e-10


@pytest.mark.parametrize("N,L", [(1, 1), (3, 5), (4, 16), (7, 33), (6, 3)])
def test_rational_kernel_equals_companion_impulse_response(N, L):
    g = torch.Generator().manual_seed(10 * N + L)
    a = torch.randn(2, N, generator=g, dtype=f64)
    a = 0.9 * a / a.abs().sum(-1, keepdim=True)  # stable
    b = torch.randn(2, N, generator=g, dtype=f64)
    K = rational_kernel(a, b, L)
    Ad, Bd, C = tf_to_ss(a, b, L)
    Kn = naive_kernel(Ad, Bd, C, L)
    assert rel(K, Kn) < 1e-10
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
    assert rel(rational_kernel(a, b, L), naive_kernel(Ad, Bd, C, L)) < 1e-10


@pytest.mark.parametrize("N,L", [(3, 8), (5, 13), (4, 1)])
def test_ss_to_tf_round_trip(N, L):
    g = torch.Generator().manual_seed(N + L)
    Ad = torch.randn(2, N, N, generator=g, dtype=f64) / N
    Bd = torch.randn(2, N, generator=g, dtype=f64)
    C = torch.randn(2, N, generator=g, dtype=f64)
    a, b = ss_to_tf(Ad, Bd, C, L)
    K = naive_kernel(Ad, Bd, C, L)
    assert rel(rational_kernel(a, b, L), K) < 1e-10
    # characteristic polynomial against numpy
    np.testing.assert_allclose(a[0].numpy(), np.poly(Ad[0].numpy())[1:], rtol=1e-9, atol=1e-12)
    A2, B2, C2 = tf_to_ss(a, b, L)
    assert rel(naive_kernel(A2, B2, C2, L), K) < 1e-10


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
    with pytest.raises(ValueError, match="L"):
        rational_kernel(torch.zeros(2, 3), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="N"):
        rational_kernel(torch.zeros(2, 3), torch.zeros(2, 4), 8)
    with pytest.raises(ValueError, match="K"):
        fftconv(torch.zeros(1, 5, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="u"):
        fftconv(torch.zeros(5, 3), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="Ad"):
        naive_kernel(torch.zeros(3, 4), torch.zeros(4), torch.zeros(4), 5)
    with pytest.raises(ValueError, match="NaN"):
        vandermonde_kernel(torch.full((2,), float("nan"), dtype=c128), torch.ones(2, dtype=c128), 4)

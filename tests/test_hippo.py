"""HiPPO matrices, discretizations, the O(N) LegS step, online memory and reconstruction."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import cont2discrete
from scipy.special import eval_laguerre, eval_legendre

from ssmkit.hippo import (
    HiPPO,
    basis,
    discretize,
    legs_matvec,
    legs_scan,
    legs_solve,
    legs_solve_ref,
    legs_step,
    legs_step_dense,
    transition,
)

f64 = torch.float64


# ---------------------------------------------------------------- matrices, entry by entry
def test_legt_entries():
    N, theta = 7, 2.5
    A, B = transition("legt", N, theta=theta)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1) / theta, rel=1e-14)
        for k in range(N):
            s = 1.0 if k < n else (-1.0) ** (n - k)
            want = -math.sqrt((2 * n + 1) * (2 * k + 1)) * s / theta
            assert A[n, k] == pytest.approx(want, rel=1e-14, abs=1e-14)


def test_lmu_is_legt_in_another_basis():
    N, theta = 6, 1.7
    A, B = transition("lmu", N, theta=theta)
    for n in range(N):
        assert B[n] == pytest.approx((2 * n + 1) / theta)
        for k in range(N):
            s = 1.0 if k < n else (-1.0) ** (n - k)
            assert A[n, k] == pytest.approx(-(2 * n + 1) * s / theta)
    At, Bt = transition("legt", N, theta=theta)
    T = torch.diag(torch.sqrt(2 * torch.arange(N, dtype=f64) + 1))
    torch.testing.assert_close(A, T @ At @ torch.linalg.inv(T), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B, T @ Bt, rtol=1e-12, atol=1e-12)


def test_legs_entries_eigenvalues_and_skew_structure():
    N = 9
    A, B = transition("legs", N)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1))
        for k in range(N):
            want = -math.sqrt((2 * n + 1) * (2 * k + 1)) if k < n else (-(n + 1) if k == n else 0.0)
            assert A[n, k] == pytest.approx(want, abs=1e-14)
    eig = torch.linalg.eigvals(A)
    torch.testing.assert_close(eig.real.sort().values, -torch.arange(N, 0, -1, dtype=f64), rtol=0, atol=1e-9)
    assert eig.imag.abs().max() < 1e-9
    v = torch.sqrt(2 * torch.arange(N, dtype=f64) + 1)
    S = A + 0.5 * torch.outer(v, v) + 0.5 * torch.eye(N, dtype=f64)
    torch.testing.assert_close(S, -S.T, rtol=0, atol=1e-12)


def test_lagt_entries():
    N = 5
    A, B = transition("lagt", N)
    for n in range(N):
        for k in range(N):
            assert A[n, k] == (-0.5 if k == n else (-1.0 if k < n else 0.0))
    assert torch.equal(B, torch.ones(N, dtype=f64))


def test_fout_entries():
    N, theta = 6, 2.0
    A, B = transition("fout", N, theta=theta)
    e = torch.tensor([1, 2**0.5, 0, 2**0.5, 0, 2**0.5], dtype=f64)
    D = torch.zeros(N, N, dtype=f64)  # D_nm = <g_n', g_m>, pairs (cos_k, sin_k) at (2k-1, 2k)
    for k in (1, 2):
        D[2 * k - 1, 2 * k] = -2 * math.pi * k
        D[2 * k, 2 * k - 1] = 2 * math.pi * k
    torch.testing.assert_close(A, -(D + 2 * torch.outer(e, e)) / theta, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(B, 2 * e / theta, rtol=1e-14, atol=1e-14)


def test_basis_matches_scipy_polynomials():
    s = torch.linspace(0, 1, 11, dtype=f64)
    N = 6
    G = basis("legs", N, s)
    for n in range(N):
        np.testing.assert_allclose(G[:, n].numpy(), math.sqrt(2 * n + 1) * eval_legendre(n, 2 * s.numpy() - 1), rtol=1e-12, atol=1e-12)
    G = basis("lagt", N, s, theta=3.0)
    tau = (1 - s.numpy()) * 3.0
    for n in range(N):
        np.testing.assert_allclose(G[:, n].numpy(), eval_laguerre(n, tau) * np.exp(-tau / 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("measure", ["legs", "legt", "fout"])
def test_basis_is_orthonormal(measure):
    P = 20000
    s = (torch.arange(P, dtype=f64) + 0.5) / P
    G = basis(measure, 8, s)
    torch.testing.assert_close(G.T @ G / P, torch.eye(8, dtype=f64), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- discretization
@pytest.mark.parametrize("measure", ["legt", "legs", "lagt", "fout"])
@pytest.mark.parametrize("method,scipy_method", [("bilinear", "bilinear"), ("zoh", "zoh")])
def test_discretize_matches_scipy(measure, method, scipy_method):
    N, dt = 6, 0.05
    A, B = transition(measure, N)
    Ad, Bd = discretize(A, B, dt, method)
    ad, bd, *_ = cont2discrete((A.numpy(), B.numpy()[:, None], np.eye(N), np.zeros((N, 1))), dt, method=scipy_method)
    np.testing.assert_allclose(Ad.numpy(), ad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Bd.numpy(), bd[:, 0], rtol=1e-10, atol=1e-12)


def test_euler_forms():
    N, dt = 5, 0.1
    A, B = transition("legt", N)
    I = torch.eye(N, dtype=f64)
    Ad, Bd = discretize(A, B, dt, "forward_euler")
    torch.testing.assert_close(Ad, I + dt * A)
    torch.testing.assert_close(Bd, dt * B)
    Ad, Bd = discretize(A, B, dt, "backward_euler")
    torch.testing.assert_close(Ad @ (I - dt * A), I, rtol=0, atol=1e-12)
    torch.testing.assert_close((I - dt * A) @ Bd, dt * B, rtol=0, atol=1e-12)


def test_discretize_broadcasts_over_steps():
    N = 4
    A, B = transition("legs", N)
    dt = torch.tensor([0.01, 0.1, 0.5], dtype=f64)
    Ad, Bd = discretize(A, B, dt, "zoh")
    assert Ad.shape == (3, N, N) and Bd.shape == (3, N)
    for i in range(3):
        a1, b1 = discretize(A, B, float(dt[i]), "zoh")
        torch.testing.assert_close(Ad[i], a1)
        torch.testing.assert_close(Bd[i], b1)


# ---------------------------------------------------------------- the O(N) LegS arithmetic
@pytest.mark.parametrize("N", [1, 2, 7, 64])
@pytest.mark.parametrize("lam", [1e-4, 0.1, 0.5, 3.0])
def test_legs_fast_ops_equal_dense(N, lam):
    A, B = transition("legs", N)
    I = torch.eye(N, dtype=f64)
    v = torch.randn(3, N, dtype=f64, generator=torch.Generator().manual_seed(N))
    torch.testing.assert_close(legs_matvec(v), v @ A.T, rtol=1e-12, atol=1e-10)
    dense = torch.linalg.solve(I - lam * A, v.T).T
    torch.testing.assert_close(legs_solve_ref(lam, v), dense, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(legs_solve(lam, v), dense, rtol=1e-10, atol=1e-10)
    u = torch.randn(3, dtype=f64)
    torch.testing.assert_close(legs_step(v, u, lam, lam / 2), legs_step_dense(v, u, lam, lam / 2, A, B), rtol=1e-10, atol=1e-10)


def test_legs_scan_equals_dense_steps():
    N, L = 16, 50
    A, B = transition("legs", N)
    u = torch.randn(2, L, dtype=f64)
    k = torch.arange(1, L + 1, dtype=f64)
    lam_l, lam_r = 1 / (2 * k), 1 / (2 * (k + 1))
    out = legs_scan(u, lam_l, lam_r, torch.zeros(2, N, dtype=f64))
    c = torch.zeros(2, N, dtype=f64)
    for j in range(L):
        c = legs_step_dense(c, u[:, j], float(lam_l[j]), float(lam_r[j]), A, B)
        torch.testing.assert_close(out[:, j], c, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- memory
def _smooth_signal(L, seed=0):
    # band-limited: a few sinusoids of at most 8 cycles over the record
    g = torch.Generator().manual_seed(seed)
    t = (torch.arange(L, dtype=f64) + 0.5) / L
    freqs = torch.randint(1, 9, (4,), generator=g).to(f64)
    phase = 2 * math.pi * torch.rand(4, generator=g, dtype=f64)
    amp = torch.rand(4, generator=g, dtype=f64) + 0.5
    return (amp[:, None] * torch.sin(2 * math.pi * freqs[:, None] * t + phase[:, None])).sum(0)


def test_legs_reconstruction_error_small_and_falls_with_N():
    L = 10_000
    u = _smooth_signal(L)
    errs = []
    for N in (8, 16, 32, 64):
        mem = HiPPO("legs", N)
        c = mem.encode(u)[-1]
        errs.append(float((mem.reconstruct(c, L) - u).pow(2).mean() / u.var()))
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-4, errs  # docs/hippo.md states the measured figure


def test_legs_constant_input_is_exact():
    mem = HiPPO("legs", 8)
    c = mem.encode(torch.full((100,), 3.0, dtype=f64))
    want = torch.zeros(8, dtype=f64)
    want[0] = 3.0
    torch.testing.assert_close(c, want.expand(100, 8), rtol=0, atol=1e-12)


def test_legs_encode_matches_dense_reference_and_step():
    N, L = 12, 40
    A, B = transition("legs", N)
    u = torch.randn(L, dtype=f64)
    mem = HiPPO("legs", N)
    C = mem.encode(u)
    c = torch.zeros(N, dtype=f64)
    cs = mem.initial_state()
    for k in range(L):
        if k == 0:
            c = u[0] * torch.eye(N, dtype=f64)[0]
        else:
            c = legs_step_dense(c, u[k], 1 / (2 * k), 1 / (2 * (k + 1)), A, B)
        cs = mem.step(cs, u[k], k)
        torch.testing.assert_close(C[k], c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cs, c, rtol=1e-10, atol=1e-12)


def test_legs_timescale_equivariance_irregular_times():
    L = 300
    g = torch.Generator().manual_seed(1)
    times = torch.cumsum(torch.rand(L, generator=g, dtype=f64) + 0.1, 0)
    f = lambda t: torch.sin(t / 7) + 0.3 * torch.cos(t / 2)
    mem = HiPPO("legs", 16)
    c1 = mem.encode(f(times), times=times)
    alpha = 3.7
    c2 = mem.encode(f((alpha * times) / alpha), times=alpha * times)  # u(t/α) sampled at αt
    torch.testing.assert_close(c1, c2, rtol=1e-10, atol=1e-12)
    # uniform times reproduce the step-free recurrence
    u = f(torch.arange(L, dtype=f64))
    torch.testing.assert_close(mem.encode(u, times=0.25 * torch.arange(L, dtype=f64)), mem.encode(u), rtol=1e-10, atol=1e-12)


def test_irregular_legs_tracks_the_signal():
    L = 4000
    g = torch.Generator().manual_seed(2)
    times = torch.sort(torch.rand(L, generator=g, dtype=f64)).values + 1e-3
    u = torch.sin(6 * times) + times
    mem = HiPPO("legs", 32)
    c = mem.encode(u, times=times)[-1]
    t0 = times[0] - (times[1] - times[0])
    s = (times - t0) / (times[-1] - t0)
    rec = mem.reconstruct(c, s=s)
    assert float((rec - u).pow(2).mean() / u.var()) < 1e-3


@pytest.mark.parametrize("measure", ["legt", "lmu"])
def test_legt_window_reconstruction(measure):
    L, W = 8000, 2000  # window of 2000 samples
    u = _smooth_signal(L, seed=3)
    mem = HiPPO(measure, 64, dt=1.0 / W, theta=1.0)
    c = mem.encode(u)[-1]
    rec = mem.reconstruct(c, W)
    tail = u[-W:]
    assert float((rec - tail).pow(2).mean() / tail.var()) < 1e-2


def test_lagt_coefficients_are_the_laguerre_projection():
    L, N = 5000, 16
    dt = 1e-3
    u = _smooth_signal(L, seed=4)
    mem = HiPPO("lagt", N, dt=dt, method="bilinear")
    c = mem.encode(u)[-1]
    tau = (L - 1 - torch.arange(L, dtype=f64) + 0.5) * dt  # time before the present
    G = basis("lagt", N, 1 - tau, theta=1.0)
    proj = (u[:, None] * G).sum(0) * dt
    torch.testing.assert_close(c, proj, rtol=0, atol=1e-5)


def test_lti_step_matches_encode():
    mem = HiPPO("legt", 8, dt=0.01)
    u = torch.randn(2, 30, dtype=f64)
    C = mem.encode(u)
    c = mem.initial_state(2)
    for k in range(30):
        c = mem.step(c, u[:, k])
    torch.testing.assert_close(c, C[:, -1], rtol=1e-12, atol=1e-12)


def test_lti_irregular_uniform_times_match_uniform():
    mem = HiPPO("legt", 8, dt=0.01, method="zoh")
    u = torch.randn(50, dtype=f64)
    torch.testing.assert_close(mem.encode(u, times=0.01 * torch.arange(50, dtype=f64)), mem.encode(u), rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- bad input
def test_bad_input_errors():
    with pytest.raises(ValueError, match="measure"):
        transition("legx", 4)
    with pytest.raises(ValueError, match="N"):
        transition("legs", 0)
    A, B = transition("legs", 4)
    with pytest.raises(ValueError, match="dt"):
        discretize(A, B, 0.0, "zoh")
    with pytest.raises(ValueError, match="dt"):
        discretize(A, B, torch.tensor([0.1, -0.1], dtype=f64), "zoh")
    with pytest.raises(ValueError, match="method"):
        discretize(A, B, 0.1, "rk4")
    with pytest.raises(ValueError, match="A"):
        discretize(A[:3], B, 0.1, "zoh")
    mem = HiPPO("legs", 4)
    with pytest.raises(ValueError, match="u"):
        mem.encode(torch.tensor([1.0, float("nan")], dtype=f64))
    with pytest.raises(ValueError, match="u"):
        mem.encode(torch.zeros(2, 3, 4, dtype=f64))
    with pytest.raises(TypeError, match="u"):
        mem.encode(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="times"):
        mem.encode(torch.zeros(3, dtype=f64), times=torch.tensor([0.0, 2.0, 1.0], dtype=f64))
    with pytest.raises(ValueError, match="times"):
        mem.encode(torch.zeros(3, dtype=f64), times=torch.tensor([0.0, 1.0], dtype=f64))
    with pytest.raises(ValueError, match="k"):
        mem.step(mem.initial_state(), 1.0)
    with pytest.raises(ValueError, match="N"):
        HiPPO("legs", -3)


@pytest.mark.parametrize("measure", ["legs", "fout"])
def test_encode_in_blocks_equals_whole(measure):
    mem = HiPPO(measure, 10, dt=0.01)
    u = torch.randn(2, 70, dtype=f64)
    whole = mem.encode(u)
    a = mem.encode(u[:, :33])
    b = mem.encode(u[:, 33:], c0=a[:, -1], k0=33)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-12, atol=1e-12)

"""HiPPO matrices, discretizations, the O(N) LegS step, online memory and reconstruction."""
import math
import re

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


def test_lmu_entries_and_similarity_to_legt():
    # docs/math.md §1.3, the LMU form: θ m' = A m + B u with
    # a_ij = -(2i+1) (1 if j < i else (-1)^(i-j)),  b_i = 2i+1
    N, theta = 6, 1.7
    A, B = transition("lmu", N, theta=theta)
    for i in range(N):
        assert B[i] == pytest.approx((2 * i + 1) / theta, rel=1e-14)
        for j in range(N):
            a = -(2 * i + 1) * (1.0 if j < i else (-1.0) ** (i - j))
            assert A[i, j] == pytest.approx(a / theta, rel=1e-14)
    # the same system as LegT: m = T x with T = diag(√(2n+1))
    At, Bt = transition("legt", N, theta=theta)
    n = torch.arange(N, dtype=f64)
    T = torch.diag(torch.sqrt(2 * n + 1))
    torch.testing.assert_close(A, T @ At @ torch.linalg.inv(T), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B, T @ Bt, rtol=1e-12, atol=1e-12)


def test_lmu_and_legt_memories_agree():
    # Same signal, same window: the states are related by T and the reconstructions coincide.
    N, W = 32, 500
    u = _smooth_signal(1500, seed=5)
    legt, lmu = HiPPO("legt", N, dt=1.0 / W), HiPPO("lmu", N, dt=1.0 / W)
    ct, cm = legt.encode(u)[-1], lmu.encode(u)[-1]
    n = torch.arange(N, dtype=f64)
    torch.testing.assert_close(cm, torch.sqrt(2 * n + 1) * ct, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lmu.reconstruct(cm, W), legt.reconstruct(ct, W), rtol=0, atol=1e-9)


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
    # HiPPO paper App. D.3 (θ = 1), basis 1, √2cos(2π·1s), √2sin(2π·1s), √2cos(2π·2s), ...:
    # A_nk = -2 (n = k = 0); -2√2 (n = 0, k odd or k = 0, n odd); -4 (n, k odd);
    #        +2πj (n = 2j-1, k = 2j); -2πj (n = 2j, k = 2j-1); 0 otherwise.
    # B_n = 2 (n = 0), 2√2 (n odd), 0 (n even > 0). Everything scales by 1/θ.
    N, theta = 7, 2.0
    A, B = transition("fout", N, theta=theta)
    r2 = math.sqrt(2)
    for n in range(N):
        assert B[n] == pytest.approx((2.0 if n == 0 else (2 * r2 if n % 2 else 0.0)) / theta, abs=1e-15)
        for k in range(N):
            a = 0.0
            if n == 0 and k == 0:
                a = -2.0
            elif (n == 0 and k % 2) or (k == 0 and n % 2):
                a = -2 * r2
            elif n % 2 and k % 2:
                a = -4.0
            elif n % 2 and k == n + 1:
                a = 2 * math.pi * ((n + 1) // 2)
            elif k % 2 and n == k + 1:
                a = -2 * math.pi * ((k + 1) // 2)
            assert A[n, k] == pytest.approx(a / theta, abs=1e-13), (n, k)


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


def test_basis_lmu_and_fout_formulas():
    s = torch.linspace(0, 1, 13, dtype=f64)
    x = s.numpy()
    G = basis("lmu", 6, s)
    for n in range(6):  # unnormalised shifted Legendre polynomials on the window
        np.testing.assert_allclose(G[:, n].numpy(), eval_legendre(n, 2 * x - 1), rtol=1e-12, atol=1e-12)
    G = basis("fout", 7, s).numpy()
    want = [np.ones_like(x)]
    for j in (1, 2, 3):
        want += [math.sqrt(2) * np.cos(2 * math.pi * j * x), math.sqrt(2) * np.sin(2 * math.pi * j * x)]
    np.testing.assert_allclose(G, np.stack(want, 1), rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("method", ["forward_euler", "backward_euler", "bilinear", "zoh"])
def test_discretize_broadcasts_over_steps(method):
    N, H = 4, 3
    A, B = transition("legt", N)
    dt = torch.tensor([0.01, 0.1, 0.5], dtype=f64)  # one step per channel
    Ad, Bd = discretize(A, B, dt, method)
    assert Ad.shape == (H, N, N) and Bd.shape == (H, N)
    for i in range(H):
        a1, b1 = discretize(A, B, float(dt[i]), method)
        torch.testing.assert_close(Ad[i], a1, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(Bd[i], b1, rtol=1e-13, atol=1e-14)
    Ad2, Bd2 = discretize(A, B, dt.reshape(1, H).expand(2, H), method)  # any leading shape
    assert Ad2.shape == (2, H, N, N) and Bd2.shape == (2, H, N)
    torch.testing.assert_close(Ad2[1], Ad, rtol=0, atol=0)


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
    # Measured: 0.75, 0.39, 3.6e-06, 6.9e-11 (docs/hippo.md). At N = 64 the projection error of
    # an 8-cycle signal is negligible and what is left is the O(1/L²) error of the trapezoidal
    # step (N = 128 gives the same 7e-11); 1e-9 leaves a margin for rounding differences.
    assert errs[-1] < 1e-9, errs


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
    times = 5.0 + torch.cumsum(torch.rand(L, generator=g, dtype=f64) + 0.1, 0)  # irregular, t_0 > 0
    u = lambda t: torch.sin(t / 7) + 0.3 * torch.cos(t / 2) + 0.01 * t
    mem = HiPPO("legs", 16)
    c1 = mem.encode(u(times), times=times)
    assert not torch.allclose(c1[-1], mem.encode(u(times))[-1], atol=1e-3)  # times matter ...
    for alpha in (3.7, 0.02):
        w = lambda t: u(alpha * t)  # ... but not their unit: w(t) = u(αt) on the stamps t_k/α
        c2 = mem.encode(w(times / alpha), times=times / alpha)
        torch.testing.assert_close(c2, c1, rtol=1e-10, atol=1e-12)
    # uniform time stamps, whatever their spacing, reproduce the step-free A/k recurrence
    v = u(torch.arange(L, dtype=f64))
    for dt in (0.25, 30.0):
        torch.testing.assert_close(mem.encode(v, times=dt * torch.arange(L, dtype=f64)), mem.encode(v), rtol=1e-10, atol=1e-12)


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


def test_fout_window_reconstruction_and_its_endpoint_rule():
    # A signal periodic over the window: FouT reconstructs the last θ from its N coefficients.
    W, L, N = 2000, 6000, 64
    t = torch.arange(L, dtype=f64) / W
    u = torch.sin(2 * math.pi * 3 * t) + 0.5 * torch.cos(2 * math.pi * 5 * t + 0.3)
    mem = HiPPO("fout", N, dt=1.0 / W, theta=1.0)
    tail = u[-W:]
    err = float((mem.reconstruct(mem.encode(u)[-1], W) - tail).pow(2).mean() / tail.var())
    # The other endpoint rule, u(t-θ) ≈ eᵀc: A = -(D + eeᵀ), B = e, built here from scratch.
    e = basis("fout", N, torch.zeros(1, dtype=f64))[0]
    D = torch.zeros(N, N, dtype=f64)  # D_nm = <g_n', g_m>
    for j in range(1, (N + 1) // 2):  # (cos_j, sin_j) at (2j-1, 2j); N = 64 ends on an unpaired cos
        D[2 * j - 1, 2 * j], D[2 * j, 2 * j - 1] = -2 * math.pi * j, 2 * math.pi * j
    Ad, Bd = discretize(-(D + torch.outer(e, e)), e, 1.0 / W, "bilinear")
    c = torch.zeros(N, dtype=f64)
    for k in range(L):
        c = Ad @ c + Bd * u[k]
    err_alt = float((mem.reconstruct(c, W) - tail).pow(2).mean() / tail.var())
    assert err < 1e-3, err  # measured 1.3e-4
    assert err_alt > 5 * err, (err, err_alt)  # measured 12x worse (docs/hippo.md)


def test_lagt_reconstruction_falls_with_N():
    # LagT forgets exponentially: with unit timescale, order N resolves about the last N/2 time
    # units, so the record is mapped onto that horizon (as `ssmkit hippo` does).
    L = 4000
    u = _smooth_signal(L, seed=6)
    errs = []
    for N in (16, 32, 64):
        mem = HiPPO("lagt", N, dt=(N / 2) / L, theta=N / 2)
        rec = mem.reconstruct(mem.encode(u)[-1], L)
        errs.append(float((rec - u)[L // 2:].pow(2).mean() / u.var()))  # the recent half
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 2e-2, errs


@pytest.mark.parametrize("measure", ["legt", "lmu", "legs", "lagt", "fout"])
def test_step_equals_encode(measure):
    mem = HiPPO(measure, 8, dt=0.01, theta=0.2)
    L = 30
    u = torch.randn(2, L, dtype=f64, generator=torch.Generator().manual_seed(7))
    C = mem.encode(u)
    c = mem.initial_state(2)
    for k in range(L):
        c = mem.step(c, u[:, k], k)
        torch.testing.assert_close(c, C[:, k], rtol=1e-11, atol=1e-12)
    # irregular steps: t, t_prev measured from the start of the history, which encode puts
    # one (first) step before the first sample
    times = torch.cumsum(torch.rand(L, dtype=f64, generator=torch.Generator().manual_seed(8)) * 0.02 + 1e-3, 0)
    C = mem.encode(u, times=times)
    t = times - times[0] + (times[1] - times[0])
    c = mem.initial_state(2)
    for k in range(L):
        if k == 0 and measure == "legs":
            c = mem.step(c, u[:, 0], 0)
        else:
            t_prev = float(t[k - 1]) if k else 0.0
            c = mem.step(c, u[:, k], t=float(t[k]), t_prev=t_prev)
        torch.testing.assert_close(c, C[:, k], rtol=1e-11, atol=1e-12)


def test_lti_irregular_uniform_times_match_uniform():
    mem = HiPPO("legt", 8, dt=0.01, method="zoh")
    u = torch.randn(50, dtype=f64)
    torch.testing.assert_close(mem.encode(u, times=0.01 * torch.arange(50, dtype=f64)), mem.encode(u), rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- bad input
_A, _B = transition("legs", 4)
_MEM = HiPPO("legs", 4)
_Z3 = torch.zeros(3, dtype=f64)
_BAD = [  # (call, exception, the argument the message must name)
    (lambda: transition("legx", 4), ValueError, "measure"),
    (lambda: transition("legs", 0), ValueError, "N"),
    (lambda: transition("legs", 2.5), TypeError, "N"),
    (lambda: transition("legt", 4, theta=0.0), ValueError, "theta"),
    (lambda: HiPPO("legq", 4), ValueError, "measure"),
    (lambda: HiPPO("legs", -3), ValueError, "N"),
    (lambda: HiPPO("legt", 4, dt=0.0), ValueError, "dt"),
    (lambda: HiPPO("legt", 4, dt=-1e-3), ValueError, "dt"),
    (lambda: HiPPO("legt", 4, method="rk4"), ValueError, "method"),
    (lambda: discretize(_A, _B, 0.0, "zoh"), ValueError, "dt"),
    (lambda: discretize(_A, _B, -0.1, "bilinear"), ValueError, "dt"),
    (lambda: discretize(_A, _B, torch.tensor([0.1, -0.1], dtype=f64), "zoh"), ValueError, "dt"),
    (lambda: discretize(_A, _B, float("nan"), "zoh"), ValueError, "dt"),
    (lambda: discretize(_A, _B, 0.1, "rk4"), ValueError, "method"),
    (lambda: discretize(_A[:3], _B, 0.1, "zoh"), ValueError, "A"),
    (lambda: discretize(_A, _B[:, None], 0.1, "zoh"), ValueError, "B"),
    (lambda: discretize(_A.numpy(), _B, 0.1, "zoh"), TypeError, "A"),
    (lambda: _MEM.encode(torch.tensor([1.0, float("nan")], dtype=f64)), ValueError, "u"),
    (lambda: _MEM.encode(torch.zeros(2, 3, 4, dtype=f64)), ValueError, "u"),
    (lambda: _MEM.encode(torch.zeros((), dtype=f64)), ValueError, "u"),
    (lambda: _MEM.encode(torch.zeros(5, dtype=torch.int64)), TypeError, "u"),
    (lambda: _MEM.encode([1.0, 2.0]), TypeError, "u"),
    (lambda: _MEM.encode(_Z3, times=torch.tensor([0.0, 2.0, 1.0], dtype=f64)), ValueError, "times"),
    (lambda: _MEM.encode(_Z3, times=torch.tensor([0.0, 1.0, 1.0], dtype=f64)), ValueError, "times"),
    (lambda: _MEM.encode(_Z3, times=torch.tensor([0.0, 1.0], dtype=f64)), ValueError, "times"),
    (lambda: _MEM.encode(_Z3, times=torch.tensor([[0.0, 1.0, 2.0]], dtype=f64)), ValueError, "times"),
    (lambda: _MEM.encode(_Z3, times=torch.tensor([0.0, float("nan"), 2.0], dtype=f64)), ValueError, "times"),
    (lambda: _MEM.step(_MEM.initial_state(), 1.0), ValueError, "k"),
    (lambda: _MEM.step(_MEM.initial_state(), float("nan"), 3), ValueError, "u_t"),
    (lambda: _MEM.step(torch.zeros(5, dtype=f64), 1.0, 3), ValueError, "c"),
    (lambda: _MEM.step(_MEM.initial_state(), 1.0, t=1.0, t_prev=2.0), ValueError, "t - t_prev"),
    (lambda: _MEM.reconstruct(_MEM.initial_state(), 0), ValueError, "num_points"),
    (lambda: _MEM.reconstruct(torch.zeros(5, dtype=f64), 10), ValueError, "c"),
    (lambda: basis("legs", 4, torch.arange(3)), TypeError, "s"),
    (lambda: basis("lagx", 4, _Z3), ValueError, "measure"),
]


@pytest.mark.parametrize("call,exc,arg", _BAD, ids=[f"{i}-{a}" for i, (_, _, a) in enumerate(_BAD)])
def test_bad_input_raises_naming_the_argument(call, exc, arg):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    # the argument's name as a word (so "N" is not satisfied by "NaN" or "unknown")
    assert re.search(rf"(^|[^\w]){re.escape(arg)}([^\w]|$)", msg), msg


@pytest.mark.parametrize("measure", ["legs", "fout"])
def test_encode_in_blocks_equals_whole(measure):
    mem = HiPPO(measure, 10, dt=0.01)
    u = torch.randn(2, 70, dtype=f64)
    whole = mem.encode(u)
    a = mem.encode(u[:, :33])
    b = mem.encode(u[:, 33:], c0=a[:, -1], k0=33)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the documented example
@pytest.mark.parametrize("doc,heading", [("README.md", "## HiPPO in ten lines"), ("docs/hippo.md", "## In ten lines")])
def test_documented_example_runs_and_prints_what_it_claims(doc, heading, capsys):
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[1] / doc).read_text()
    code = text[text.index(heading):].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 10
    claim = re.search(r"print\(.*#[^\n]*?(\d(?:\.\d+)?e-\d+)", code)
    assert claim, "the example's comment states the printed value"
    exec(compile(code, doc, "exec"), {})
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    claimed = float(claim.group(1))
    assert claimed / 3 < printed < claimed * 3, (printed, claimed)


# ---------------------------------------------------------------- reliability regressions
def test_step_refuses_a_non_numeric_u_t_and_checks_times_on_an_empty_batch():
    from helpers import raises_naming

    mem = HiPPO("lagt", 2, dt=0.1)
    with raises_naming(TypeError, "u_t"):
        mem.step(torch.zeros(0, 2, dtype=f64), "a string", t=4.9, t_prev=4.4)
    for bad in (True, [1.0, 2.0, 3.0], None):  # a number or a tensor only
        with raises_naming(TypeError, "u_t"):
            mem.step(torch.zeros(3, 2, dtype=f64), bad, 1)
    empty = torch.zeros(0, 6, dtype=f64)
    legt = HiPPO("legt", 6, dt=0.1)
    for t_prev in (float("-inf"), float("nan")):  # t - t_prev = inf: refused even with nothing to advance
        with raises_naming(ValueError, "t_prev"):
            legt.step(empty, torch.zeros(0, dtype=f64), t=4.4, t_prev=t_prev)
    with raises_naming(ValueError, "k"):
        HiPPO("legs", 6).step(empty, 0.0, -1)
    assert legt.step(empty, torch.zeros(0, dtype=f64), t=4.4, t_prev=4.0).shape == (0, 6)


@pytest.mark.parametrize("measure", ["fout", "legs", "lagt"])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_reconstruct_half_precision_is_computed_in_float32(measure, dtype, tol):
    """Half precision costs only the final rounding (~2^-11 / 2^-8 relative), not ~3 digits per
    operation: the float64 reconstruction of the same (rounded) coefficients is the reference."""
    mem = HiPPO(measure, 8, dt=0.01)
    c = torch.randn(3, 8, dtype=f64, generator=torch.Generator().manual_seed(0)).to(dtype)
    for P in (1, 37):
        got = mem.reconstruct(c, P)
        want = mem.reconstruct(c.to(f64), P)
        assert got.dtype == dtype
        assert float((got.to(f64) - want).norm() / want.norm()) < tol

"""NPLR form of HiPPO and the Cauchy/Woodbury kernel against dense references."""
import importlib

import pytest
import torch

from ssmkit.hippo import nplr, transition
from ssmkit.kernels import cauchy, cauchy_conj, dplr_kernel, dplr_kernel_ref, naive_kernel
from ssmkit.ops._native import available as native_available

from helpers import raises_naming

f64, c128 = torch.float64, torch.complex128


@pytest.mark.parametrize("measure,rank", [("legs", 1), ("legt", 2)])
@pytest.mark.parametrize("N", [2, 8, 16, 64])
def test_nplr_reconstructs_A_and_B(measure, rank, N):
    form = nplr(measure, N)
    A, B = transition(measure, N)
    assert form.Lambda.shape == (N // 2,) and form.P.shape == (rank, N // 2) and form.V.shape == (N, N // 2)
    dense = form.dense_A()
    assert float((dense.real - A).abs().max() / A.abs().max()) < 1e-12
    assert float(dense.imag.abs().max()) < 1e-10
    lam, P, Bf, V = form.full()
    torch.testing.assert_close((V @ Bf).real, B, rtol=0, atol=1e-10)
    torch.testing.assert_close(V.conj().T @ V, torch.eye(N, dtype=c128), rtol=0, atol=1e-10)  # unitary
    assert bool((form.Lambda.imag > 0).all())
    if measure == "legs":
        torch.testing.assert_close(form.Lambda.real, torch.full((N // 2,), -0.5, dtype=f64), rtol=0, atol=1e-10)


def test_nplr_odd_N_is_refused():
    with pytest.raises(ValueError, match=r"\bN must be even"):
        nplr("legs", 7)


def test_cauchy_conj_is_the_sum_over_both_halves():
    g = torch.Generator().manual_seed(0)
    H, K, M, J = 2, 3, 5, 7
    v = torch.randn(H, K, M, dtype=c128, generator=g)
    lam = torch.randn(H, M, dtype=c128, generator=g)
    x = torch.randn(J, dtype=c128, generator=g)
    s = torch.randn(H, J, dtype=c128, generator=g)
    want = torch.zeros(H, K, J, dtype=c128)
    for h in range(H):
        for k in range(K):
            for j in range(J):
                for m in range(M):
                    want[h, k, j] += v[h, k, m] / (x[j] - s[h, j] * lam[h, m]) + v[h, k, m].conj() / (x[j] - s[h, j] * lam[h, m].conj())
    torch.testing.assert_close(cauchy_conj(v, x, s, lam), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("M,L", [(1, 1), (3, 7), (4, 16), (5, 33)])
def test_dplr_kernel_equals_dense_bilinear_system(rank, M, L):
    g = torch.Generator().manual_seed(10 * rank + M + L)
    H = 2
    lam = torch.complex(-torch.rand(H, M, generator=g, dtype=f64) - 0.1, 3 * torch.randn(H, M, generator=g, dtype=f64))
    P = 0.5 * torch.randn(rank, H, M, dtype=c128, generator=g)
    B = torch.randn(H, M, dtype=c128, generator=g)
    Ct = torch.randn(H, M, dtype=c128, generator=g)
    dt = torch.rand(H, generator=g, dtype=f64) * 0.5 + 0.05
    K = dplr_kernel(lam, P, B, Ct, dt, L, freq_block=3)
    cat = lambda z: torch.cat([z, z.conj()], -1)
    A = torch.diag_embed(cat(lam)) - torch.einsum("rhn,rhm->hnm", cat(P), cat(P).conj())
    I = torch.eye(2 * M, dtype=c128)
    Mm = I - (dt / 2)[:, None, None] * A
    Ad = torch.linalg.solve(Mm, I + (dt / 2)[:, None, None] * A)
    Bd = torch.linalg.solve(Mm, (dt[:, None] * cat(B)).unsqueeze(-1))[..., 0]
    # the kernel with learned C̃ equals C Ā^k B̄ for C = C̃ (I - Ā^L)^{-1}
    C = torch.linalg.solve((I - torch.linalg.matrix_power(Ad, L)).transpose(-1, -2), cat(Ct).unsqueeze(-1))[..., 0]
    Kn = naive_kernel(Ad, Bd, C, L)
    assert float(Kn.imag.abs().max()) < 1e-10
    assert float((K - Kn.real).abs().max() / Kn.real.abs().max()) < 1e-10


def _dense_bilinear(lam, P, Q, B, Ct, dt, L):
    """Dense (Ā, B̄, C) of the bilinear discretization of A = diag(λ) - P Q*, C = C̃ (I - Ā^L)^{-1}."""
    N = lam.shape[-1]
    A = torch.diag_embed(lam) - torch.einsum("rhn,rhm->hnm", P, Q.conj())
    I = torch.eye(N, dtype=c128)
    Mm = I - (dt / 2)[:, None, None] * A
    Ad = torch.linalg.solve(Mm, I + (dt / 2)[:, None, None] * A)
    Bd = torch.linalg.solve(Mm, (dt[:, None] * B).unsqueeze(-1))[..., 0]
    C = torch.linalg.solve((I - torch.linalg.matrix_power(Ad, L)).transpose(-1, -2), Ct.unsqueeze(-1))[..., 0]
    return Ad, Bd, C


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("N,L", [(1, 4), (3, 7), (5, 16), (7, 30)])
def test_dplr_kernel_general_modes_odd_N(rank, N, L):
    # conj_pairs=False: N modes of a general complex DPLR system (odd N, Q ≠ P), complex kernel
    g = torch.Generator().manual_seed(100 * rank + 10 * N + L)
    H = 2
    lam = torch.complex(-torch.rand(H, N, generator=g, dtype=f64) - 0.1, 3 * torch.randn(H, N, generator=g, dtype=f64))
    P = 0.5 * torch.randn(rank, H, N, dtype=c128, generator=g)
    Q = 0.5 * torch.randn(rank, H, N, dtype=c128, generator=g)
    B = torch.randn(H, N, dtype=c128, generator=g)
    Ct = torch.randn(H, N, dtype=c128, generator=g)
    dt = torch.rand(H, generator=g, dtype=f64) * 0.5 + 0.05
    K = dplr_kernel(lam, P, B, Ct, dt, L, Q=Q, freq_block=3, conj_pairs=False)
    Kn = naive_kernel(*_dense_bilinear(lam, P, Q, B, Ct, dt, L), L)
    assert float((dplr_kernel_ref(lam, P, B, Ct, dt, L, Q=Q, conj_pairs=False) - Kn).abs().max() / Kn.abs().max()) < 1e-12
    assert K.is_complex() and K.shape == (H, L)
    assert float((K - Kn).abs().max() / Kn.abs().max()) < 1e-10


@pytest.mark.parametrize("method", ["vandermonde", "cauchy"])
def test_dplr_kernel_gradcheck(method):
    # gradients through both routes (the Cauchy one in checkpointed frequency blocks), against finite differences
    g = torch.Generator().manual_seed(1)
    H, M, L = 1, 2, 9
    lam = torch.complex(-torch.rand(H, M, generator=g, dtype=f64) - 0.1, torch.randn(H, M, generator=g, dtype=f64))
    P = 0.5 * torch.randn(1, H, M, dtype=c128, generator=g)
    B = torch.randn(H, M, dtype=c128, generator=g)
    Ct = torch.randn(H, M, dtype=c128, generator=g)
    dt = torch.rand(H, generator=g, dtype=f64) * 0.5 + 0.05
    ins = tuple(t.clone().requires_grad_(True) for t in (lam, P, B, Ct, dt))
    assert torch.autograd.gradcheck(lambda *a: dplr_kernel(*a, L, freq_block=2, method=method), ins, eps=1e-6, atol=1e-7)


def test_nplr_dtypes_and_bad_input():
    form = nplr("legt", 6)
    assert form.Lambda.dtype == form.P.dtype == form.B.dtype == form.V.dtype == c128
    with raises_naming(ValueError, "measure"):
        nplr("fout", 4)
    with raises_naming(ValueError, "dt"):
        dplr_kernel(form.Lambda[None], form.P[:, None], form.B[None], form.B[None], -torch.ones(1, dtype=f64), 8)
    with raises_naming(ValueError, "P"):
        dplr_kernel(form.Lambda[None], form.P, form.B[None], form.B[None], torch.ones(1, dtype=f64), 8)


@pytest.mark.parametrize("method", ["vandermonde", "cauchy"])
@pytest.mark.parametrize("conj_pairs", [True, False])
@pytest.mark.parametrize("rank,M,L", [(1, 1, 1), (1, 4, 33), (2, 3, 16), (3, 2, 7)])
def test_dplr_kernel_methods_equal_reference(method, conj_pairs, rank, M, L):
    # both routes to the Cauchy sums against the dense system powered step by step (dplr_kernel_ref),
    # including small steps where the Vandermonde route's 1/(1 - r^L) is largest (Δ|Re λ| L ~ 0.05)
    g = torch.Generator().manual_seed(rank * 100 + M * 10 + L)
    H = 3
    lam = torch.complex(-torch.rand(H, M, generator=g, dtype=f64) - 0.1, 3 * torch.randn(H, M, generator=g, dtype=f64))
    P = 0.5 * torch.randn(rank, H, M, dtype=c128, generator=g)
    Q = P if conj_pairs else 0.5 * torch.randn(rank, H, M, dtype=c128, generator=g)
    B = torch.randn(H, M, dtype=c128, generator=g)
    Ct = torch.randn(H, M, dtype=c128, generator=g)
    dt = torch.tensor([0.05 / L, 0.1, 0.6], dtype=f64)
    K = dplr_kernel(lam, P, B, Ct, dt, L, Q=Q, conj_pairs=conj_pairs, method=method, freq_block=5)
    want = dplr_kernel_ref(lam, P, B, Ct, dt, L, Q=Q, conj_pairs=conj_pairs)
    assert K.is_complex() != conj_pairs
    assert float((K - want).abs().max() / want.abs().max()) < 1e-10



@pytest.mark.parametrize("method", ["vandermonde", "cauchy"])
def test_dplr_kernel_float32_accuracy_at_training_length(method):
    # an S4 layer's own parameters (HiPPO-LegS, N = 64, Δ up to 0.1) at l_max = 1024 in float32,
    # against the float64 kernel of the same float32 parameters: the phases k·Im(log r) reach
    # ~1e3 rad, so the exponentials are taken in double precision (measured ~2e-6)
    from ssmkit.layers import S4

    torch.manual_seed(0)
    layer = S4(4, 64, l_max=1024)
    with torch.no_grad():
        p32 = layer._params()
        p64 = [t.to(c128) if t.is_complex() else t.double() for t in p32]
        ref = dplr_kernel(*p64, 1024, method="cauchy")
        K = dplr_kernel(*p32, 1024, method=method)
    assert K.dtype == torch.float32
    assert float((K.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_a_mode_on_a_pole_is_refused_by_name_not_returned_as_nan():
    # λ = 0 puts a pole at frequency 0 (x_0 = 1 - z_0 = 0): the sum is infinite there
    lam = torch.tensor([[0 + 0j, -0.5 + 1j]], dtype=c128)
    v = torch.ones(1, 1, 2, dtype=c128)
    z = torch.exp(-2j * torch.pi * torch.arange(4, dtype=torch.float64) / 4)
    x, s = 1 - z, ((1 + z) / 2).unsqueeze(0)
    for fn in (cauchy, cauchy_conj):
        with raises_naming(ValueError, "lam"):
            fn(v, x, s, lam)
    ones = torch.ones(1, 2, dtype=c128)
    for method in ("vandermonde", "cauchy"):
        with raises_naming(ValueError, "Lambda"):
            dplr_kernel(lam, torch.zeros(1, 1, 2, dtype=c128), ones, ones, torch.ones(1, dtype=torch.float64), 8,
                        method=method)
    # off the pole the same call is finite and agrees with the dense reference
    lam_ok = torch.tensor([[0.1 + 0j, -0.5 + 1j]], dtype=c128)
    args = (lam_ok, torch.zeros(1, 1, 2, dtype=c128), ones, ones, torch.ones(1, dtype=torch.float64), 8)
    want = dplr_kernel_ref(*args)
    for method in ("vandermonde", "cauchy"):
        torch.testing.assert_close(dplr_kernel(*args, method=method), want, rtol=1e-10, atol=1e-10)


def _rank1_inputs(dtype, L, separate_q, seed):
    g = torch.Generator().manual_seed(seed)
    cd = c128 if dtype == f64 else torch.complex64
    H, M = 3, 4
    lam = torch.complex(-torch.rand(H, M, generator=g, dtype=dtype) - 0.1, 3 * torch.randn(H, M, generator=g, dtype=dtype))
    P = 0.5 * torch.randn(1, H, M, dtype=cd, generator=g)
    B = torch.randn(H, M, dtype=cd, generator=g)
    Ct = torch.randn(H, M, dtype=cd, generator=g)
    dt = torch.rand(H, generator=g, dtype=dtype) * 0.5 + 0.05
    Q = 0.5 * torch.randn(1, H, M, dtype=cd, generator=g) if separate_q else None
    return [lam, P, B, Ct, dt, Q]


def _kernel_and_grads(ins, L, seed):
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in ins]
    lam, P, B, Ct, dt, Q = leaves
    K = dplr_kernel(lam, P, B, Ct, dt, L, Q=Q)
    K.backward(torch.randn(K.shape, generator=torch.Generator().manual_seed(seed), dtype=K.dtype))
    return [K.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.skipif(not native_available(), reason="the fused rank-1 route needs the native kernels")
@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("L,separate_q", [(16, False), (15, True), (1, False)])
def test_rank1_fused_kernel_equals_autograd_route(monkeypatch, dtype, L, separate_q):
    # the rank-1 S4 kernel as one hand-differentiated function (_S4Rank1: native Vandermonde and Woodbury
    # steps) against the route autograd differentiates (other devices), values and every gradient
    cm = importlib.import_module("ssmkit.kernels.cauchy")  # the module (the package exports a function of that name)

    ins = _rank1_inputs(dtype, L, separate_q, seed=L)
    fused = _kernel_and_grads(ins, L, seed=3)
    monkeypatch.setattr(cm, "_fused_route", lambda dt: False)
    monkeypatch.setattr(cm, "_rank1_native", lambda dt: False)
    plain = _kernel_and_grads(ins, L, seed=3)
    tol = 1e-12 if dtype == f64 else 2e-5
    for name, a, b in zip(["K", "Lambda", "P", "B", "Ct", "dt", "Q"], fused, plain):
        # relative to the values' scale, at least 1 (at L = 1 dt's gradient cancels to rounding noise)
        assert float((a - b).abs().max()) < tol * max(1.0, float(b.abs().max())), name


@pytest.mark.parametrize("L", [10, 9, 1])
def test_rank1_woodbury_step_gradcheck_and_native_agreement(L):
    # the hand-written backward of the Woodbury + FFT step (torch route) against finite differences, and the
    # native float32 route against the torch float32 one (same formulas: to float32 rounding of O(1) values)
    cm = importlib.import_module("ssmkit.kernels.cauchy")  # the module (the package exports a function of that name)

    g = torch.Generator().manual_seed(L)
    seq = torch.randn(4, 3, L, generator=g, dtype=f64).requires_grad_(True)
    dt = (torch.rand(3, generator=g, dtype=f64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, d: cm._Rank1Kernel.apply(s, d, L, False), (seq, dt))
    if not native_available():
        return
    gK = torch.randn(3, L, generator=g)
    outs = []
    for native in (True, False):
        s32, d32 = seq.detach().float().requires_grad_(True), dt.detach().float().requires_grad_(True)
        K = cm._Rank1Kernel.apply(s32, d32, L, native)
        K.backward(gK)
        outs.append((K.detach(), s32.grad, d32.grad))
    for a, b in zip(*outs):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5

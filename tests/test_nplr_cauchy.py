"""NPLR form of HiPPO and the Cauchy/Woodbury kernel against dense references."""
import pytest
import torch

from ssmkit.hippo import nplr, transition
from ssmkit.kernels import cauchy_conj, dplr_kernel, naive_kernel

f64, c128 = torch.float64, torch.complex128


@pytest.mark.parametrize("measure,rank", [("legs", 1), ("legt", 2)])
@pytest.mark.parametrize("N", [2, 8, 16, 64])
def test_nplr_reconstructs_A_and_B(measure, rank, N):
    F = nplr(measure, N)
    A, B = transition(measure, N)
    assert F.Lambda.shape == (N // 2,) and F.P.shape == (rank, N // 2) and F.V.shape == (N, N // 2)
    dense = F.dense_A()
    assert float((dense.real - A).abs().max() / A.abs().max()) < 1e-12
    assert float(dense.imag.abs().max()) < 1e-10
    lam, P, Bf, V = F.full()
    torch.testing.assert_close((V @ Bf).real, B, rtol=0, atol=1e-10)
    torch.testing.assert_close(V.conj().T @ V, torch.eye(N, dtype=c128), rtol=0, atol=1e-10)  # unitary
    assert bool((F.Lambda.imag > 0).all())
    if measure == "legs":
        torch.testing.assert_close(F.Lambda.real, torch.full((N // 2,), -0.5, dtype=f64), rtol=0, atol=1e-10)


def test_nplr_odd_N_is_refused():
    with pytest.raises(ValueError, match="even"):
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
    K = dplr_kernel(lam, P, B, Ct, dt, L, chunk=3)
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

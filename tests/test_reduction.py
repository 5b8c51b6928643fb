"""Balanced truncation (ssmkit.reduction / ssmkit.lti): Gramians, Hankel singular values, the H∞
bound, reduced S4D / RTF layers — each against an independent reference."""
import numpy as np
import pytest
import torch

from helpers import assert_close_to_reference, raises_naming
from ssmkit.layers import RTF, S4, S4D
from ssmkit.layers.base import run_steps
from ssmkit.lti import UnstableSystemError, balanced_truncation, gramians, hankel_singular_values, reduce
from ssmkit.reduction import (error_bound, frequency_response, hankel_matrix, hinf_error, modal_form,
                              real_realization, reduce_model)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_stable(rng, N, rho=0.9):
    A = rng.standard_normal((N, N))
    A *= rho / np.abs(np.linalg.eigvals(A)).max()
    return A, rng.standard_normal(N), rng.standard_normal(N)


def powers_kernel(A, B, C, L):
    """K_k = C A^k B by repeated multiplication (the obvious reference)."""
    out, x = [], B.astype(np.complex128)
    for _ in range(L):
        out.append(C @ x)
        x = A @ x
    return np.array(out)


def s4d_layer(H=3, N=8, seed=0, dt=(0.05, 0.3)):
    torch.manual_seed(seed)
    return S4D(H, d_state=N, dt_min=dt[0], dt_max=dt[1]).double()


def test_gramians_solve_their_lyapunov_equations():
    rng = np.random.default_rng(0)
    systems = [random_stable(rng, N, rho) for N, rho in ((3, 0.5), (12, 0.95), (40, 0.99))]
    Ad, Bd, C, _ = s4d_layer().discrete_ssm()  # complex, conjugate halves
    systems.append((Ad[0].detach(), Bd[0].detach(), C[0].detach()))
    torch.manual_seed(1)
    Ad, Bd, C, _ = S4(2, d_state=8, l_max=64).double().discrete_ssm()  # dense complex DPLR
    systems.append((Ad[1].detach(), Bd[1].detach(), C[1].detach()))
    for s in systems:
        A, B, Cr = real_realization(*s)
        P, Q = gramians(*s)
        rP = np.abs(A @ P @ A.T + np.outer(B, B) - P).max() / np.abs(P).max()
        rQ = np.abs(A.T @ Q @ A + np.outer(Cr, Cr) - Q).max() / np.abs(Q).max()
        assert rP < 1e-10 and rQ < 1e-10, (rP, rQ)
        assert np.linalg.eigvalsh(P).min() > -1e-10 * np.abs(P).max()  # positive semidefinite


def test_real_realization_keeps_the_kernel():
    layer = s4d_layer()
    Ad, Bd, C, _ = layer.discrete_ssm()
    K = layer.kernel(50).detach().numpy()
    for h in range(3):
        A, B, Cr = real_realization(Ad[h].detach(), Bd[h].detach(), C[h].detach())
        assert A.dtype == np.float64 and A.shape == (8, 8)
        assert_close_to_reference(torch.from_numpy(powers_kernel(A, B, Cr, 50).real), torch.from_numpy(K[h]), 1e-10)
    # a complex system whose states are not in conjugate halves: realification, twice the size
    lam = np.array([0.9 * np.exp(0.3j), 0.5 + 0j])
    A = np.diag([lam[0], lam[1], lam[0].conjugate()])
    B, C = np.ones(3, complex), np.array([1 + 2j, 0.7, 1 - 2j])
    Ar, Br, Cr = real_realization(A, B, C)
    assert Ar.shape == (6, 6)
    np.testing.assert_allclose(powers_kernel(Ar, Br, Cr, 30).real, powers_kernel(A, B, C, 30).real, atol=1e-12)


def test_hankel_singular_values_are_the_singular_values_of_the_hankel_matrix():
    rng = np.random.default_rng(1)
    for N in (4, 10):
        A, B, C = random_stable(rng, N, 0.9)
        K = powers_kernel(A, B, C, 1200).real  # 0.9^1200: the tail is far below round-off
        ref = np.linalg.svd(hankel_matrix(K, 600), compute_uv=False)[:N]
        hsv = hankel_singular_values(A, B, C)
        np.testing.assert_allclose(hsv, ref, rtol=1e-8, atol=1e-12 * ref[0])
    # a layer channel, with the kernel from the layer's own (Vandermonde) path
    layer = s4d_layer(dt=(0.2, 0.5))
    K = layer.kernel(1500).detach().numpy()
    Ad, Bd, C, _ = layer.discrete_ssm()
    for h in range(3):
        hsv = hankel_singular_values(Ad[h].detach(), Bd[h].detach(), C[h].detach())
        ref = np.linalg.svd(hankel_matrix(K[h], 750), compute_uv=False)[:8]
        np.testing.assert_allclose(hsv, ref, rtol=1e-7, atol=1e-10 * ref[0])


def test_measured_hinf_error_never_exceeds_the_bound():
    rng = np.random.default_rng(2)
    for trial in range(12):
        N = int(rng.integers(3, 14))
        A, B, C = random_stable(rng, N, float(rng.uniform(0.5, 0.98)))
        hsv = hankel_singular_values(A, B, C)
        for r in range(N + 1):
            t = balanced_truncation(A, B, C, r)
            assert t.order == r and t.bound == pytest.approx(2 * hsv[r:].sum(), rel=1e-12, abs=1e-15)
            assert np.abs(np.linalg.eigvals(t.A)).max(initial=0) < 1  # truncations of balanced systems are stable
            err = hinf_error((A, B, C), (t.A, t.B, t.C))
            assert err <= t.bound * (1 + 1e-9) + 1e-10 * hsv[0], (trial, r, err, t.bound)
            if r < N:
                assert err >= hsv[r] * (1 - 1e-6)  # and never below σ_{r+1} (Hankel-norm lower bound)


def test_frequency_response_equals_the_kernel_sum():
    rng = np.random.default_rng(3)
    A, B, C = random_stable(rng, 6, 0.8)
    K = powers_kernel(A, B, C, 400).real
    w = np.linspace(0, np.pi, 17)
    ref = 0.3 + (K[None, :] * np.exp(-1j * w[:, None] * np.arange(400))).sum(1)
    np.testing.assert_allclose(frequency_response(A, B, C, w, 0.3), ref, rtol=1e-10, atol=1e-12)
    # a defective Ā (a Jordan block: no eigenvector basis) takes the linear-solve path
    J = np.array([[0.9, 1.0, 0.0], [0.0, 0.9, 1.0], [0.0, 0.0, 0.9]])
    B, C = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    K = powers_kernel(J, B, C, 2000).real
    ref = (K[None, :] * np.exp(-1j * w[:, None] * np.arange(2000))).sum(1)
    np.testing.assert_allclose(frequency_response(J, B, C, w), ref, rtol=1e-10)


def test_modal_form_gives_the_s4d_kernel():
    rng = np.random.default_rng(4)
    for N in (5, 8):
        A, B, C = random_stable(rng, N, 0.9)
        lam, res = modal_form(A, B, C)
        k = np.arange(60)
        K = 2 * (res[None, :] * lam[None, :] ** k[:, None]).sum(1).real
        np.testing.assert_allclose(K, powers_kernel(A, B, C, 60).real, atol=1e-9 * np.abs(K).max())
        assert (lam.imag >= 0).all() and lam.size == (np.linalg.eigvals(A).imag >= 0).sum()


@pytest.mark.parametrize("to", ["s4d", "rtf"])
@pytest.mark.parametrize("source", ["s4d", "s4", "rtf"])
def test_reduced_layer_is_within_the_bound_and_forward_equals_step(source, to):
    torch.manual_seed(0)
    layer = {"s4d": lambda: S4D(3, d_state=12, dt_min=0.02, dt_max=0.2),
             "s4": lambda: S4(3, d_state=12, l_max=64, dt_min=0.02, dt_max=0.2),
             "rtf": lambda: RTF(3, d_state=10, l_max=64, init="montel")}[source]().double()
    red = reduce(layer, 5, to=to, l_max=64)
    new = red.layer
    assert isinstance(new, S4D if to == "s4d" else RTF) and next(new.parameters()).dtype == torch.float64
    assert (red.orders <= 5).all() and (red.error <= red.bound * (1 + 1e-9) + 1e-12).all()
    if to == "rtf":
        assert new.d_state == 5 and (red.orders == 5).all()
    else:
        assert new.d_state == 6  # ceil(5/2) modes
    # the bound holds for outputs: ||y - y_r|| <= bound ||u|| per channel (zero initial state)
    u = torch.randn(2, 64, 3, dtype=torch.float64)
    y, yr = layer(u).detach(), new(u).detach()
    diff = (y - yr).pow(2).sum(1).sqrt()  # (batch, H)
    assert (diff <= torch.from_numpy(red.bound) * u.pow(2).sum(1).sqrt() + 1e-9).all()
    # the new layer's recurrence equals its convolution
    ys, _ = run_steps(new, u)
    assert_close_to_reference(ys.detach(), yr, 1e-9, "step vs forward")


def test_reduction_to_full_order_reproduces_the_system():
    torch.manual_seed(0)
    L = 200
    s4d = S4D(2, d_state=8, dt_min=0.05, dt_max=0.2).double()
    s4 = S4(2, d_state=6, l_max=L, dt_min=0.05, dt_max=0.2).double()
    rtf = RTF(2, d_state=5, l_max=L, init="montel").double()
    cases = [(s4d, 8, "s4d"), (s4d, 8, "rtf"), (rtf, 5, "rtf"), (rtf, 10, "s4d"), (s4, 6, "rtf"),
             (s4, 12, "s4d")]  # real poles take a whole S4D mode each: order 2N gives N modes
    for layer, order, to in cases:
        red = reduce(layer, order, to=to, l_max=L)
        assert red.bound.max() < 1e-10 * red.hsv.max()
        K, Kr = layer.kernel(L).detach(), red.layer.kernel(L).detach()
        assert_close_to_reference(Kr, K, 1e-8, f"{type(layer).__name__} -> {to}")
        torch.testing.assert_close(red.layer.D, layer.D)


def test_float32_layers_reduce_within_the_bound():
    torch.manual_seed(0)
    layer = S4D(4, d_state=16)  # float32, default Δ range: poles close to the unit circle
    red = reduce(layer, 8)
    assert red.layer.D.dtype == torch.float32
    assert (red.error <= red.bound).all()


def test_tolerance_picks_the_smallest_order():
    rng = np.random.default_rng(5)
    A, B, C = random_stable(rng, 10, 0.9)
    hsv = hankel_singular_values(A, B, C)
    tol = 2 * hsv[4:].sum() * 1.0001
    t = balanced_truncation(A, B, C, tolerance=tol)
    assert t.order == 4 and t.bound <= tol and error_bound(hsv, 3) > tol
    layer = s4d_layer(H=2, N=10)
    red = reduce(layer, tolerance=0.05, to="rtf", l_max=64)
    assert red.bound.max() <= 0.05
    red_less = reduce(layer, int(red.orders.max()) - 1, to="rtf", l_max=64)
    assert red_less.bound.max() > 0.05


def test_reduce_model_replaces_every_lti_layer():
    from ssmkit import Backbone

    torch.manual_seed(0)
    model = Backbone(d_model=4, n_layers=2, layer="s4", layer_kwargs={"d_state": 8, "l_max": 32}).double()
    new, reports = reduce_model(model, 4, to="rtf", l_max=32)
    assert sorted(reports) == ["blocks.0.layer", "blocks.1.layer"]
    assert all(isinstance(b.layer, RTF) for b in new.blocks) and all(isinstance(b.layer, S4) for b in model.blocks)
    x = torch.randn(2, 32, 1, dtype=torch.float64)
    assert new(x).shape == model(x).shape


def test_unstable_systems_and_bad_arguments_are_refused():
    with pytest.raises(UnstableSystemError, match="spectral radius"):
        gramians(np.diag([0.5, 1.2]), np.ones(2), np.ones(2))
    with pytest.raises(UnstableSystemError):
        balanced_truncation(np.array([[1.0]]), np.ones(1), np.ones(1), 1)
    rtf = RTF(2, d_state=2, l_max=16).double()
    with torch.no_grad():
        rtf.a.copy_(torch.tensor([[-1.5, 0.0], [0.1, 0.0]]))  # channel 0: a pole at z = 1.5
    with pytest.raises(UnstableSystemError, match="channel 0"):
        reduce(rtf, 1)
    layer = s4d_layer()
    with raises_naming(ValueError, "order"):
        reduce(layer, 0)
    with raises_naming(ValueError, "to"):
        reduce(layer, 2, to="s5")
    with pytest.raises(ValueError, match="exactly one of order and tolerance"):
        reduce(layer, 2, tolerance=0.1)
    with raises_naming(ValueError, "l_max"):
        reduce(layer, 2, to="rtf")
    with raises_naming(ValueError, "Bd"):
        gramians(np.eye(2) * 0.5, np.ones(3), np.ones(2))
    with pytest.raises(TypeError, match="LTI layer"):
        reduce(torch.nn.Linear(2, 2), 1)

"""Closed-form states of LTI systems (kernels/state.py, vandermonde_reduce) against stepping,
and the layers' return_state / initial_state against their own recurrence at lengths that
span several blocks."""
import pytest
import torch

from helpers import assert_close_to_reference
from ssmkit.kernels import (ssm_final_state, ssm_final_state_ref, ssm_initial_response, ssm_initial_response_ref,
                            vandermonde_reduce, vandermonde_reduce_ref)
from ssmkit.layers import RTF, S4, S4D
from ssmkit.layers.base import run_steps

f64, c128 = torch.float64, torch.complex128


def _stable(H, N, g, complex_=False, radius=0.97):
    """Random dense systems with spectral radius `radius` (non-normal: a similarity by a random matrix)."""
    dtype = c128 if complex_ else f64
    A = torch.randn(H, N, N, generator=g, dtype=f64).to(dtype)
    if complex_:
        A = A + 1j * torch.randn(H, N, N, generator=g, dtype=f64)
    rho = torch.linalg.eigvals(A).abs().amax(-1)
    return radius * A / rho[:, None, None]


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("L", [1, 5, 37, 200])
def test_final_state_equals_stepping(complex_, L):
    g = torch.Generator().manual_seed(L + 7 * complex_)
    H, N, B = 3, 4, 3
    Ad = _stable(H, N, g, complex_)
    Bd = torch.randn(H, N, generator=g, dtype=f64).to(Ad.dtype)
    u = torch.randn(B, L, H, generator=g, dtype=f64)
    x0 = torch.randn(B, H, N, generator=g, dtype=f64).to(Ad.dtype)
    lengths = torch.tensor([L, max(L - 3, 0), L // 2])
    for x0_, len_ in ((None, None), (x0, None), (x0, lengths), (None, lengths)):
        uu = u if len_ is None else u * (torch.arange(L)[None, :, None] < len_[:, None, None])
        want = ssm_final_state_ref(Ad, Bd, uu, x0_, len_)
        assert_close_to_reference(ssm_final_state(Ad, Bd, uu, x0_, len_), want, 1e-12)


@pytest.mark.parametrize("L", [1, 6, 45, 130])
def test_initial_response_equals_stepping(L):
    g = torch.Generator().manual_seed(L)
    H, N = 2, 5
    Ad = _stable(H, N, g, True)
    C = torch.randn(H, N, generator=g, dtype=c128)
    x0 = torch.randn(3, H, N, generator=g, dtype=c128)
    assert_close_to_reference(ssm_initial_response(Ad, C, x0, L), ssm_initial_response_ref(Ad, C, x0, L), 1e-12)


@pytest.mark.parametrize("L", [1, 10, 101])
def test_vandermonde_reduce_equals_horner(L):
    g = torch.Generator().manual_seed(L)
    w = torch.complex(-torch.rand(3, 4, generator=g, dtype=f64) * 0.3, torch.randn(3, 4, generator=g, dtype=f64))
    v = torch.randn(2, 3, L, generator=g, dtype=f64)
    assert_close_to_reference(vandermonde_reduce(w, v), vandermonde_reduce_ref(torch.exp(w), v), 1e-12)


LAYERS = [(S4, dict(d_state=8, l_max=50)), (S4D, dict(d_state=8)), (RTF, dict(d_state=5, l_max=50, init="montel")),
          (S4, dict(d_state=4, measure="legt", l_max=30))]


@pytest.mark.parametrize("cls,kw", LAYERS, ids=lambda v: getattr(v, "__name__", ""))
def test_layer_states_over_several_blocks_equal_steps(cls, kw):
    # L = 150 > l_max and > the block length: several blocks, an odd count, padding and x0
    torch.manual_seed(0)
    layer = cls(2, **kw, dtype=f64)
    L = 150
    x = torch.randn(3, L, 2, dtype=f64)
    lengths = torch.tensor([150, 97, 1])
    mask = torch.arange(L)[None, :] < lengths[:, None]
    with torch.no_grad():
        _, s0 = run_steps(layer, torch.randn(3, 4, 2, dtype=f64))
        y, s = layer(x, initial_state=s0, mask=mask, return_state=True)
        for i, l in enumerate(lengths.tolist()):
            ys, ss = run_steps(layer, x[i:i + 1, :l], s0[i:i + 1])
            assert_close_to_reference(y[i:i + 1, :l], ys, 1e-10, "output")
            assert_close_to_reference(s[i:i + 1], ss, 1e-10, "state")

"""ssmkit.ops.ssd: the chunked SSD scan of Mamba-2 against the step-by-step reference
(values and gradients, float64), its chunk layout, dtypes, edge cases and named errors."""
import pytest
import torch

from ssmkit._checks import trusted_inputs
from ssmkit.ops import ssd, ssd_ref
from ssmkit.ops.ssd import chunk_layout

from helpers import assert_close_to_reference, raises_naming

f64 = torch.float64


def _ssd_inputs(b=2, L=23, H=4, P=3, G=2, N=5, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
    x, B, C = r(b, L, H, P), r(b, L, G, N), r(b, L, G, N)
    dt = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g, dtype=dtype)).requires_grad_()
    A = (-torch.rand(H, generator=g, dtype=dtype) * 3 - 0.1).requires_grad_()
    h0 = r(b, H, P, N)
    return x, dt, A, B, C, h0


def test_chunk_layout():
    assert chunk_layout(196, 64) == (4, 49)  # no padding where 64-step chunks would pad 60 steps
    assert chunk_layout(23, 8) == (3, 8) and chunk_layout(1, 64) == (1, 1) and chunk_layout(128, 64) == (2, 64)
    for L in range(1, 200, 7):
        for c in (1, 4, 64):
            nc, Q = chunk_layout(L, c)
            assert Q <= c and nc * Q >= L > (nc - 1) * Q and nc * Q - L < nc


@pytest.mark.parametrize("L,chunk_size", [(1, 4), (23, 4), (24, 8), (23, 64), (23, 8)])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_ssd_chunked_equals_reference(L, chunk_size, G):
    x, dt, A, B, C, h0 = _ssd_inputs(L=L, G=G)
    y1, h1 = ssd(x, dt, A, B, C, initial_state=h0, chunk_size=chunk_size)
    y2, h2 = ssd_ref(x, dt, A, B, C, initial_state=h0)
    assert_close_to_reference(y1, y2, 1e-12, "y")
    assert_close_to_reference(h1, h2, 1e-12, "state")
    w = torch.randn_like(y1)
    wh = torch.randn_like(h1)
    args = (x, dt, A, B, C, h0)
    g1 = torch.autograd.grad((y1 * w).sum() + (h1 * wh).sum(), args)
    g2 = torch.autograd.grad((y2 * w).sum() + (h2 * wh).sum(), args)
    for name, a, b in zip(["x", "dt", "A", "B", "C", "initial_state"], g1, g2):
        assert_close_to_reference(a, b, 1e-10, "d" + name)


def test_ssd_state_size_128_zero_steps_strided_inputs_and_no_initial_state():
    x, dt, A, B, C, _ = _ssd_inputs(b=1, L=37, H=2, P=4, G=1, N=128, seed=3)
    dt = dt.detach().clone()
    dt[:, 10:14] = 0.0  # Δ = 0 (padding): the state must pass through these steps unchanged
    xs = x.detach().transpose(1, 2).contiguous().transpose(1, 2)  # (b, L, H, P) stored head-first
    y1, h1 = ssd(xs, dt, A, B, C, chunk_size=16)
    y2, h2 = ssd_ref(x, dt, A, B, C)
    assert_close_to_reference(y1, y2, 1e-12, "y")
    assert_close_to_reference(h1, h2, 1e-12, "state")


def test_chunk_size_changes_only_rounding():
    x, dt, A, B, C, h0 = (t.detach() for t in _ssd_inputs(L=50, seed=2))
    y_ref, h_ref = ssd_ref(x, dt, A, B, C, initial_state=h0)
    for q in (1, 7, 16, 50, 256):
        y, h = ssd(x, dt, A, B, C, initial_state=h0, chunk_size=q)
        assert_close_to_reference(y, y_ref, 1e-12, f"y (chunk_size={q})")
        assert_close_to_reference(h, h_ref, 1e-12, f"state (chunk_size={q})")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision_is_computed_in_float32(dtype, tol):
    """float32 within 1e-5 of the float64 reference; float16/bfloat16 inputs are computed in
    float32 and y is rounded to the input dtype (tolerance: a few units of its last place)."""
    x, dt, A, B, C, h0 = (t.detach().to(dtype) for t in _ssd_inputs(L=30, seed=4))
    y, h = ssd(x, dt, A, B, C, initial_state=h0)
    assert y.dtype == dtype and h.dtype == torch.float32
    y_ref, h_ref = ssd_ref(*(t.double() for t in (x, dt, A, B, C)), initial_state=h0.double())
    assert_close_to_reference(y.double(), y_ref, tol, "y")
    assert_close_to_reference(h.double(), h_ref, 1e-5, "state")


def test_empty_batch_and_one_step():
    x, dt, A, B, C, h0 = (t.detach() for t in _ssd_inputs(L=5))
    y, h = ssd(x[:0], dt[:0], A, B[:0], C[:0])
    assert y.shape == (0, 5, 4, 3) and h.shape == (0, 4, 3, 5)
    y, h = ssd(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1], initial_state=h0)
    y2, h2 = ssd_ref(x[:, :1], dt[:, :1], A, B[:, :1], C[:, :1], initial_state=h0)
    assert_close_to_reference(y, y2, 1e-12)
    assert_close_to_reference(h, h2, 1e-12)


def test_bad_input_is_named():
    x, dt, A, B, C, h0 = (t.detach() for t in _ssd_inputs(L=5))
    with raises_naming(ValueError, "x"):
        ssd(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0])
    with raises_naming(ValueError, "dt"):
        ssd(x, -dt, A, B, C)
    with raises_naming(ValueError, "A"):
        ssd(x, dt, -A, B, C)
    with raises_naming(TypeError, "x"):
        ssd(x.to(torch.complex128), dt, A, B, C)
    with raises_naming(ValueError, "C"):
        ssd(x, dt, A, B, C[..., :2])
    with raises_naming(ValueError, "initial_state"):
        ssd(x, dt, A, B, C, initial_state=h0[:, :1])
    with raises_naming(TypeError, "chunk_size"):
        ssd(x, dt, A, B, C, chunk_size=2.0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with raises_naming(ValueError, "x"):
        ssd(bad, dt, A, B, C)
    with trusted_inputs():  # the value checks are skipped, the shape checks are not
        ssd(x, -dt * 0, A, B, C)
        with raises_naming(ValueError, "C"):
            ssd(x, dt, A, B, C[..., :2])


def test_ssd_and_reference_name_the_argument():
    x, dt, A, B, C, h0 = (t.detach() for t in _ssd_inputs())
    with raises_naming(ValueError, "dt"):
        ssd(x, dt[:, :5], A, B, C)
    with pytest.raises(ValueError, match="^A must be <= 0"):
        ssd(x, dt, A.abs(), B, C)
    with pytest.raises(ValueError, match="^dt must be >= 0"):
        ssd(x, -dt, A, B, C)
    with raises_naming(ValueError, "B"):
        ssd(x, dt, A, torch.zeros(2, 23, 3, 5, dtype=f64), C)  # 3 groups do not divide 4 heads
    with raises_naming(ValueError, "C"):
        ssd(x, dt, A, B, C[..., :2])
    with raises_naming(ValueError, "initial_state"):
        ssd(x, dt, A, B, C, initial_state=h0[:1])
    x_nan = x.clone()
    x_nan[0, 3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="^x .*NaN"):
        ssd(x_nan, dt, A, B, C)
    with pytest.raises(ValueError, match="^B .*NaN"):
        ssd_ref(x, dt, A, B * float("inf"), C)

"""linear_scan against the loop (values and gradients, real and complex), and the S5 layer."""
import pytest
import torch

from ssmkit.layers.base import run_steps

from ssmkit.layers import S5
from ssmkit.ops import linear_scan, linear_scan_ref

f64, c128 = torch.float64, torch.complex128


@pytest.mark.parametrize("dtype", [f64, c128])
@pytest.mark.parametrize("shape", [(2, 1, 3), (2, 17, 3), (1, 9, 2, 4)])
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


def test_linear_scan_long_sequence_is_finite():
    L = 200_000
    a = torch.full((1, L, 2), 0.999)
    b = torch.randn(1, L, 2)
    h = linear_scan(a, b)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h[:, :50], linear_scan_ref(a[:, :50], b[:, :50]), rtol=1e-5, atol=1e-5)


def test_linear_scan_bad_input():
    with pytest.raises(ValueError, match="broadcast"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 4))
    with pytest.raises(ValueError, match="h0"):
        linear_scan(torch.ones(2, 5, 3), torch.ones(2, 5, 3), torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        linear_scan(torch.ones(2, 5, 3), torch.full((2, 5, 3), float("nan")))




@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_s5_forward_equals_step(dtype, tol):
    torch.manual_seed(0)
    layer = S5(6, 8).to(dtype)
    x = torch.randn(2, 19, 6, dtype=dtype)
    y, s = layer(x, return_state=True)
    ys, ss = run_steps(layer, x)
    assert float((y - ys).detach().abs().max() / ys.detach().abs().max()) < tol
    assert float((s - ss).detach().abs().max() / ss.detach().abs().max()) < tol


def test_s5_padding_continuation_gradcheck():
    torch.manual_seed(0)
    layer = S5(4, 6).double()
    x = torch.randn(3, 12, 4, dtype=f64)
    lengths = [12, 5, 1]
    mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    y, s = layer(torch.where(mask[..., None], x, torch.full_like(x, 3.0)), mask=mask, return_state=True)
    for i, l in enumerate(lengths):
        yi, si = layer(x[i:i + 1, :l], return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s[i:i + 1], si, rtol=1e-10, atol=1e-12)
    y1, s1 = layer(x[:, :4], return_state=True)
    torch.testing.assert_close(torch.cat([y1, layer(x[:, 4:], initial_state=s1)], 1), layer(x), rtol=1e-10, atol=1e-12)
    xs = torch.randn(1, 5, 4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (xs,), eps=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="d_state"):
        S5(4, 5)

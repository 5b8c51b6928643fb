"""Mamba-2: chunked SSD against the sequential reference, forward against step, padding."""
import pytest
import torch

from ssmkit.layers.base import run_steps

from ssmkit.layers import Mamba2
from ssmkit.ops import ssd, ssd_ref

f64 = torch.float64


def _ssd_inputs(b=2, L=23, H=4, P=3, G=2, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64).requires_grad_()
    x, B, C = r(b, L, H, P), r(b, L, G, N), r(b, L, G, N)
    dt = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g, dtype=f64)).requires_grad_()
    A = (-torch.rand(H, generator=g, dtype=f64) * 3 - 0.1).requires_grad_()
    h0 = r(b, H, P, N)
    return x, dt, A, B, C, h0


@pytest.mark.parametrize("L,chunk", [(1, 4), (23, 4), (24, 8), (23, 64)])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_ssd_chunked_equals_reference(L, chunk, G):
    x, dt, A, B, C, h0 = _ssd_inputs(L=L, G=G)
    y1, h1 = ssd(x, dt, A, B, C, initial_state=h0, chunk=chunk)
    y2, h2 = ssd_ref(x, dt, A, B, C, initial_state=h0)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h1, h2, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y1)
    args = (x, dt, A, B, C, h0)
    g1 = torch.autograd.grad((y1 * w).sum() + h1.sum(), args)
    g2 = torch.autograd.grad((y2 * w).sum() + h2.sum(), args)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)




@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mamba2_forward_equals_step(dtype, tol):
    torch.manual_seed(0)
    layer = Mamba2(16, d_state=8, headdim=8, ngroups=2, chunk_size=8).to(dtype)
    x = torch.randn(2, 21, 16, dtype=dtype)
    y, (cs, hs) = layer(x, return_state=True)
    ys, (cs2, hs2) = run_steps(layer, x)
    assert float((y - ys).detach().abs().max() / ys.detach().abs().max()) < tol
    assert float((hs - hs2).detach().abs().max() / hs2.detach().abs().max()) < tol


def test_mamba2_padding_continuation_gradcheck():
    torch.manual_seed(0)
    layer = Mamba2(8, d_state=4, headdim=4, chunk_size=4).double()
    x = torch.randn(3, 13, 8, dtype=f64)
    lengths = [13, 6, 1]
    mask = torch.arange(13)[None] < torch.tensor(lengths)[:, None]
    y, (cs, hs) = layer(torch.where(mask[..., None], x, torch.full_like(x, 4.0)), mask=mask, return_state=True)
    for i, l in enumerate(lengths):
        yi, (ci, hi) = layer(x[i:i + 1, :l], return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hs[i:i + 1], hi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cs[i:i + 1], ci, rtol=1e-10, atol=1e-12)
    y1, s1 = layer(x[:, :5], return_state=True)
    torch.testing.assert_close(torch.cat([y1, layer(x[:, 5:], initial_state=s1)], 1), layer(x), rtol=1e-10, atol=1e-12)
    xs = torch.randn(1, 5, 8, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (xs,), eps=1e-6, atol=1e-6)


def test_mamba2_bad_input():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(16, headdim=7)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(16, headdim=8, ngroups=3)
    layer = Mamba2(16, headdim=8)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match="dt"):
        ssd(torch.zeros(1, 4, 2, 3), torch.zeros(1, 3, 2), torch.zeros(2), torch.zeros(1, 4, 1, 2), torch.zeros(1, 4, 1, 2))

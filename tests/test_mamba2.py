"""Mamba-2: forward against step, padding (the SSD op itself: tests/test_ssd.py)."""
import pytest
import torch

from ssmkit.layers import Mamba2
from ssmkit.layers.base import run_steps

from helpers import assert_pieces_equal_one_pass, raises_naming, rel_err

f64 = torch.float64


@pytest.mark.parametrize("d_state,ngroups,headdim", [(8, 2, 8), (64, 1, 4), (128, 2, 4)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mamba2_forward_equals_step(d_state, ngroups, headdim, dtype, tol):
    torch.manual_seed(0)
    layer = Mamba2(16, d_state=d_state, headdim=headdim, ngroups=ngroups, chunk_size=8).to(dtype)
    assert layer.nheads == 32 // headdim and layer.nheads > ngroups
    x = torch.randn(2, 21, 16, dtype=dtype)
    y, (cs, hs) = layer(x, return_state=True)
    ys, (cs2, hs2) = run_steps(layer, x)
    assert hs.shape == (2, layer.nheads, headdim, d_state)
    assert rel_err(y, ys) < tol
    assert rel_err(hs, hs2) < tol
    assert rel_err(cs, cs2) < tol  # in_proj of a batch and of one token round differently


def test_mamba2_padding_continuation_gradcheck():
    torch.manual_seed(0)
    layer = Mamba2(8, d_state=4, headdim=4, chunk_size=4).double()
    x = torch.randn(3, 13, 8, dtype=f64)
    lengths = [13, 6, 1]
    mask = torch.arange(13)[None] < torch.tensor(lengths)[:, None]
    # padded batch from a nonzero initial state equals each sequence alone from that state
    _, s0 = layer(torch.randn(3, 5, 8, dtype=f64), return_state=True)
    y, (cs, hs) = layer(torch.where(mask[..., None], x, torch.full_like(x, 4.0)), mask=mask, initial_state=s0,
                        return_state=True)
    assert bool((y[~mask] == 0).all())
    for i, l in enumerate(lengths):
        yi, (ci, hi) = layer(x[i:i + 1, :l], initial_state=(s0[0][i:i + 1], s0[1][i:i + 1]), return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hs[i:i + 1], hi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cs[i:i + 1], ci, rtol=1e-10, atol=1e-12)
    # chunked processing (pieces not aligned to the chunk size) equals one pass, outputs and
    # state; forward then step continues the same sequence
    assert_pieces_equal_one_pass(layer, x, 5, 6)
    xs = torch.randn(1, 5, 8, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (xs,), eps=1e-6, atol=1e-6)


def test_mamba2_bad_input():
    with raises_naming(ValueError, "headdim"):
        Mamba2(16, headdim=7)
    with raises_naming(ValueError, "ngroups"):
        Mamba2(16, headdim=8, ngroups=3)
    layer = Mamba2(16, d_state=8, headdim=8)
    with raises_naming(ValueError, "x"):
        layer(torch.randn(2, 5, 15))
    with pytest.raises(ValueError, match=r"\bx .*NaN"):
        layer(torch.full((2, 5, 16), float("nan")))
    with pytest.raises(ValueError, match=r"\bx_t .*NaN"):
        layer.step(torch.full((2, 16), float("nan")), layer.initial_state(2))
    with raises_naming(ValueError, "x_t"):
        layer.step(torch.randn(2, 15), layer.initial_state(2))
    with raises_naming(ValueError, "initial_state"):
        layer(torch.randn(2, 5, 16), initial_state=layer.initial_state(3))
    bad = layer.initial_state(2)
    bad[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\bstate .*NaN"):
        layer.step(torch.randn(2, 16), bad)
    with raises_naming(ValueError, "mask"):
        layer(torch.randn(2, 5, 16), mask=torch.tensor([[True, False, True, True, True]] * 2))
    with torch.no_grad():
        layer.A_log[0] = float("inf")  # A = -inf
    with raises_naming(ValueError, "A_log"):
        layer(torch.randn(2, 5, 16))
    with torch.no_grad():
        layer.A_log[0] = float("nan")
    with raises_naming(ValueError, "A_log"):
        layer.step(torch.randn(2, 16), layer.initial_state(2))


def test_mamba2_initial_state_and_constructor_arguments_are_named():
    layer = Mamba2(8, d_state=4, headdim=4)
    for bad in (2.0, "3", None):
        with raises_naming(TypeError, "batch_size"):
            layer.initial_state(bad)
    with raises_naming(ValueError, "batch_size"):
        layer.initial_state(-2)
    for bad in (float("-inf"), -1):
        with raises_naming(ValueError, "dt_init_floor"):
            Mamba2(8, headdim=4, dt_init_floor=bad)
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0, float("inf"))):
        with raises_naming(ValueError, "A_init_range"):
            Mamba2(8, headdim=4, A_init_range=bad)
    with raises_naming(TypeError, "A_init_range"):
        Mamba2(8, headdim=4, A_init_range=3.0)

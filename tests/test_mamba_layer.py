"""The Mamba block: paper defaults and init, forward against step, padding, continuation, bad input.

(The selective-scan operator itself is tested in test_selective_scan.py.)
"""
import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import Mamba, Mamba2
from ssmkit.layers.base import run_steps

from helpers import assert_close_to_reference, assert_pieces_equal_one_pass, raises_naming, rel_err

f64 = torch.float64


def test_mamba_defaults_and_init():
    torch.manual_seed(0)
    layer = Mamba(32)
    assert (layer.d_state, layer.d_conv, layer.d_inner, layer.dt_rank) == (16, 4, 64, 2)
    assert layer.conv1d.weight.shape == (64, 1, 4) and layer.in_proj.out_features == 128
    # S4D-Real: A_n = -(n + 1) for every channel
    A = -torch.exp(layer.A_log.detach())
    torch.testing.assert_close(A, -torch.arange(1, 17, dtype=torch.float32).expand(64, 16))
    # dt bias: softplus(bias) is the initial step, log-uniform in [dt_min, dt_max] = [1e-3, 0.1]
    dt = F.softplus(layer.dt_proj.bias.detach())
    assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 0.1 * (1 + 1e-5)
    assert abs(float(torch.log(dt).mean()) - 0.5 * (math.log(1e-3) + math.log(0.1))) < 0.6
    torch.testing.assert_close(layer.D.detach(), torch.ones(64))
    assert not Mamba.needs_channel_mixer


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mamba_default_block_forward_equals_step(dtype, tol):
    torch.manual_seed(1)
    layer = Mamba(8).to(dtype)  # d_state 16, d_conv 4, expand 2
    x = torch.randn(2, 19, 8, dtype=dtype)
    y, (cs, hs) = layer(x, return_state=True)
    ys, (cs2, hs2) = run_steps(layer, x)
    assert rel_err(y, ys) < tol
    assert rel_err(hs, hs2) < tol
    assert rel_err(cs, cs2) < tol


def test_mamba_padded_batch_from_a_state_and_chunked_processing():
    torch.manual_seed(2)
    layer = Mamba(8, d_state=4).double()
    x = torch.randn(4, 11, 8, dtype=f64)
    lengths = [11, 7, 2, 1]  # 2 and 1 are shorter than the conv window (3)
    mask = torch.arange(11)[None] < torch.tensor(lengths)[:, None]
    _, s0 = layer(torch.randn(4, 6, 8, dtype=f64), return_state=True)
    y, (cs, hs) = layer(torch.where(mask[..., None], x, torch.full_like(x, -7.0)), mask=mask, initial_state=s0,
                        return_state=True)
    assert bool((y[~mask] == 0).all())
    for i, l in enumerate(lengths):
        yi, (ci, hi) = layer(x[i:i + 1, :l], initial_state=(s0[0][i:i + 1], s0[1][i:i + 1]), return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cs[i:i + 1], ci, rtol=1e-10, atol=1e-12)  # conv window
        torch.testing.assert_close(hs[i:i + 1], hi, rtol=1e-10, atol=1e-12)  # SSM state
    # three pieces, one shorter than the conv window, equal one pass: outputs and both states;
    # forward over a prefix, then step through the rest
    (c4, h4), h_all = assert_pieces_equal_one_pass(layer, x, 4, 5)
    torch.testing.assert_close(h4, h_all, rtol=1e-10, atol=1e-12)


def test_mamba_bad_input():
    layer = Mamba(8, d_state=4)
    with pytest.raises(ValueError, match=r"\bx .*NaN"):
        layer(torch.full((2, 5, 8), float("nan")))
    with raises_naming(ValueError, "x"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"\bx_t .*NaN"):
        layer.step(torch.full((2, 8), float("nan")), layer.initial_state(2))
    with raises_naming(ValueError, "x_t"):
        layer.step(torch.randn(2, 8, 1), layer.initial_state(2))
    with raises_naming(ValueError, "initial_state"):
        layer(torch.randn(2, 5, 8), initial_state=layer.initial_state(3))
    bad = layer.initial_state(2)
    bad[0][1, 2, 0] = float("inf")
    with pytest.raises(ValueError, match=r"\binitial_state .*NaN"):
        layer(torch.randn(2, 5, 8), initial_state=bad)
    with raises_naming(ValueError, "mask"):
        layer(torch.randn(2, 5, 8), mask=torch.ones(2, 6, dtype=torch.bool))
    with raises_naming(ValueError, "mask"):  # left padding is not supported
        layer(torch.randn(2, 5, 8), mask=torch.tensor([[False, True, True, True, True]] * 2))
    with torch.no_grad():
        layer.A_log[0, 0] = float("inf")  # A = -inf
    with raises_naming(ValueError, "A_log"):
        layer(torch.randn(2, 5, 8))
    with torch.no_grad():
        layer.A_log[0, 0] = float("nan")
    with raises_naming(ValueError, "A_log"):
        layer.step(torch.randn(2, 8), layer.initial_state(2))


@pytest.mark.parametrize("make", [lambda: Mamba(8, d_state=4), lambda: Mamba2(8, d_state=4, headdim=4, chunk_size=4)],
                         ids=["mamba", "mamba2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_input_dtype_is_computed_in_the_parameters_dtype(make, dtype):
    # the rule of every layer and model (docs/reliability.md): an input in another floating dtype
    # is cast to the parameters' dtype, and the layer returns its output in the input's dtype
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, 5, 8).to(dtype)
    with torch.no_grad():
        y, (c, h) = layer(x, return_state=True)
        want, (cw, hw) = layer(x.float(), return_state=True)
        yt, _ = layer.step(x[:, 0], layer.initial_state(2))
        want_t, _ = layer.step(x[:, 0].float(), layer.initial_state(2))
    assert y.dtype == dtype and yt.dtype == dtype
    assert torch.equal(y, want.to(dtype)) and torch.equal(yt, want_t.to(dtype))
    assert torch.equal(c, cw) and torch.equal(h, hw)  # states in the parameters' dtype, as initial_state
    # inside autocast a bfloat16 input is left alone (mixed precision is expected there); the
    # others are cast as outside it; every output comes back in the input's dtype
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ya = layer(x)
        yb = layer(x.float())
    assert ya.dtype == dtype and bool(torch.isfinite(ya).all())
    assert_close_to_reference(ya.float(), yb.float(), 2e-2, "autocast: any input dtype")


def test_initial_state_and_constructor_arguments_are_named():
    layer = Mamba(4, d_state=4)
    for bad in (2.0, "3", True, None):
        with raises_naming(TypeError, "batch_size"):
            layer.initial_state(bad)
    with raises_naming(ValueError, "batch_size"):
        layer.initial_state(-1)
    with raises_naming(TypeError, "dtype"):
        layer.initial_state(2, dtype="float32")
    assert layer.initial_state(0)[1].shape == (0, 8, 4)
    for bad in (float("-inf"), float("nan"), -0.5):
        with raises_naming(ValueError, "dt_init_floor"):
            Mamba(4, dt_init_floor=bad)
    for flag in ("bias", "conv_bias"):
        with raises_naming(TypeError, flag):
            Mamba(4, **{flag: 0})

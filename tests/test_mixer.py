"""The fused channel mixer against the plain GELU -> Linear -> GLU modules."""
import pytest
import torch
from torch import nn

from helpers import assert_close_to_reference, raises_naming, rel_err
from ssmkit.models.mixer import ChannelMixer, channel_mixer


def _pair(H, dtype):
    torch.manual_seed(0)
    ref = nn.Sequential(nn.GELU(), nn.Linear(H, 2 * H), nn.GLU(dim=-1)).to(dtype)
    fused = ChannelMixer(H, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("shape", [(3, 7, 5), (4, 5), (2, 1, 1, 5)])
def test_matches_sequential_forward_and_backward(shape):
    H = shape[-1]
    ref, fused = _pair(H, torch.float64)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(*shape, dtype=torch.float64)
    outs = []
    for m in (ref, fused):
        x.grad = None
        m.zero_grad()
        y = m(x)
        y.backward(gy)
        outs.append((y.detach(), x.grad.clone(), m[1].weight.grad.clone(), m[1].bias.grad.clone()))
    for a, b in zip(outs[1], outs[0]):
        assert a.shape == b.shape
        assert_close_to_reference(a, b, 1e-12)


def test_gradcheck():
    torch.manual_seed(1)
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(channel_mixer, (h, W, b))


def test_state_dict_compatible_and_float32():
    ref, fused = _pair(8, torch.float32)
    assert set(fused.state_dict()) == {"1.weight", "1.bias"}
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, 8)
    with torch.no_grad():
        assert_close_to_reference(fused(x), ref(x), 1e-5)


def test_bad_shapes_named():
    with raises_naming(ValueError, "weight"):
        channel_mixer(torch.randn(2, 3), torch.randn(6, 4), torch.randn(6))
    with raises_naming(ValueError, "bias"):
        channel_mixer(torch.randn(2, 3), torch.randn(6, 3), torch.randn(5))
    with raises_naming(ValueError, "d_model"):
        ChannelMixer(0)


def test_mixer_module_casts_other_dtypes_and_names_a_wrong_width():
    torch.manual_seed(0)
    m = ChannelMixer(4).double()
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    y32 = m.float()(h.float())
    y16 = m(h.half())  # computed in the parameters' float32, returned in float16
    assert y16.dtype == torch.float16 and rel_err(y16.double(), y32.double()) < 2e-3
    with raises_naming(ValueError, "h"):
        m(torch.randn(2, 3, 5))

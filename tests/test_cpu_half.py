"""Half-precision products on the CPU computed in float32 (ssmkit.ops.cpu_half): the result is
the float64 product of the same rounded operands, rounded once to the half dtype."""
import pytest
import torch
from torch import nn

from helpers import raises_naming
from ssmkit.ops.cpu_half import depthwise_conv1d, linear, module_linear

ROUND = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}  # half of one unit in the last place, relative


def _within_one_rounding(y, ref, dtype):
    # float32 accumulation adds ~1e-6 relative; one rounding to the half dtype at most ROUND
    return bool(((y.double() - ref).abs() <= ROUND[dtype] * ref.abs() + 1e-5 * ref.abs().max()).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [3, 40])
def test_linear_in_half_precision_is_the_product_rounded_once(dtype, rows):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, rows, 48).to(dtype), torch.randn(20, 48).to(dtype), torch.randn(20).to(dtype)
    y = linear(x, w, b)
    ref = x.double() @ w.double().T + b.double()
    assert y.dtype == dtype and y.shape == (2, rows, 20)
    assert _within_one_rounding(y, ref, dtype)


def test_depthwise_conv1d_in_bfloat16_is_the_product_rounded_once():
    torch.manual_seed(1)
    x, w, b = torch.randn(2, 6, 9).bfloat16(), torch.randn(6, 1, 4).bfloat16(), torch.randn(6).bfloat16()
    y = depthwise_conv1d(x, w, b)
    ref = torch.nn.functional.conv1d(x.double(), w.double(), b.double(), groups=6)
    assert y.dtype == torch.bfloat16 and _within_one_rounding(y, ref, torch.bfloat16)


def test_module_linear_keeps_the_modules_hooks_and_float32_path():
    torch.manual_seed(2)
    m = nn.Linear(16, 8).bfloat16()
    x = torch.randn(32, 16).bfloat16()
    assert _within_one_rounding(module_linear(m, x), x.double() @ m.weight.double().T + m.bias.double(), torch.bfloat16)
    seen = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    module_linear(m, x)
    assert seen == [(32, 8)]  # a hooked module runs itself
    m32 = nn.Linear(16, 8)
    x32 = torch.randn(32, 16)
    assert torch.equal(module_linear(m32, x32), m32(x32))


def test_wrong_shapes_are_named():
    x = torch.randn(2, 5, 16).bfloat16()
    with raises_naming(ValueError, "weight"):
        linear(x, torch.randn(8, 15).bfloat16())
    with raises_naming(ValueError, "bias"):
        linear(x, torch.randn(8, 16).bfloat16(), torch.randn(7).bfloat16())
    with raises_naming(TypeError, "x"):
        linear(x.to(torch.int64), torch.randn(8, 16))
    c = torch.randn(2, 6, 9).bfloat16()
    with raises_naming(ValueError, "weight"):
        depthwise_conv1d(c, torch.randn(5, 1, 4).bfloat16())
    with raises_naming(ValueError, "x"):
        depthwise_conv1d(c[..., :3], torch.randn(6, 1, 4).bfloat16())
    with raises_naming(ValueError, "bias"):
        depthwise_conv1d(c, torch.randn(6, 1, 4).bfloat16(), torch.randn(5).bfloat16())
    # a batch of 0: an empty result
    assert linear(x[:0], torch.randn(8, 16).bfloat16()).shape == (0, 5, 8)
    assert depthwise_conv1d(c[:0], torch.randn(6, 1, 4).bfloat16()).shape == (0, 6, 6)

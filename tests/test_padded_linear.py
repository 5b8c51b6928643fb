"""The product at a padded width (ssmkit.ops.padded_linear): the same values and gradients as
``F.linear``, with rows padded to a multiple of 16 where it applies, ``F.linear`` itself elsewhere."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import raises_naming
from ssmkit.ops.cpu_half import module_linear
from ssmkit.ops.padded_linear import padded_linear, padded_width, padding_pays


def _float64_reference(x, w, b):
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


@pytest.mark.parametrize("N", [386, 258, 1030])
@pytest.mark.parametrize("with_bias", [True, False])
def test_padded_product_equals_linear_with_gradients(N, with_bias):
    torch.manual_seed(0)
    x = torch.randn(4, 100, 64, requires_grad=True)
    w = torch.randn(N, 64, requires_grad=True)
    b = torch.randn(N, requires_grad=True) if with_bias else None
    assert padding_pays(x, w)
    y = padded_linear(x, w, b)
    assert y.shape == (4, 100, N) and y.stride() == (100 * padded_width(N), padded_width(N), 1)
    # float32 sums of 64 products of N(0,1) numbers: errors ~1e-6 relative to their size (~8)
    assert torch.allclose(y.double(), _float64_reference(x, w, b), rtol=0, atol=1e-4)
    v = torch.randn(y.shape)
    live = [x, w] + ([b] if with_bias else [])
    got = torch.autograd.grad((y * v).sum(), live)
    want = torch.autograd.grad((F.linear(x, w, b) * v).sum(), live)
    for name, g, r in zip(["x", "weight", "bias"], got, want):
        # sums over up to 1,030 columns (x) or 400 rows (weight, bias): float32 rounding of sums
        # of size ~50-100, a few ulps (1e-5 relative, 1e-4 absolute)
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-4), name


def test_padded_product_has_a_second_derivative():
    torch.manual_seed(1)
    x = torch.randn(300, 8, requires_grad=True)
    w = torch.randn(258, 8, requires_grad=True)
    (gx,) = torch.autograd.grad(padded_linear(x, w).square().sum(), x, create_graph=True)
    (gx_ref,) = torch.autograd.grad(F.linear(x, w).square().sum(), x, create_graph=True)
    gw = torch.autograd.grad(gx.square().sum(), w)[0]
    gw_ref = torch.autograd.grad(gx_ref.square().sum(), w)[0]
    assert torch.allclose(gw, gw_ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("case", ["width_multiple_of_8", "narrow", "float64", "few_rows"])
def test_padding_applies_only_where_it_pays(case):
    x = torch.randn(400, 32, dtype=torch.float64 if case == "float64" else torch.float32)
    if case == "few_rows":
        x = x[:10]
    w = torch.randn({"width_multiple_of_8": 1288, "narrow": 130}.get(case, 386), 32, dtype=x.dtype)
    assert not padding_pays(x, w)
    y = padded_linear(x, w)
    assert y.is_contiguous() and torch.equal(y, F.linear(x, w))


def test_module_linear_pads_a_plain_linear_and_leaves_a_hooked_one_to_the_module():
    torch.manual_seed(2)
    m = nn.Linear(64, 386, bias=False)
    x = torch.randn(2, 200, 64)
    y = module_linear(m, x)
    assert y.stride(-2) == 400 and torch.allclose(y, m(x), rtol=1e-5, atol=1e-5)
    calls = []
    m.register_forward_hook(lambda mod, a, out: calls.append(out.shape))
    assert module_linear(m, x).is_contiguous() and calls == [(2, 200, 386)]


def test_bad_arguments_are_refused_by_name():
    with raises_naming(ValueError, "weight"):
        padded_linear(torch.randn(300, 64), torch.randn(386, 63))
    with raises_naming(TypeError, "x"):
        padded_linear([[1.0] * 64] * 300, torch.randn(386, 64))
    with raises_naming(ValueError, "bias"):
        padded_linear(torch.randn(300, 64), torch.randn(386, 64), torch.randn(5))
    with raises_naming(TypeError, "weight"):
        padded_linear(torch.randn(300, 64).double(), torch.randn(386, 64))
    with raises_naming(ValueError, "x"):
        padded_linear(torch.tensor(1.0), torch.randn(386, 1))


@pytest.mark.parametrize("shape", [(0, 300, 64), (2, 0, 64)])
def test_empty_batches_and_lengths_give_empty_results(shape):
    y = padded_linear(torch.randn(*shape), torch.randn(386, 64))
    assert y.shape == (*shape[:-1], 386)

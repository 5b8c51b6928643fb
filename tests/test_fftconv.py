"""fftconv: both layouts against the O(L²) definition, the written-out backward against finite
differences, half precision (computed in float32), empty batches, bad input named."""
import pytest
import torch

from helpers import assert_close_to_reference, raises_naming
from ssmkit.ops import causal_conv_ref, fftconv

f64 = torch.float64


@pytest.mark.parametrize("L,Lk", [(1, 1), (7, 3), (16, 16), (9, 30)])
@pytest.mark.parametrize("with_D", [False, True])
def test_both_layouts_equal_definition(L, Lk, with_D):
    g = torch.Generator().manual_seed(L * 100 + Lk)
    u = torch.randn(3, L, 4, generator=g, dtype=f64)
    K = torch.randn(4, Lk, generator=g, dtype=f64)
    D = torch.randn(4, generator=g, dtype=f64) if with_D else None
    want = causal_conv_ref(u, K, D)
    y = fftconv(u, K, D)
    assert y.is_contiguous()
    assert_close_to_reference(y, want, 1e-12)
    y_bhl = fftconv(u.transpose(1, 2).contiguous(), K, D, layout="bhl")
    assert_close_to_reference(y_bhl.transpose(1, 2), want, 1e-12)


def test_backward_matches_finite_differences():
    # the custom backward (correlations with the saved spectra) for u, K and D, both layouts
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 6, 3, generator=g, dtype=f64, requires_grad=True)
    K = torch.randn(3, 4, generator=g, dtype=f64, requires_grad=True)
    D = torch.randn(3, generator=g, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, K, D: fftconv(u, K, D), (u, K, D))
    ub = u.detach().transpose(1, 2).contiguous().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, K: fftconv(u, K, layout="bhl"), (ub, K))


def test_backward_matches_autograd_of_definition():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4, 11, 5, generator=g, dtype=f64, requires_grad=True)
    K = torch.randn(5, 11, generator=g, dtype=f64, requires_grad=True)
    w = torch.randn(4, 11, 5, generator=g, dtype=f64)
    gu, gK = torch.autograd.grad((fftconv(u, K) * w).sum(), (u, K))
    ru, rK = torch.autograd.grad((causal_conv_ref(u, K) * w).sum(), (u, K))
    assert_close_to_reference(gu, ru, 1e-12, "grad u")
    assert_close_to_reference(gK, rK, 1e-12, "grad K")


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_is_computed_in_float32(dtype, tol):
    # the result is the float32 convolution of the half-precision inputs, rounded to `dtype`:
    # its error against float64 is the rounding of the output (2^-11 resp. 2^-8 relative to max|y|)
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 50, 3, generator=g).to(dtype)
    K = (torch.randn(3, 50, generator=g) / 8).to(dtype)
    y = fftconv(u, K)
    assert y.dtype == dtype
    assert_close_to_reference(y.double(), causal_conv_ref(u.double(), K.double()), tol)


def test_empty_batch_and_length_one():
    K = torch.randn(3, 5)
    y = fftconv(torch.zeros(0, 7, 3), K, torch.ones(3))
    assert y.shape == (0, 7, 3)
    y = fftconv(torch.zeros(0, 3, 7), K, layout="bhl")
    assert y.shape == (0, 3, 7)
    u = torch.randn(2, 1, 3, dtype=f64)
    assert_close_to_reference(fftconv(u, K.double()), u * K.double()[:, 0], 1e-14)


def test_bad_input_named():
    u, K = torch.randn(2, 5, 3), torch.randn(3, 5)
    with raises_naming(TypeError, "u"):
        fftconv(u.to(torch.complex64), K)
    with raises_naming(TypeError, "u"):
        fftconv(u.long(), K)
    with raises_naming(TypeError, "K"):
        fftconv(u, K.to(torch.complex64))
    with raises_naming(ValueError, "K"):
        fftconv(u, torch.randn(4, 5))  # width mismatch
    with raises_naming(ValueError, "K"):
        fftconv(u, torch.randn(3, 0))
    with raises_naming(ValueError, "u"):
        fftconv(torch.randn(2, 0, 3), K)
    with raises_naming(ValueError, "D"):
        fftconv(u, K, torch.randn(4))
    with raises_naming(ValueError, "layout"):
        fftconv(u, K, layout="lbh")
    for bad in (float("nan"), float("inf")):
        with raises_naming(ValueError, "u"):
            fftconv(torch.full((1, 4, 3), bad), K)
        with raises_naming(ValueError, "K"):
            fftconv(u, torch.full((3, 5), bad))
        with raises_naming(ValueError, "D"):
            fftconv(u, K, torch.full((3,), bad))

"""fftconv: both layouts against the O(L²) definition, the written-out backward against finite
differences, half precision (computed in float32), empty batches, bad input named."""
import pytest
import torch

from helpers import assert_close_to_reference, raises_naming
from ssmkit.ops import _native, causal_conv_ref, fftconv
from ssmkit.ops.fftconv import DIRECT_MAX_LEN

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


# The direct sum (method="direct", and "auto" for short (B, L, H) float32 inputs on the CPU).
# Tolerance: float32 sums of up to L products of unit-scale numbers; relative to max|y| the
# rounding error stays below ~1e-6 here (measured ~1e-7 to 4e-7), the FFT route's is similar.
needs_native = pytest.mark.skipif(not _native.available(), reason="the native library is not built here")


@needs_native
@pytest.mark.parametrize("B,L,H,Lk", [
    (2, 1, 3, 1),      # one step
    (3, 7, 5, 7),      # fewer channels than a vector, fewer steps than a block of 4 in the tail
    (2, 13, 24, 5),    # a kernel shorter than the sequence; one block of 16 and one of 8 channels
    (2, 37, 40, 37),   # 16 + 16 + 8 channels, L not a multiple of 4
    (3, 50, 64, 50),   # the layers' case: full-length kernel, channels a multiple of 16
    (1, 9, 19, 4),     # 16 channels and a scalar tail of 3
    (2, 24, 16, 24),   # L and the kernel exact multiples of the register block (7, or 12 with AVX-512VL)
    (2, 30, 8, 25),    # several blocks of outputs and of taps, both with partial last blocks
])
@pytest.mark.parametrize("with_D", [False, True])
def test_direct_sum_and_its_gradients_equal_the_definition(B, L, H, Lk, with_D):
    g = torch.Generator().manual_seed(B * 1000 + L * 10 + H)
    u = torch.randn(B, L, H, generator=g, dtype=f64, requires_grad=True)
    K = torch.randn(H, Lk, generator=g, dtype=f64, requires_grad=True)
    D = torch.randn(H, generator=g, dtype=f64, requires_grad=True) if with_D else None
    want = causal_conv_ref(u, K, D)
    gy = torch.randn(want.shape, generator=g, dtype=f64)
    want_grads = torch.autograd.grad(want, (u, K) + ((D,) if with_D else ()), gy)
    uf, Kf = u.detach().float().requires_grad_(), K.detach().float().requires_grad_()
    Df = D.detach().float().requires_grad_() if with_D else None
    for layout in ("blh", "bhl"):
        x = uf if layout == "blh" else uf.detach().transpose(1, 2).contiguous().requires_grad_()
        y = fftconv(x, Kf, Df, layout=layout, method="direct")
        y_blh = y if layout == "blh" else y.transpose(1, 2)
        assert y.is_contiguous() and y.dtype == torch.float32
        assert_close_to_reference(y_blh.double(), want, 1e-6, f"{layout} output")
        grads = torch.autograd.grad(y_blh, (x, Kf) + ((Df,) if with_D else ()), gy.float())
        gx = grads[0] if layout == "blh" else grads[0].transpose(1, 2)
        for name, got, ref in zip(("u", "K", "D"), (gx,) + grads[1:], want_grads):
            assert_close_to_reference(got.double(), ref, 1e-6, f"{layout} grad {name}")


@needs_native
def test_direct_sum_is_the_same_for_any_thread_count_and_auto_picks_it_for_short_sequences():
    # every output is one sum in a fixed order, whichever thread computes it
    g = torch.Generator().manual_seed(5)
    u = torch.randn(5, 23, 40, generator=g, requires_grad=True)
    K = torch.randn(40, 23, generator=g, requires_grad=True)
    gy = torch.randn(5, 23, 40, generator=g)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = fftconv(u, K, method="direct")
            results.append((y,) + torch.autograd.grad(y, (u, K), gy))
    finally:
        torch.set_num_threads(old)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))
    with torch.no_grad():
        assert torch.equal(fftconv(u, K), results[0][0])           # auto, L = 23: direct
        long_u = torch.randn(2, DIRECT_MAX_LEN + 1, 40, generator=g)
        long_K = torch.randn(40, DIRECT_MAX_LEN + 1, generator=g)
        assert torch.equal(fftconv(long_u, long_K), fftconv(long_u, long_K, method="fft"))  # auto: FFT
        assert not torch.equal(fftconv(u, K, method="fft"), results[0][0])  # the two routes differ in rounding


def test_method_is_checked_and_direct_refuses_what_it_cannot_run():
    u, K = torch.randn(2, 5, 3), torch.randn(3, 5)
    with raises_naming(ValueError, "method"):
        fftconv(u, K, method="fast")
    with raises_naming(ValueError, "method"):
        fftconv(u.double(), K.double(), method="direct")  # float64 has only the FFT route
    # float64 under "auto" takes the FFT route, exact to 1e-12
    assert_close_to_reference(fftconv(u.double(), K.double()), causal_conv_ref(u.double(), K.double()), 1e-12)

"""ssmkit.ops.rfft: the real FFT with a one-irfft backward, against torch's own autograd."""
import pytest
import torch

from helpers import raises_naming
from ssmkit.ops.rfft import rfft


@pytest.mark.parametrize("L,n", [(8, 8), (7, 7), (5, 8), (9, 6), (1, 1), (2, 2), (1, 4), (300, 257)])
def test_values_and_gradient_equal_torch_rfft(L, n):
    """Even and odd n (with and without a Nyquist bin), x shorter than n (zero padding) and
    longer (cropped): the same spectrum, and the same gradient to float64 rounding."""
    torch.manual_seed(L * 31 + n)
    x = torch.randn(2, 3, L, dtype=torch.float64, requires_grad=True)
    G = torch.randn(2, 3, n // 2 + 1, dtype=torch.complex128)
    X = rfft(x, n)
    assert torch.equal(X, torch.fft.rfft(x.detach(), n=n))
    got = torch.autograd.grad(X, x, G)[0]
    want = torch.autograd.grad(torch.fft.rfft(x, n=n), x, G)[0]
    assert got.shape == x.shape
    assert float((got - want).abs().max()) < 1e-12 * max(1.0, float(want.abs().max()))


def test_gradcheck():
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rfft(t, 6), (x,))
    assert torch.autograd.gradcheck(lambda t: rfft(t, 5), (x,))


def test_bad_input_named():
    with raises_naming(ValueError, "n"):
        rfft(torch.randn(3, 4, requires_grad=True), 0)
    with raises_naming(TypeError, "x"):
        rfft(torch.arange(4), 4)
    with raises_naming(ValueError, "x"):
        rfft(torch.tensor(1.0), 4)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 1024])
def test_bin_weights_count_each_frequency_once(n):
    # bin k of a length-n rfft stands for frequencies k and n - k: the weights sum to n, and
    # summing c_k |X_k|^2 gives Parseval's n Σ x² for a real signal
    from ssmkit.ops.rfft import bin_weights

    c = bin_weights(n, dtype=torch.float64)
    assert c.shape == (n // 2 + 1,) and float(c.sum()) == n
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    X = torch.fft.rfft(x)
    torch.testing.assert_close((c * X.abs() ** 2).sum(), n * (x ** 2).sum(), rtol=1e-12, atol=1e-12)
    with raises_naming(ValueError, "n"):
        bin_weights(0)

"""The native time-invariant diagonal scan (S5's case of linear_scan: one step ``a`` (M) for a
(batch, L, M) input): states and gradients against the plain loop, real and complex, with and
without an initial state, and the torch path it replaces."""
import pytest
import torch

from ssmkit.ops import _native
from ssmkit.ops import scan as scan_mod
from ssmkit.ops.scan import linear_scan, linear_scan_ref

from helpers import assert_close_to_reference

needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")


def _inputs(dtype, bsz, L, M, with_h0, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    if dtype.is_complex:
        a = torch.polar(torch.rand(M, generator=g, dtype=real) * 0.3 + 0.65,
                        torch.rand(M, generator=g, dtype=real) * 3.0)
        b = torch.complex(torch.randn(bsz, L, M, generator=g, dtype=real), torch.randn(bsz, L, M, generator=g, dtype=real))
        h0 = torch.complex(torch.randn(bsz, M, generator=g, dtype=real), torch.randn(bsz, M, generator=g, dtype=real))
    else:
        a = torch.rand(M, generator=g, dtype=real) * 1.8 - 0.9
        b = torch.randn(bsz, L, M, generator=g, dtype=real)
        h0 = torch.randn(bsz, M, generator=g, dtype=real)
    w = torch.randn(b.shape, generator=g, dtype=real).to(dtype)
    return a.requires_grad_(), b.requires_grad_(), (h0.requires_grad_() if with_h0 else None), w


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("bsz,L,M", [(3, 1, 5), (2, 2, 4), (4, 70, 9)])
@pytest.mark.parametrize("with_h0", [True, False])
def test_native_lti_scan_equals_loop_with_gradients(dtype, bsz, L, M, with_h0):
    a, b, h0, w = _inputs(dtype, bsz, L, M, with_h0)
    assert scan_mod._native_lti_applies(a, b)
    live = [t for t in (a, b, h0) if t is not None]
    hs = linear_scan(a, b, h0)
    ref = linear_scan_ref(a, b, h0)
    assert_close_to_reference(hs, ref, 1e-13, "states")
    loss = lambda h: (h * w.conj()).real.sum() if dtype.is_complex else (h * w).sum()
    got = torch.autograd.grad(loss(hs), live)
    want = torch.autograd.grad(loss(ref), live)
    for name, x, r in zip(["a", "b", "initial_state"], got, want):
        assert_close_to_reference(x, r, 1e-12, f"grad of {name}")


@needs_native
def test_native_lti_scan_float32_matches_torch_path(monkeypatch):
    a, b, h0, w = _inputs(torch.complex64, 3, 150, 16, True, seed=2)
    hs = linear_scan(a, b, h0)
    g1 = torch.autograd.grad((hs * w.conj()).real.sum(), [a, b, h0])
    monkeypatch.setattr(scan_mod, "_native_lti_applies", lambda a, b: False)
    hs2 = linear_scan(a, b, h0)
    g2 = torch.autograd.grad((hs2 * w.conj()).real.sum(), [a, b, h0])
    assert_close_to_reference(hs, hs2, 1e-5, "states")
    for name, x, r in zip(["a", "b", "initial_state"], g1, g2):
        assert_close_to_reference(x, r, 1e-4, f"grad of {name}")

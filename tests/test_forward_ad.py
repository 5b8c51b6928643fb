"""Forward-mode AD and torch.func transforms never lose a tangent silently.

The native kernels have first-order reverse-mode gradients only. Their functions used to call
the kernel directly whenever no input required a gradient, and the dual tensors of forward-mode
AD do not set ``requires_grad``: the result then carried no tangent, a silent wrong answer.
Each entry point must now either give the tangent (by a torch path, checked against a central
difference in float64) or refuse with torch's error for an autograd function without a
forward-mode rule (NotImplementedError), never return a result without one."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from ssmkit.kernels import rational_kernel
from ssmkit.models.mixer import channel_mixer
from ssmkit.ops import fftconv, selective_scan, ssd
from ssmkit.ops.gated_norm import skip_gated_rms_norm
from ssmkit.ops.layer_norm import layer_norm

f64 = torch.float64


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)
    B, L, D, N, H, P = 2, 12, 8, 4, 2, 4
    return {
        "selective_scan": (lambda u, dt, A, Bm, C: _first(selective_scan(u, dt, A, Bm, C)),
                           [r(B, D, L), r(B, D, L).abs(), -r(D, N).abs(), r(B, N, L), r(B, N, L)]),
        "ssd": (lambda x, dt, A, Bm, C: ssd(x, dt, A, Bm, C)[0],
                [r(B, L, H, P), r(B, L, H).abs(), -r(H).abs(), r(B, L, 1, N), r(B, L, 1, N)]),
        "skip_gated_rms_norm": (lambda y, x, Dd, z, w: skip_gated_rms_norm(y, x, Dd, z, w, 8, 1e-5, False),
                                [r(B, L, H, P), r(B, L, H, P), r(H), r(B, L, H * P), r(H * P)]),
        "channel_mixer": (lambda h, W, b: channel_mixer(h, W, b), [r(5, 16), r(32, 16), r(32)]),
        "layer_norm": (lambda x, w, b: layer_norm(x, w, b), [r(5, 16), r(16), r(16)]),
        "rational_kernel": (lambda a, b: rational_kernel(0.1 * a, b, 10), [r(3, 4), r(3, 4)]),
        "fftconv": (lambda u, K: fftconv(u, K), [r(2, 30, 8), r(8, 30)]),
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's forward AD warns about torch.jit.script
@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_tangent_given_or_refused_never_dropped(name, dtype):
    fn, args = _cases()[name]
    args = [a.to(dtype) for a in args]
    g = torch.Generator().manual_seed(1)
    tangents = [torch.randn(a.shape, generator=g, dtype=f64).to(dtype) for a in args]
    try:
        with fwAD.dual_level():
            out = fn(*[fwAD.make_dual(a, t) for a, t in zip(args, tangents)])
            tangent = fwAD.unpack_dual(out).tangent
    except NotImplementedError as e:  # an autograd function without a forward-mode rule: refused, clearly
        assert "jvp" in str(e)
        return
    assert tangent is not None, f"{name}: the result lost its tangent"
    eps = 1e-6  # central difference in float64: error O(eps^2)
    a64, t64 = [a.double() for a in args], [t.double() for t in tangents]
    fd = (fn(*[a + eps * t for a, t in zip(a64, t64)]) - fn(*[a - eps * t for a, t in zip(a64, t64)])) / (2 * eps)
    tol = 1e-6 if dtype == f64 else 1e-3
    assert float((tangent.double() - fd).abs().max()) <= tol * (1 + float(fd.abs().max())), name

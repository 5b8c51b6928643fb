"""The fused channel mixer against the plain GELU -> Linear -> GLU modules."""
import pytest
import torch
from torch import nn

from helpers import assert_close_to_reference, raises_naming, rel_err
from ssmkit.models.mixer import ChannelMixer, channel_mixer
from ssmkit.ops import _native


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


needs_native = pytest.mark.skipif(not _native.available(), reason="native library not built")


def _float64_reference(h, W, b, gy):
    """Values and gradients by the torch composition in float64 (the definition)."""
    h, W, b = (t.detach().double().requires_grad_() for t in (h, W, b))
    y = channel_mixer(h, W, b, method="torch")
    return (y.detach(), *torch.autograd.grad(y, (h, W, b), gy.double()))


@needs_native
@pytest.mark.parametrize("shape", [(6272, 64), (2, 37, 16), (1, 8), (5, 24), (3, 33, 256)])
def test_native_route_matches_the_float64_definition(shape):
    """Row counts that leave partial blocks of 32 and 4 rows, H with and without a tail of 8
    columns, H = 256 (padded rows). float32 against float64: errors of a few 1e-7 of the largest
    entry are float32 rounding over sums of H or 2H terms; 1e-5 leaves room and still catches any
    wrong row, column or term (which would be O(1))."""
    torch.manual_seed(0)
    H = shape[-1]
    h = torch.randn(*shape, requires_grad=True)
    W = (torch.randn(2 * H, H) / H ** 0.5).requires_grad_()
    b = torch.randn(2 * H, requires_grad=True)
    y = channel_mixer(h, W, b, method="native")
    gy = torch.randn(*shape)
    got = (y.detach(), *torch.autograd.grad(y, (h, W, b), gy))
    for name, a, r in zip(("y", "gh", "gW", "gb"), got, _float64_reference(h, W, b, gy)):
        assert a.shape == r.shape and a.dtype == torch.float32, name
        assert rel_err(a.double(), r) < 1e-5, name


@needs_native
def test_native_route_saves_nothing_without_gradients_and_skips_unwanted_ones():
    torch.manual_seed(1)
    h, W, b = torch.randn(40, 16), torch.randn(32, 16), torch.randn(32)
    with torch.no_grad():
        y = channel_mixer(h, W, b, method="native")
    assert rel_err(y.double(), channel_mixer(h.double(), W.double(), b.double())) < 1e-5
    Wg = W.clone().requires_grad_()  # only the weight wants a gradient
    gW, = torch.autograd.grad(channel_mixer(h, Wg, b, method="native").sum(), (Wg,))
    assert rel_err(gW.double(), _float64_reference(h, W, b, torch.ones(40, 16))[2]) < 1e-5
    hg = h.clone().requires_grad_()  # only the input: GELU'(h) saved, no weight gradient formed
    gh, = torch.autograd.grad(channel_mixer(hg, W, b, method="native").sum(), (hg,))
    assert rel_err(gh.double(), _float64_reference(h, W, b, torch.ones(40, 16))[1]) < 1e-5


@needs_native
def test_native_route_gives_the_same_numbers_for_any_thread_count():
    """Each weight-gradient partial covers a fixed chunk of rows and the partials are added in
    chunk order, so the result is bit for bit the same whatever the number of threads."""
    torch.manual_seed(2)
    h = torch.randn(50, 41, 32, requires_grad=True)
    W = torch.randn(64, 32, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    gy = torch.randn(50, 41, 32)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = channel_mixer(h, W, b, method="native")
            outs.append((y.detach(), *torch.autograd.grad(y, (h, W, b), gy)))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        for a, r in zip(other, outs[0]):
            assert torch.equal(a, r)


def test_auto_route_and_method_checked_by_name():
    h, W, b = torch.randn(3, 16), torch.randn(32, 16), torch.randn(32)
    with raises_naming(ValueError, "method"):
        channel_mixer(h, W, b, method="fast")
    with raises_naming(ValueError, "method"):  # the native route is float32 only
        channel_mixer(h.double(), W.double(), b.double(), method="native")
    with raises_naming(ValueError, "method"):  # and needs H a multiple of 8
        channel_mixer(torch.randn(3, 5), torch.randn(10, 5), torch.randn(10), method="native")
    # "auto" agrees with the torch route wherever it runs (float64 always takes the torch route)
    assert torch.equal(channel_mixer(h.double(), W.double(), b.double()),
                       channel_mixer(h.double(), W.double(), b.double(), method="torch"))
    assert rel_err(channel_mixer(h, W, b).double(), channel_mixer(h, W, b, method="torch").double()) < 1e-5


@pytest.mark.parametrize("method", ["torch", "native"])
def test_residual_is_added_in_the_same_call(method):
    if method == "native" and not _native.available():
        pytest.skip("native library not built")
    torch.manual_seed(3)
    h = torch.randn(4, 9, 16, requires_grad=True)
    r = torch.randn(4, 9, 16, requires_grad=True)
    W, b = torch.randn(32, 16, requires_grad=True), torch.randn(32, requires_grad=True)
    gy = torch.randn(4, 9, 16)
    y = channel_mixer(h, W, b, residual=r, method=method)
    got = (y.detach(), *torch.autograd.grad(y, (h, W, b, r), gy))
    y0 = r + channel_mixer(h, W, b, method=method)
    want = (y0.detach(), *torch.autograd.grad(y0, (h, W, b, r), gy))
    for a, e in zip(got, want):
        assert rel_err(a, e) < 1e-6
    assert torch.equal(got[-1], gy)  # the residual's gradient is the output's
    with raises_naming(ValueError, "residual"):
        channel_mixer(h, W, b, residual=r[:, :3], method=method)
    with raises_naming(ValueError, "residual"):
        channel_mixer(h, W, b, residual=r.double(), method=method)


def test_module_residual_in_another_dtype_is_added_after():
    """A float32 residual stream around a float64 mixer: not fused, the sum as before."""
    torch.manual_seed(4)
    m = ChannelMixer(8).double()
    h, r = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8)
    y = m(h, residual=r)
    assert y.dtype == torch.float64 and torch.equal(y, r + m(h))
    with raises_naming(ValueError, "residual"):  # no broadcasting
        m(h, residual=r[:1])


@needs_native
def test_native_route_stays_finite_where_the_gate_saturates():
    """Pre-activations far below -88 (float32's exp overflows there): σ(s) is 0 to float32, and
    the native kernel (compiled with -ffast-math, where 1 / (1 + inf) is NaN) must give the
    definition's finite values, as the torch route does. Found in training: an RTF model at
    L = 4096 reached activations of 1e3 and the native mixer returned NaN."""
    torch.manual_seed(0)
    H = 16
    h = (300 * torch.randn(50, H)).requires_grad_()
    W = (0.5 * torch.randn(2 * H, H)).requires_grad_()
    b = torch.randn(2 * H, requires_grad=True)
    s = torch.nn.functional.gelu(h.detach().double()) @ W.detach().double()[H:].t() + b.detach().double()[H:]
    assert float(s.min()) < -500 and float(h.detach().abs().max()) > 400  # saturated gates, huge GELU inputs
    y = channel_mixer(h, W, b, method="native")
    gy = torch.randn(50, H)
    got = (y.detach(), *torch.autograd.grad(y, (h, W, b), gy))
    for name, a, r in zip(("y", "gh", "gW", "gb"), got, _float64_reference(h, W, b, gy)):
        assert bool(torch.isfinite(a).all()), name
        assert rel_err(a.double(), r) < 1e-5, name


@needs_native
def test_native_gelu_and_its_derivative_elementwise_over_the_whole_range():
    """The kernel's own GELU and GELU' (inlined Phi and exp, ops/_native/native_common.h),
    exposed elementwise: with W = [I; 0] and the gate's bias at 100 (σ = 1 in float32) the
    mixer's output is GELU(h) and its gradient GELU'(h) · gy, with no other rounding. Against
    the float64 definition, value by value: relative error below 1e-6 + 6e-8 x², the second term
    being the float32 rounding of x² inside exp(-x²/2) (for |x| <= 13, up to ~5e-6 where GELU is
    below 1e-30 in size); beyond |x| = 13 the tail (below 1e-36) is returned as 0. GELU' = Φ + xφ
    crosses zero near x = -0.75, where its two float32 terms (~0.23 each, one ulp 1.5e-8) cancel:
    there the bound is absolute, 1e-7."""
    H = 16
    x = torch.cat([torch.linspace(-14, 14, 28001), torch.tensor([0.0, -1e-30, 1e-30, 30.0, -30.0, 1e4, -1e4])])
    x = torch.cat([x, torch.zeros((-len(x)) % H)])
    h = x.reshape(-1, H).clone().requires_grad_()
    W = torch.cat([torch.eye(H), torch.zeros(H, H)])
    b = torch.cat([torch.zeros(H), torch.full((H,), 100.0)])
    y = channel_mixer(h, W, b, method="native")
    (gh,) = torch.autograd.grad(y, h, torch.ones_like(y))
    xd = x.double()
    Phi = 0.5 * torch.special.erfc(-xd / 2 ** 0.5)
    ref_y = xd * Phi
    ref_d = Phi + xd * torch.exp(-0.5 * xd * xd) / (2 * torch.pi) ** 0.5
    tol = 1e-6 + 6e-8 * xd * xd
    near = xd.abs() <= 13
    for name, got, ref, cancel in (("GELU", y.detach().reshape(-1), ref_y, 0.0),
                                   ("GELU'", gh.reshape(-1), ref_d, 1e-7)):
        err = (got.double() - ref).abs()
        assert bool((err[near] <= tol[near] * ref[near].abs() + cancel).all()), name
        assert bool((err[~near] <= 1e-36 + 1e-7 * ref[~near].abs()).all()), name

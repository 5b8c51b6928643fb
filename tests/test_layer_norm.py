"""LayerNorm over the last dimension (ssmkit.ops.layer_norm) with its native float32 CPU kernel:
the output and the gradients of x, weight and bias against torch's F.layer_norm in float64
(many shapes, partial blocks, H not a multiple of 8, H = 1, no rows, a large mean, every
weight/bias combination), gradients only where asked, the no-grad path, strided inputs,
bit-identical results for 1 and 2 threads, the fallback for other dtypes, and the
``ssmkit.models.backbone.LayerNorm`` module (state dict, errors, eps, inside a Backbone).

Tolerances (``rel_err``: max-abs error over the float64 reference's max-abs value):
float32 against float64 gives, for unit-scale data, errors of a few float32 ulps
(2^-24 ≈ 6e-8) times the growth of sums over H columns or over up to a few thousand rows
(summed in blocks of 64): a few 1e-7 of the largest entry. 1e-5 leaves more than 10x room and
still catches any wrong term, row or column (O(1) errors) and a biased variance (÷(H-1): a
relative error 1/(2H) >= 2e-3 at the widths used here)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssmkit.ops.layer_norm as ln_mod
from ssmkit.models.backbone import Backbone, LayerNorm, make_norm
from ssmkit.ops import _native
from ssmkit.ops.layer_norm import layer_norm

from helpers import assert_close_to_reference, rel_err

needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")
TOL = 1e-5  # float32 against float64 (module docstring)
AFFINE = [(True, True), (True, False), (False, True), (False, False)]  # (weight, bias) present
NAMES = ("y", "grad x", "grad weight", "grad bias")


def _operands(shape, has_w=True, has_b=True, mean=0.0, seed=0):
    """float32 leaves x (shape), weight, bias (H,) (or None), and an output gradient gy."""
    g = torch.Generator().manual_seed(seed)
    H = shape[-1]
    x = (mean + torch.randn(*shape, generator=g)).requires_grad_()
    w = (1 + 0.5 * torch.randn(H, generator=g)).requires_grad_() if has_w else None
    b = torch.randn(H, generator=g).requires_grad_() if has_b else None
    gy = torch.randn(*shape, generator=g)
    return x, w, b, gy


def _leaves(x, w, b):
    return [t for t in (x, w, b) if t is not None]


def _grads(fn, x, w, b, gy, eps=1e-5):
    """fn's output and the gradients of x, weight, bias (None for an absent parameter)."""
    y = fn(x, w, b, eps)
    got = iter(torch.autograd.grad(y, _leaves(x, w, b), gy))
    return [y.detach()] + [None if t is None else next(got) for t in (x, w, b)]


def _native_ln(x, w, b, eps):
    assert ln_mod._native_applies(x, w, b)  # the native kernel is what runs
    y = layer_norm(x, w, b, eps)
    assert type(y.grad_fn).__name__.startswith("_NativeLayerNorm")
    return y


def _float64_ref(x, w, b, gy, eps=1e-5):
    """The definition: torch's F.layer_norm on float64 copies of the same float32 numbers."""
    c = lambda t: None if t is None else t.detach().double().requires_grad_()
    fn = lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps)
    return _grads(fn, c(x), c(w), c(b), gy.double(), eps)


def _check(got, want, tol, tols=None):
    tols = tols or {}
    for name, a, r in zip(NAMES, got, want):
        assert (a is None) == (r is None), name
        if a is not None:
            assert a.dtype == torch.float32, name
            assert_close_to_reference(a.double(), r, tols.get(name, tol), name)


# --- 1. forward and the three gradients against the float64 definition --------------------------

SHAPES = [
    (32, 196, 64),  # a training step's activations: 6272 rows, 98 blocks of 64
    (3, 5, 8),      # 15 rows: one partial block; H one vector
    (4, 257),       # H not a multiple of 8 (16-wide loop, 8-wide loop, scalar tail)
    (5, 3),         # H below one vector: the scalar loop only
    (7, 1),         # H = 1: x̂ = 0, y = bias, grad x = 0
    (1, 37),        # a single row
    (19,),          # a single row, 1-D
    (2, 0, 4),      # no rows
    (130, 24),      # 3 blocks, the last of 2 rows
]


@needs_native
@pytest.mark.parametrize("has_w,has_b", AFFINE)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_native_matches_float64_definition(shape, has_w, has_b):
    x, w, b, gy = _operands(shape, has_w, has_b)
    got = _grads(_native_ln, x, w, b, gy)
    assert got[0].shape == x.shape and got[1].shape == x.shape
    want = _float64_ref(x, w, b, gy)
    tols = {}
    if shape[-1] == 1:
        # A zero-variance row: x̂ = 0 exactly, so y = bias exactly; grad x is 0 by definition but
        # in float32 it is rstd · (gy·w - mean(gy·w)), a difference of two roundings of gy·w
        # (relative 2^-24 each; fused or not) times rstd = eps^-1/2 ≈ 316. torch's own float32
        # LayerNorm gives the same kind of noise. Bound (absolute, the reference being 0):
        # 4 · 2^-24 · rstd · max|gy·w|.
        assert torch.equal(got[0], (b.detach() if has_b else torch.zeros(1)).expand(shape))
        gw_ = gy * (w.detach() if has_w else 1.0)
        tols["grad x"] = 4 * 2.0 ** -24 * 1e-5 ** -0.5 * float(gw_.abs().max())
        assert not torch.any(want[1])
        if has_w:  # Σ gy·x̂ = 0 exactly (float64's own rounding leaves ~1e-14 there, a relative error of 1)
            want[2] = torch.zeros(1, dtype=torch.float64)
            tols["grad weight"] = 0.0
    _check(got, want, TOL, tols)
    if 0 in shape:  # no rows: empty y and grad x, zero parameter gradients
        for t in got[2:]:
            assert t is None or torch.equal(t, torch.zeros(shape[-1]))


@needs_native
@pytest.mark.parametrize("has_w,has_b", [(True, True), (False, False)])
@pytest.mark.parametrize("shape", [(64, 64), (40, 257), (9, 5)], ids=str)
def test_large_mean_uses_two_pass_variance(shape, has_w, has_b):
    """x = 1000 + N(0, 1). In float32 the mean itself carries a rounding error of order
    1000 · 2^-24 · (a few) ≈ 1e-4 (torch's own float32 LayerNorm has the same), which moves
    every x - mean, so y and grad x get errors of that order relative to their O(1) size: 5e-4
    is the justified bound (the parameter-bias gradient, a plain sum of gy, keeps 1e-5). A
    one-pass variance E[x²] - E[x]² loses the whole variance to cancellation here
    (E[x²] ≈ 1e6, whose float32 ulp is 0.06 against a variance of 1): errors of 1e-2 or
    more, NaN or inf (a negative variance)."""
    x, w, b, gy = _operands(shape, has_w, has_b, mean=1000.0, seed=3)
    got = _grads(_native_ln, x, w, b, gy)
    want = _float64_ref(x, w, b, gy)
    _check(got, want, 5e-4, {"grad bias": TOL})
    # and no worse than a few times torch's own float32 LayerNorm on the same numbers
    torch_err = rel_err(F.layer_norm(x.detach(), shape[-1:]).double(), F.layer_norm(x.detach().double(), shape[-1:]))
    assert rel_err(layer_norm(x.detach()).double(), F.layer_norm(x.detach().double(), shape[-1:])) <= 4 * torch_err + 1e-6


# --- 2. gradients only where they are asked for -----------------------------------------------

@needs_native
@pytest.mark.parametrize("wanted", [("x",), ("weight",), ("bias",), ("x", "bias"), ("weight", "bias")])
def test_only_requested_gradients(wanted):
    """Leaves that do not require grad get no gradient (.grad stays None); the others are right."""
    x, w, b, gy = _operands((70, 24), seed=5)
    want = _float64_ref(x, w, b, gy)
    leaves = dict(x=x, weight=w, bias=b)
    for name, t in leaves.items():
        t.requires_grad_(name in wanted)
    y = _native_ln(x, w, b, 1e-5)
    y.backward(gy)
    for name, r in zip(("x", "weight", "bias"), want[1:]):
        g = leaves[name].grad
        if name in wanted:
            assert_close_to_reference(g.double(), r, TOL, f"grad {name}")
        else:
            assert g is None, name


@needs_native
def test_weight_gradient_without_bias_parameter():
    """A weight but no bias, and only the weight requires grad: the weight's gradient is right."""
    x, w, _, gy = _operands((66, 16), has_b=False, seed=6)
    x.requires_grad_(False)
    want = _float64_ref(x, w, None, gy)
    gw, = torch.autograd.grad(_native_ln(x, w, None, 1e-5), (w,), gy)
    assert_close_to_reference(gw.double(), want[2], TOL, "grad weight")


# --- 3. the no-grad path is the grad path's forward ----------------------------------------------

@needs_native
@pytest.mark.parametrize("has_w,has_b", AFFINE)
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_no_grad_path_equals_grad_path_exactly(has_w, has_b, eps):
    x, w, b, _ = _operands((3, 45, 40), has_w, has_b, seed=7)
    y_grad = layer_norm(x, w, b, eps)
    assert y_grad.grad_fn is not None
    with torch.no_grad():
        y_nograd = layer_norm(x, w, b, eps)
    with torch.inference_mode():
        y_inf = layer_norm(x, w, b, eps)
    plain = [None if t is None else t.detach() for t in (x, w, b)]  # nothing requires grad
    y_plain = layer_norm(*plain, eps)
    for y in (y_nograd, y_inf, y_plain):
        assert y.grad_fn is None
        assert torch.equal(y, y_grad.detach())
    _check([y_plain], _float64_ref(x, w, b, torch.zeros(x.shape), eps)[:1], TOL)


# --- 4. strided inputs -------------------------------------------------------------------------

@needs_native
def test_non_contiguous_input_and_output_gradient():
    """x is a transposed view (its last dimension has stride 7), the output gradient another
    transposed view, weight a strided slice: the same numbers as contiguous copies."""
    g = torch.Generator().manual_seed(8)
    base = torch.randn(4, 48, 7, generator=g)
    x = base.transpose(1, 2).requires_grad_()  # (4, 7, 48), stride(-1) == 7
    assert not x.is_contiguous() and x.stride(-1) == 7
    wbase = (1 + 0.5 * torch.randn(96, generator=g)).requires_grad_()
    w = wbase[::2]
    b = torch.randn(48, generator=g).requires_grad_()
    gy = torch.randn(4, 48, 7, generator=g).transpose(1, 2)
    y = _native_ln(x, w, b, 1e-5)
    gx, gwbase, gb = torch.autograd.grad(y, (x, wbase, b), gy)
    got = [y.detach(), gx, gwbase[::2], gb]
    assert torch.equal(gwbase[1::2], torch.zeros(48))
    _check(got, _float64_ref(x, w, b, gy), TOL)
    with torch.no_grad():
        assert torch.equal(layer_norm(x, w, b), y.detach())


# --- 5. the same bits for any thread count --------------------------------------------------------

@needs_native
def test_bad_input_is_named():
    x = torch.randn(3, 8)
    for args, kind, name in [((3,), TypeError, "x"), ((torch.ones(3, 8, dtype=torch.long),), TypeError, "x"),
                             ((torch.tensor(1.0),), ValueError, "x"), ((x, torch.ones(8, dtype=torch.float64)), TypeError, "weight"),
                             ((x, None, torch.ones(5)), ValueError, "bias")]:
        for fn in (layer_norm, ln_mod.layer_norm_with_skip):
            with pytest.raises(kind, match=name):
                fn(*args)
    for eps in (-1.0, 0.0, float("nan"), "a"):
        with pytest.raises((ValueError, TypeError), match="eps"):
            layer_norm(x, eps=eps)


def test_bit_identical_for_one_and_two_threads():
    """1000 rows of 64: 16 blocks of the backward's weight/bias partial sums (the last of 40
    rows), added in block order, so 1 and 2 threads give the same bits (and so do repeats)."""
    x, w, b, gy = _operands((1000, 64), seed=9)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 2, 1):
            torch.set_num_threads(n)
            runs.append(_grads(_native_ln, x, w, b, gy))
            with torch.no_grad():
                runs[-1].append(layer_norm(x, w, b))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for other in runs[1:]:
        for a, r in zip(other, runs[0]):
            assert torch.equal(a, r)
    _check(runs[0][:4], _float64_ref(x, w, b, gy), TOL)


# --- 6. torch's function everywhere else ----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("has_w,has_b", [(True, True), (False, False)])
def test_other_dtypes_fall_back_to_torch(dtype, has_w, has_b):
    x, w, b, gy = _operands((6, 11, 24), has_w, has_b, seed=10)
    x, w, b = (None if t is None else t.detach().to(dtype).requires_grad_() for t in (x, w, b))
    gy = gy.to(dtype)
    assert not ln_mod._native_applies(x, w, b)
    ref = lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps)
    got, want = _grads(lambda *a: layer_norm(*a), x, w, b, gy), _grads(ref, x, w, b, gy)
    assert got[0].dtype == dtype
    for name, a, r in zip(NAMES, got, want):
        assert (a is None) == (r is None), name
        if a is not None:
            assert torch.equal(a, r), name


def test_autocast_and_mismatched_parameters_fall_back_to_torch():
    x, w, b, _ = _operands((5, 16), seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ln_mod._native_applies(x, w, b)
        assert torch.equal(layer_norm(x, w, b), F.layer_norm(x, (16,), w, b))
    with pytest.raises(ValueError, match="weight"):  # a weight of the wrong width, named
        layer_norm(x, w[:8], b)


# --- 7. the LayerNorm module ------------------------------------------------------------------------

def _randomised(m, seed=12):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def test_module_state_dict_interchanges_with_nn_layernorm():
    ours, theirs = _randomised(LayerNorm(24), 12), _randomised(nn.LayerNorm(24), 13)
    assert isinstance(make_norm("layer", 24), LayerNorm)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 10, 24, generator=torch.Generator().manual_seed(14))
    # theirs -> ours
    ours.load_state_dict(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    with torch.no_grad():
        assert_close_to_reference(ours(x).double(), theirs(x).double(), TOL)
    # ours -> a fresh nn.LayerNorm
    fresh = nn.LayerNorm(24)
    _randomised(ours, 15)
    fresh.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert_close_to_reference(fresh(x).double(), ours(x).double(), TOL)
    # no bias: only a weight, both ways
    nb, tnb = _randomised(LayerNorm(24, bias=False), 16), nn.LayerNorm(24, bias=False)
    assert list(nb.state_dict()) == ["weight"]
    tnb.load_state_dict(nb.state_dict())
    nb.load_state_dict(tnb.state_dict())
    with torch.no_grad():
        assert_close_to_reference(nb(x).double(), tnb(x).double(), TOL)


def test_module_wrong_width_raises():
    with pytest.raises(RuntimeError):
        LayerNorm(8)(torch.randn(2, 7))
    with pytest.raises(RuntimeError):
        LayerNorm(8)(torch.randn(2, 3, 16))


@needs_native
@pytest.mark.parametrize("affine", [True, False])
def test_module_native_path_equals_nn_layernorm(affine, monkeypatch):
    """The module's forward runs the native kernel (counted) and gives nn.LayerNorm's output
    and gradients within float32 rounding."""
    ours = _randomised(LayerNorm(40, elementwise_affine=affine), 17)
    theirs = nn.LayerNorm(40, elementwise_affine=affine)
    theirs.load_state_dict(ours.state_dict())
    calls = []
    real = ln_mod._NativeLayerNorm.apply
    monkeypatch.setattr(ln_mod._NativeLayerNorm, "apply", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(5, 33, 40, generator=torch.Generator().manual_seed(18), requires_grad=True)
    gy = torch.randn(5, 33, 40, generator=torch.Generator().manual_seed(19))
    res = []
    for m in (ours, theirs):
        y = m(x)
        res.append([y.detach(), *torch.autograd.grad(y, [x, *m.parameters()], gy)])
    assert calls == [1]
    for name, a, r in zip(NAMES, *res):
        assert_close_to_reference(a.double(), r.double(), TOL, name)


@needs_native
def test_module_honours_eps():
    """eps = 1 (against a variance of about 4) changes the result by about 10%, and the result
    is the float64 definition's with eps = 1 (grad path and no-grad path)."""
    m = _randomised(LayerNorm(32, eps=1.0), 20)
    x = 2 * torch.randn(6, 32, generator=torch.Generator().manual_seed(21))
    x.requires_grad_()
    gy = torch.randn(6, 32, generator=torch.Generator().manual_seed(22))
    y = m(x)
    gx, gw, gb = torch.autograd.grad(y, (x, m.weight, m.bias), gy)
    want = _float64_ref(x, m.weight, m.bias, gy, eps=1.0)
    _check([y.detach(), gx, gw, gb], want, TOL)
    with torch.no_grad():
        assert torch.equal(m(x), y.detach())
        small = F.layer_norm(x.double(), (32,), m.weight.double(), m.bias.double(), 1e-5)
    assert rel_err(y.detach().double(), small) > 1e-2


def test_backbone_with_layer_norm_uses_the_module():
    torch.manual_seed(0)
    model = Backbone(16, 2, "s4d", d_input=1, norm="layer")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 3  # one per block and the final one
    assert all(type(m) is LayerNorm for m in norms)
    assert type(model.norm) is LayerNorm and all(type(b.norm) is LayerNorm for b in model.blocks)


# --- 8. native against torch's path: a training-shape tensor and a model ------------------------

@needs_native
def test_native_and_torch_paths_agree_on_training_shape(monkeypatch):
    x, w, b, gy = _operands((32, 196, 64), seed=23)
    native = _grads(_native_ln, x, w, b, gy)
    monkeypatch.setattr(ln_mod, "_native_applies", lambda *a: False)
    torch_path = _grads(layer_norm, x, w, b, gy)
    assert torch_path[0].dtype == torch.float32
    for name, a, r in zip(NAMES, native, torch_path):
        assert_close_to_reference(a.double(), r.double(), TOL, name)


@needs_native
def test_backbone_gradients_native_against_torch_layer_norm(monkeypatch, one_thread):
    """A 2-layer s4d Backbone: loss gradients of every parameter with the native LayerNorm
    (counted: 3 calls) and with torch's (``_native_applies`` forced False). Both are float32;
    the LayerNorm outputs differ by float32 rounding (~1e-7 relative) and the model amplifies
    that little: 1e-4 relative per parameter is a generous bound that a wrong LayerNorm
    gradient (O(1)) cannot meet."""
    torch.manual_seed(24)
    model = Backbone(64, 2, "s4d", d_input=1, norm="layer")
    for m in model.modules():
        if isinstance(m, LayerNorm):
            _randomised(m, 25)
            with torch.no_grad():
                m.weight.add_(2.0)  # keep the gains away from 0
    x = torch.randn(4, 128, 1, generator=torch.Generator().manual_seed(26))
    target = torch.randn(4, 128, 64, generator=torch.Generator().manual_seed(27))
    calls = []
    real = ln_mod._NativeLayerNorm.apply
    monkeypatch.setattr(ln_mod._NativeLayerNorm, "apply", lambda *a: calls.append(1) or real(*a))

    def loss_and_grads():
        model.zero_grad()
        out = model(x)
        loss = ((out - target) ** 2).mean()
        loss.backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_native, g_native = loss_and_grads()
    assert len(calls) == 3
    monkeypatch.setattr(ln_mod, "_native_applies", lambda *a: False)
    out_torch, g_torch = loss_and_grads()
    assert len(calls) == 3  # the torch path did not call the native Function
    assert_close_to_reference(out_native.double(), out_torch.double(), TOL)
    assert set(g_native) == set(g_torch) and len(g_native) > 6
    for name in g_native:
        assert_close_to_reference(g_native[name].double(), g_torch[name].double(), 1e-4, f"grad {name}")


def test_zero_width_returns_an_empty_result():
    """H = 0: torch's function runs (an empty result, as nn.LayerNorm(0) gives), no reshape error."""
    x = torch.randn(3, 0)
    assert layer_norm(x).shape == (3, 0)
    assert LayerNorm(0)(x).shape == (3, 0)


@needs_native
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's forward AD warns about torch.jit.script
def test_forward_mode_ad_keeps_the_tangent():
    """Under forward-mode AD the torch function runs: the tangent is the JVP of LayerNorm, not dropped."""
    import torch.autograd.forward_ad as fwAD
    x, w, b, _ = _operands((5, 16))
    x, w, b = x.detach().double(), w.detach().double(), b.detach().double()
    t = torch.randn_like(x)
    with fwAD.dual_level():  # the reference: torch's forward-mode rule in float64
        ref = fwAD.unpack_dual(F.layer_norm(fwAD.make_dual(x, t), (16,), w, b)).tangent
    with fwAD.dual_level():
        d = fwAD.make_dual(x.float(), t.float())
        tangent = fwAD.unpack_dual(layer_norm(d, w.float(), b.float())).tangent
    assert tangent is not None
    assert rel_err(tangent, ref) < TOL


@needs_native
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.func's first use warns about torch.jit.script
def test_torch_func_transforms_use_torch():
    """torch.func.grad and vmap run torch's function (the native one has no vmap rule): correct results."""
    x, w, b, _ = _operands((4, 8))
    x, w, b = x.detach(), w.detach(), b.detach()
    g = torch.func.grad(lambda x: layer_norm(x, w, b).pow(2).sum())(x)
    xr = x.double().requires_grad_()
    F.layer_norm(xr, (8,), w.double(), b.double()).pow(2).sum().backward()
    assert rel_err(g, xr.grad) < TOL
    v = torch.vmap(lambda r: layer_norm(r, w, b))(x)
    assert rel_err(v, F.layer_norm(x.double(), (8,), w.double(), b.double())) < TOL


@needs_native
@pytest.mark.parametrize("used", ["both", "norm", "skip"])
def test_layer_norm_with_skip_adds_the_residual_gradient(used):
    """``layer_norm_with_skip`` returns (LayerNorm(x), x); the gradient of the second output joins
    x's inside the norm's backward: against float64 autograd of ``LN(x)·gy + x·gs``, with either
    output unused (its gradient absent)."""
    x, w, b, gy = _operands((6, 40, 16))
    gs = torch.randn(gy.shape, generator=torch.Generator().manual_seed(3))
    y, xs = ln_mod.layer_norm_with_skip(x, w, b)
    assert type(y.grad_fn).__name__.startswith("_NativeLayerNorm") and torch.equal(xs, x)
    loss = {"both": (y * gy).sum() + (xs * gs).sum(), "norm": (y * gy).sum(), "skip": (xs * gs).sum()}[used]
    got = torch.autograd.grad(loss, (x, w, b), allow_unused=True)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = F.layer_norm(xr, (16,), wr, br)
    ref_loss = {"both": (yr * gy.double()).sum() + (xr * gs.double()).sum(), "norm": (yr * gy.double()).sum(),
                "skip": (xr * gs.double()).sum()}[used]
    want = torch.autograd.grad(ref_loss, (xr, wr, br), allow_unused=True)
    for name, a, r in zip(("x", "weight", "bias"), got, want):
        if r is None or used == "skip" and name != "x":
            assert a is None or float(a.abs().max()) == 0.0, name
        else:
            assert rel_err(a, r) < TOL, name


@needs_native
def test_block_routes_its_residual_through_the_norm(monkeypatch):
    """A pre-norm LayerNorm block uses layer_norm_with_skip; the model's gradients equal those with
    the residual summed by autograd (the skip replaced by the plain norm)."""
    import ssmkit.models.backbone as bb
    torch.manual_seed(0)
    model = Backbone(16, 2, "s4d", d_input=3)
    x = torch.randn(2, 30, 3)
    calls = []
    real = bb.layer_norm_with_skip
    monkeypatch.setattr(bb, "layer_norm_with_skip", lambda *a: calls.append(1) or real(*a))
    model(x).square().sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(calls) == 2  # one per block
    model.zero_grad()
    monkeypatch.setattr(bb, "layer_norm_with_skip", lambda x, w, b, eps: (layer_norm(x, w, b, eps), x))
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        assert rel_err(fused[n], p.grad) < 1e-5, n


@needs_native
@pytest.mark.parametrize("scale", [1e19, 1e20, 1e36])
def test_huge_rows_stay_finite_and_exact(scale):
    """Rows whose squares (1e19 and up) or sums (1e36 and up) overflow float32: the native
    kernel retakes those sums in double (under -ffast-math 1 / sqrt(inf) would be NaN) and
    matches the float64 definition, where torch's float32 LayerNorm is off by O(1) or NaN."""
    g = torch.Generator().manual_seed(7)
    x = scale * torch.randn(5, 64, generator=g)
    want = F.layer_norm(x.double(), (64,))
    got = _native_ln(x.clone().requires_grad_(), None, None, 1e-5).detach()
    assert bool(torch.isfinite(got).all())
    assert rel_err(got, want) < TOL


@needs_native
def test_nan_and_inf_rows_give_nan_rows_like_torch():
    """Refused by name at the public entry; inside a model (trusted_inputs, no value checks) the
    kernel propagates them as torch does."""
    from ssmkit._checks import trusted_inputs
    x = torch.randn(3, 64)
    x[1, 5], x[2, 7] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="x contains NaN"):
        layer_norm(x)
    with trusted_inputs():
        got, want = layer_norm(x), F.layer_norm(x, (64,))
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and bool(torch.isnan(got[1:]).all())
    assert torch.allclose(got[0], want[0], atol=1e-6)

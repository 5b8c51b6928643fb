"""S4, S4D and RTF layers: the convolution view equals the recurrence, gradients, conversions,
initial state and padding masks, optimizer hints, errors."""
import itertools

import pytest
import torch

from ssmkit.kernels import naive_kernel
from ssmkit.layers import RTF, S4, S4D, get_layer, get_optim_hints
from ssmkit.layers.base import run_steps
from ssmkit.lti import companion, poly_from_roots
from ssmkit.ops import fftconv
from helpers import raises_naming

f64 = torch.float64

# every S4D init with every discretization, RTF with each init and the l1 constraint, S4 with
# each measure; the ones with l_max < 19 also run inputs longer than l_max.
S4D_ALL = [("s4d", dict(d_state=d, init=i, discretization=z))
           for (i, z), d in zip(itertools.product(("legs", "lin", "inv", "real"), ("zoh", "bilinear")), (8, 6, 4, 2) * 2)]
CONFIGS = S4D_ALL + [
    ("rtf", dict(d_state=5, l_max=19, init="montel")),
    ("rtf", dict(d_state=4, l_max=19, init="zeros")),
    ("rtf", dict(d_state=3, l_max=7, init="montel", constraint="l1")),
    ("rtf", dict(d_state=4, l_max=19, init="montel", constraint="l1", active=True)),
    ("s4", dict(d_state=8, measure="legs", l_max=19)),
    ("s4", dict(d_state=6, measure="legt", l_max=19)),
    ("s4", dict(d_state=4, measure="legs", l_max=7)),  # inputs longer than l_max
]
IDS = [f"{n}-" + "-".join(str(v) for v in kw.values()) for n, kw in CONFIGS]


def make(name, kw, H=3, dtype=f64, seed=0):
    torch.manual_seed(seed)
    kw = dict(kw)
    active = kw.pop("active", False)
    layer = get_layer(name)(H, **kw).to(dtype)
    if active:  # Σ|a| = 2: the l1 constraint rescales a (and its gradient flows through the rescaling)
        with torch.no_grad():
            layer.a.mul_(2 / layer.a.abs().sum(-1, keepdim=True))
        assert float(layer.denominator().detach().abs().sum(-1).max()) < 1 < float(layer.a.detach().abs().sum(-1).min())
    return layer


def steps(layer, x, state=None):
    with torch.no_grad():
        return run_steps(layer, x, state)


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_forward_equals_step(name, kw, dtype, tol):
    # float32: the FFT and the recurrence round differently; errors ~1e-6 relative over 19 steps
    layer = make(name, kw, dtype=dtype)
    x = torch.randn(2, 19, 3, dtype=dtype)
    with torch.no_grad():
        y, s = layer(x, return_state=True)
    ys, ss = steps(layer, x)
    assert y.dtype == ys.dtype == dtype
    assert float((y - ys).abs().max() / ys.abs().max()) < tol
    assert float((s - ss).abs().max() / ss.abs().max()) < tol


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_forward_equals_fftconv_of_kernel_and_naive_kernel(name, kw):
    layer = make(name, kw)
    L = 19
    x = torch.randn(2, L, 3, dtype=f64)
    with torch.no_grad():
        K = layer.kernel(L)
        assert K.shape == (3, L) and K.dtype == f64
        torch.testing.assert_close(layer(x), fftconv(x, K, layer.D), rtol=1e-12, atol=1e-12)
        Ad, Bd, C, D = layer.discrete_ssm()
    assert Ad.shape == (3, layer.d_state, layer.d_state) and Bd.shape == C.shape == (3, layer.d_state)
    assert D.shape == (3,)
    Kn = naive_kernel(Ad, Bd, C, L)
    assert float(Kn.imag.abs().max() if Kn.is_complex() else 0.0) < 1e-12
    assert float((K - Kn.real).abs().max() / Kn.real.abs().max()) < 1e-10


def test_rtf_kernel_beyond_l_max_matches_recurrence():
    layer = make("rtf", dict(d_state=4, l_max=8, init="montel"))
    x = torch.randn(1, 30, 3, dtype=f64)
    ys, _ = steps(layer, x)
    torch.testing.assert_close(layer(x), ys, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L", [257, 64])
def test_rtf_layer_poles_near_unit_circle_every_lag(L):
    # a = characteristic polynomial with roots of modulus 0.99 (one real pole at 0.99 for odd N):
    # the kernel must equal the impulse response of the layer's own recurrence (step), lag 0..L-1.
    N, H = 5, 2
    layer = RTF(H, N, l_max=L).to(f64)
    ang = torch.tensor([[0.4, 2.5], [0.05, 1.3]], dtype=f64)
    roots = 0.99 * torch.exp(1j * torch.cat([ang, -ang, torch.zeros(H, 1, dtype=f64)], -1))
    with torch.no_grad():
        layer.a.copy_(poly_from_roots(roots).real)
        layer.D.zero_()
    ev = torch.linalg.eigvals(companion(layer.a.detach())).abs()
    torch.testing.assert_close(ev, torch.full((H, N), 0.99, dtype=f64))
    impulse = torch.zeros(1, L, H, dtype=f64)
    impulse[:, 0] = 1
    h, _ = steps(layer, impulse)  # (1, L, H): the recurrence's impulse response
    h = h[0].T
    with torch.no_grad():
        K = layer.kernel(L)
    err = (K - h).abs()
    scale = h.abs().amax(-1, keepdim=True)
    assert float((err / scale).max()) < 1e-10
    assert float((err[:, [0, L - 1]] / scale).max()) < 1e-10  # lag 0 and lag L-1 explicitly
    assert float((h[:, -10:].abs().amax(-1) / scale[:, 0]).min()) > 1e-3  # not decayed by lag L-1


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_initial_state_continues_a_sequence(name, kw):
    # forward(x[7:], initial_state=state after x[:7]) == the rest of forward(x) == continuing steps
    layer = make(name, kw)
    x = torch.randn(2, 19, 3, dtype=f64)
    with torch.no_grad():
        y_full, s_full = layer(x, return_state=True)
        y1, s1 = layer(x[:, :7], return_state=True)
        y2, s2 = layer(x[:, 7:], initial_state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_full, rtol=1e-10, atol=1e-10)
    y_steps, s_steps = steps(layer, x[:, 7:], s1)
    torch.testing.assert_close(y2, y_steps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s_steps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_padded_batch_equals_one_by_one(name, kw):
    layer = make(name, kw)
    lengths = [19, 11, 4]
    x = torch.randn(3, 19, 3, dtype=f64)
    mask = torch.arange(19)[None, :] < torch.tensor(lengths)[:, None]
    x_padded = torch.where(mask[..., None], x, torch.full_like(x, 7.0))  # garbage in the padding
    s0 = steps(layer, torch.randn(3, 5, 3, dtype=f64))[1]  # a non-zero initial state as well
    with torch.no_grad():
        for init in (None, s0):
            y, s = layer(x_padded, mask=mask, return_state=True, initial_state=init)
            for i, l in enumerate(lengths):
                si0 = None if init is None else init[i:i + 1]
                yi, si = layer(x[i:i + 1, :l], return_state=True, initial_state=si0)
                torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-10)
                assert float(y[i, l:].abs().max() if l < 19 else 0.0) == 0.0
                torch.testing.assert_close(s[i:i + 1], si, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw", CONFIGS, ids=IDS)
def test_gradcheck(name, kw):
    # d y / d(x, every parameter) against finite differences (full Jacobian), and
    # d(y, final state) / d(x, initial state, every parameter) by gradcheck's fast mode (random
    # projections of the Jacobian): the state paths step token by token, so the full Jacobian
    # would be slow.
    layer = make(name, kw, H=1)
    L = 6 if kw.get("l_max", 19) > 6 else 9  # l_max = 7 configs: past l_max
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, L, 1, dtype=f64, generator=g)
    s0 = steps(layer, torch.randn(1, 3, 1, dtype=f64, generator=g))[1]
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x.requires_grad_(True)
    s0.requires_grad_(True)

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    def f_state(x, s0, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,), dict(initial_state=s0, return_state=True))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(f_state, (x, s0, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


# The polynomial form is ill-conditioned as poles crowd near z = 1 (small Δ, large N): with
# Δ in [0.1, 1] and N ≤ 8 the conversion keeps ~1e-13; see docs/lti.md for smaller Δ.
@pytest.mark.parametrize("src_kw", [dict(d_state=4, init="legs", dt_min=0.1, dt_max=1.0),
                                    dict(d_state=8, init="lin", discretization="bilinear", dt_min=0.1, dt_max=1.0)])
def test_rtf_from_s4d_same_kernel_and_outputs(src_kw):
    _check_conversion(make("s4d", src_kw), 40)


def _check_conversion(src, L):
    """An RTF layer converted from ``src`` has the same kernel, forward and step outputs (1e-10)."""
    rtf = RTF.from_layer(src, L)
    Ks, Kr = src.kernel(L).detach(), rtf.kernel(L).detach()
    assert float((Ks - Kr).abs().max() / Ks.abs().max()) < 1e-10
    x = torch.randn(2, L, 3, dtype=f64)
    with torch.no_grad():
        yf = src(x)
        assert float((rtf(x) - yf).abs().max() / yf.abs().max()) < 1e-10
    y_src, _ = steps(src, x)
    y_rtf, _ = steps(rtf, x)
    assert float((y_rtf - y_src).abs().max() / y_src.abs().max()) < 1e-10


def test_optimizer_hints_are_set():
    # log_dt, A (and S4's low-rank P and B), RTF's a and b: tagged through set_optim_hints with the
    # layer's ssm_lr and no weight decay; C and D are left to the trainer's defaults.
    want = {"lr": 5e-4, "weight_decay": 0.0}
    tagged = {S4(2, 4, ssm_lr=5e-4): ("log_dt", "A_real_log", "A_imag", "P", "B"),
              S4D(2, 4, ssm_lr=5e-4): ("log_dt", "A_real_log", "A_imag", "B"),
              RTF(2, 4, ssm_lr=5e-4): ("a", "b")}
    for layer, names in tagged.items():
        for n, p in layer.named_parameters():
            assert get_optim_hints(p) == (want if n in names else {}), (type(layer).__name__, n)


@pytest.mark.parametrize("name", ["s4", "s4d", "rtf"])
def test_bad_input(name):
    layer = get_layer(name)(3, 4)
    with raises_naming(ValueError, "x"):
        layer(torch.randn(2, 5, 4))  # wrong width
    with raises_naming(ValueError, "x"):
        layer(torch.randn(5, 3))  # wrong rank
    with raises_naming(ValueError, "x"):
        layer(torch.randn(2, 0, 3))  # empty sequence
    with pytest.raises(ValueError, match=r"\bx contains NaN"):
        layer(torch.full((1, 5, 3), float("nan")))
    for L in (0, -3):
        with raises_naming(ValueError, "L"):
            layer.kernel(L)
    with raises_naming(ValueError, "d_model"):
        get_layer(name)(0, 4)
    with raises_naming(ValueError, "mask"):
        layer(torch.randn(1, 4, 3), mask=torch.tensor([[False, True, True, True]]))
    with raises_naming(ValueError, "mask"):
        layer(torch.randn(1, 4, 3), mask=torch.ones(1, 5, dtype=torch.bool))
    with raises_naming(ValueError, "x_t"):
        layer.step(torch.randn(2, 5), layer.initial_state(2))
    with raises_naming(ValueError, "state"):
        layer.step(torch.randn(2, 3), layer.initial_state(3))
    with raises_naming(ValueError, "initial_state"):
        layer(torch.randn(2, 4, 3), initial_state=layer.initial_state(3))


def test_bad_constructor_arguments():
    with raises_naming(ValueError, "init"):
        S4D(3, 8, init="foo")
    with raises_naming(ValueError, "discretization"):
        S4D(3, 8, discretization="euler")
    with raises_naming(ValueError, "init"):
        RTF(3, 4, init="ones")
    with raises_naming(ValueError, "constraint"):
        RTF(3, 4, constraint="l2")
    with raises_naming(ValueError, "measure"):
        S4(2, 4, measure="fout")
    # S4 and S4D store one mode per conjugate pair: an odd state size is refused by name
    for cls in (S4, S4D):
        with raises_naming(ValueError, "d_state"):
            cls(2, 5)
    with raises_naming(ValueError, "layer"):
        get_layer("s9")


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_rtf_from_s4_same_kernel_and_outputs(measure):
    _check_conversion(make("s4", dict(d_state=4, measure=measure, l_max=30, dt_min=0.1, dt_max=1.0)), 30)


@pytest.mark.parametrize("name,kw", [("s4d", dict(d_state=4)), ("s4", dict(d_state=4, l_max=12)),
                                     ("rtf", dict(d_state=3, l_max=12, init="montel"))])
def test_bidirectional_equals_direct_two_sided_sum(name, kw):
    # y_i = Σ_{j≤i} K_fwd[i-j] u_j + Σ_{j≥i} K_bwd[j-i] u_j + D u_i, by the definition (O(L²)),
    # with the kernels the layer reports (forward channels first); padded rows equal one-by-one
    torch.manual_seed(0)
    H, L = 2, 12
    layer = get_layer(name)(H, bidirectional=True, dtype=f64, **kw)
    x = torch.randn(2, L, H, dtype=f64)
    with torch.no_grad():
        K = layer.kernel(L)
        y = layer(x)
    assert K.shape == (2 * H, L)
    Kf, Kb, D = K[:H], K[H:], layer.D.detach()
    want = torch.zeros_like(x)
    for i in range(L):
        for j in range(L):
            if j <= i:
                want[:, i] += Kf[:, i - j] * x[:, j]
            if j >= i:
                want[:, i] += Kb[:, j - i] * x[:, j]
    want += D * x
    torch.testing.assert_close(y, want, rtol=1e-11, atol=1e-11)
    mask = torch.arange(L)[None, :] < torch.tensor([[L], [7]])
    with torch.no_grad():
        yp = layer(x, mask=mask)
        torch.testing.assert_close(yp[1:, :7], layer(x[1:, :7]), rtol=1e-11, atol=1e-11)
    assert float(yp[1, 7:].abs().max()) == 0.0
    # gradients reach both kernel sets
    layer(x).sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["s4", "s4d", "rtf"])
def test_bidirectional_refuses_causal_uses(name):
    layer = get_layer(name)(3, 4, bidirectional=True)
    x = torch.randn(1, 5, 3)
    with raises_naming(ValueError, "bidirectional"):
        layer.step(torch.randn(1, 3), layer.initial_state(1))
    with raises_naming(ValueError, "bidirectional"):
        layer(x, return_state=True)
    with raises_naming(ValueError, "bidirectional"):
        layer(x, initial_state=layer.initial_state(1))
    with raises_naming(ValueError, "bidirectional"):
        RTF.from_layer(layer, 8)
    with raises_naming(TypeError, "bidirectional"):
        get_layer(name)(3, 4, bidirectional=1)

"""S4D and RTF layers: the convolution view equals the recurrence, conversions, masks, errors."""
import pytest
import torch

from ssmkit.layers.base import run_steps

from ssmkit.kernels import naive_kernel
from ssmkit.layers import RTF, S4D, get_layer, get_optim_hints
from ssmkit.ops import fftconv

f64 = torch.float64

CONFIGS = [
    ("s4d", dict(d_state=8, init="legs")),
    ("s4d", dict(d_state=6, init="lin", discretization="bilinear")),
    ("s4d", dict(d_state=4, init="inv")),
    ("s4d", dict(d_state=8, init="real")),
    ("rtf", dict(d_state=5, l_max=19, init="montel")),
    ("rtf", dict(d_state=4, l_max=19, init="zeros")),
    ("rtf", dict(d_state=3, l_max=7, init="montel", constraint="l1")),
    ("s4", dict(d_state=8, measure="legs", l_max=19)),
    ("s4", dict(d_state=6, measure="legt", l_max=19)),
    ("s4", dict(d_state=4, measure="legs", l_max=7)),  # inputs longer than l_max
]


def make(name, kw, H=3, dtype=f64, seed=0):
    torch.manual_seed(seed)
    return get_layer(name)(H, **kw).to(dtype)




@pytest.mark.parametrize("name,kw", CONFIGS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_forward_equals_step(name, kw, dtype, tol):
    layer = make(name, kw, dtype=dtype)
    x = torch.randn(2, 19, 3, dtype=dtype)
    y, s = layer(x, return_state=True)
    ys, ss = run_steps(layer, x)
    assert float((y - ys).detach().abs().max() / ys.detach().abs().max()) < tol
    assert float((s - ss).abs().max() / ss.abs().max().clamp(min=1e-30)) < tol


@pytest.mark.parametrize("name,kw", CONFIGS)
def test_forward_equals_fftconv_of_kernel_and_naive_kernel(name, kw):
    layer = make(name, kw)
    L = 19
    x = torch.randn(2, L, 3, dtype=f64)
    K = layer.kernel(L)
    assert K.shape == (3, L) and K.dtype == f64
    torch.testing.assert_close(layer(x), fftconv(x, K, layer.D), rtol=1e-12, atol=1e-12)
    Ad, Bd, C, D = layer.discrete_ssm()
    assert Ad.shape == (3, layer.d_state, layer.d_state) and Bd.shape == C.shape == (3, layer.d_state)
    Kn = naive_kernel(Ad, Bd, C, L)
    assert float(Kn.imag.abs().max() if Kn.is_complex() else 0.0) < 1e-12
    assert float((K - Kn.real).abs().max() / Kn.real.abs().max()) < 1e-10


def test_rtf_kernel_beyond_l_max_matches_recurrence():
    layer = make("rtf", dict(d_state=4, l_max=8, init="montel"))
    x = torch.randn(1, 30, 3, dtype=f64)
    ys, _ = run_steps(layer, x)
    torch.testing.assert_close(layer(x), ys, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw", CONFIGS[:1] + CONFIGS[4:5] + CONFIGS[7:8])
def test_initial_state_continues_a_sequence(name, kw):
    layer = make(name, kw)
    x = torch.randn(2, 19, 3, dtype=f64)
    y_full = layer(x)
    y1, s1 = layer(x[:, :7], return_state=True)
    y2, _ = layer(x[:, 7:], initial_state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw", CONFIGS[:1] + CONFIGS[4:5] + CONFIGS[8:9])
def test_padded_batch_equals_one_by_one(name, kw):
    layer = make(name, kw)
    lengths = [19, 11, 4]
    x = torch.randn(3, 19, 3, dtype=f64)
    mask = torch.arange(19)[None, :] < torch.tensor(lengths)[:, None]
    x_padded = torch.where(mask[..., None], x, torch.full_like(x, 7.0))  # garbage in the padding
    y, s = layer(x_padded, mask=mask, return_state=True)
    for i, l in enumerate(lengths):
        yi, si = layer(x[i:i + 1, :l], return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-10)
        assert float(y[i, l:].abs().max() if l < 19 else 0.0) == 0.0
        torch.testing.assert_close(s[i:i + 1], si, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw", [CONFIGS[0], CONFIGS[1], CONFIGS[4], CONFIGS[6], CONFIGS[7], CONFIGS[8]])
def test_gradcheck(name, kw):
    layer = make(name, kw, H=2)
    x = torch.randn(1, 6, 2, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,), eps=1e-6, atol=1e-6)
    params = [p for p in layer.parameters()]
    y = layer(x).pow(2).sum()
    grads = torch.autograd.grad(y, params)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# The companion form is ill-conditioned: errors grow with N and as poles approach z = 1
# (small Δ). Step outputs of the N = 8 system agree to ~1e-7 in float64; see docs/lti.md.
@pytest.mark.parametrize("src_kw,step_tol", [(dict(d_state=4, init="legs", dt_min=0.1, dt_max=1.0), 1e-9),
                                             (dict(d_state=8, init="lin", discretization="bilinear", dt_min=0.1, dt_max=1.0), 1e-6)])
def test_rtf_from_s4d_same_kernel_and_outputs(src_kw, step_tol):
    src = make("s4d", src_kw)
    L = 40
    rtf = RTF.from_layer(src, L)
    Ks, Kr = src.kernel(L), rtf.kernel(L)
    assert float((Ks - Kr).abs().max() / Ks.abs().max()) < 1e-10
    x = torch.randn(2, L, 3, dtype=f64)
    torch.testing.assert_close(rtf(x), src(x), rtol=1e-9, atol=1e-10)
    y_src, _ = run_steps(src, x)
    y_rtf, _ = run_steps(rtf, x)
    assert float((y_rtf - y_src).abs().max() / y_src.abs().max()) < step_tol


def test_optimizer_hints_are_set():
    s4d = S4D(4, 8, ssm_lr=5e-4)
    assert get_optim_hints(s4d.log_dt) == {"lr": 5e-4, "weight_decay": 0.0}
    assert get_optim_hints(s4d.A_real_log)["weight_decay"] == 0.0
    assert get_optim_hints(s4d.C) == {}
    rtf = RTF(4, 8)
    assert get_optim_hints(rtf.a)["weight_decay"] == 0.0 and get_optim_hints(rtf.b)["weight_decay"] == 0.0


def test_bad_input():
    layer = S4D(3, 8)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.full((1, 5, 3), float("nan")))
    with pytest.raises(ValueError, match="L"):
        layer.kernel(0)
    with pytest.raises(ValueError, match="init"):
        S4D(3, 8, init="foo")
    with pytest.raises(ValueError, match="discretization"):
        S4D(3, 8, discretization="euler")
    with pytest.raises(ValueError, match="d_state"):
        S4D(3, 7)
    with pytest.raises(ValueError, match="init"):
        RTF(3, 4, init="ones")
    with pytest.raises(ValueError, match="mask"):
        layer(torch.randn(1, 4, 3), mask=torch.tensor([[False, True, True, True]]))
    with pytest.raises(ValueError, match="x_t"):
        layer.step(torch.randn(2, 5), layer.initial_state(2))
    with pytest.raises(ValueError, match="state"):
        layer.step(torch.randn(2, 3), layer.initial_state(3))
    with pytest.raises(ValueError, match="layer"):
        get_layer("s9")


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_rtf_from_s4_same_kernel_and_outputs(measure):
    src = make("s4", dict(d_state=4, measure=measure, l_max=30, dt_min=0.1, dt_max=1.0))
    rtf = RTF.from_layer(src, 30)
    Ks = src.kernel(30)
    assert float((Ks - rtf.kernel(30)).abs().max() / Ks.abs().max()) < 1e-10
    x = torch.randn(2, 30, 3, dtype=f64)
    torch.testing.assert_close(rtf(x), src(x), rtol=1e-9, atol=1e-10)
    y_src, _ = run_steps(src, x)
    y_rtf, _ = run_steps(rtf, x)
    assert float((y_rtf - y_src).abs().max() / y_src.abs().max()) < 1e-8


def test_s4_bad_input():
    from ssmkit.layers import S4

    with pytest.raises(ValueError, match="measure"):
        S4(2, 4, measure="fout")
    with pytest.raises(ValueError, match="d_state"):
        S4(2, 5)

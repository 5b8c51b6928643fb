"""Bad and edge-case input to the LTI layers (S4, S4D, RTF, S5), their kernels, fftconv's
callers and the HiPPO memory, one test per class: dtypes, empty batches, length 1, NaN/inf in
every tensor argument and state, out-of-range scalars. Each either gives a correct answer
(checked against float64 / stepping) or raises an error naming the argument."""
import math

import pytest
import torch

from helpers import assert_close_to_reference, raises_naming
from ssmkit.hippo import HiPPO
from ssmkit.kernels import dplr_kernel, naive_kernel, rational_kernel, vandermonde_kernel
from ssmkit.layers import RTF, S4, S4D, S5
from ssmkit.layers.base import run_steps

f64 = torch.float64
LAYERS = {"s4": lambda **k: S4(3, 4, l_max=16, **k), "s4d": lambda **k: S4D(3, 4, **k),
          "rtf": lambda **k: RTF(3, 4, l_max=16, init="montel", **k), "s5": lambda **k: S5(3, 4, **k)}
BAD = (float("nan"), float("inf"), -float("inf"))


def _make(name, **kw):
    torch.manual_seed(0)
    return LAYERS[name](**kw)


@pytest.mark.parametrize("name", LAYERS)
def test_nonfinite_states_are_named(name):
    layer = _make(name)
    x = torch.randn(2, 5, 3)
    for bad in BAD:
        s = layer.initial_state(2)
        s[0, 0] = bad
        with raises_naming(ValueError, "initial_state"):
            layer(x, initial_state=s)
        with raises_naming(ValueError, "state"):
            layer.step(x[:, 0], s)
        with raises_naming(ValueError, "x"):
            layer(torch.full((1, 4, 3), bad))
        with raises_naming(ValueError, "x_t"):
            layer.step(torch.full((2, 3), bad), layer.initial_state(2))


@pytest.mark.parametrize("name", LAYERS)
def test_state_shape_and_type_errors_name_the_argument(name):
    layer = _make(name)
    x = torch.randn(2, 5, 3)
    wrong = torch.zeros(2, 7)
    with raises_naming(ValueError, "initial_state"):
        layer(x, initial_state=wrong)
    with raises_naming(TypeError, "initial_state"):
        layer(x, initial_state=[0.0])
    with raises_naming(ValueError, "state"):
        layer.step(x[:, 0], wrong)
    with raises_naming(TypeError, "batch_size"):
        layer.initial_state(2.5)
    with raises_naming(ValueError, "batch_size"):
        layer.initial_state(-1)
    with raises_naming(TypeError, "return_state"):
        layer(x, return_state="yes")


@pytest.mark.parametrize("name", LAYERS)
def test_empty_batch_gives_empty_outputs(name):
    layer = _make(name)
    x = torch.zeros(0, 6, 3)
    assert layer(x).shape == (0, 6, 3)
    y, s = layer(x, return_state=True)
    assert y.shape == (0, 6, 3) and s.shape == layer.initial_state(0).shape
    y, s2 = layer(x, initial_state=layer.initial_state(0), return_state=True, mask=torch.ones(0, 6, dtype=torch.bool))
    assert y.shape == (0, 6, 3) and s2.shape == s.shape
    yt, st = layer.step(torch.zeros(0, 3), layer.initial_state(0))
    assert yt.shape == (0, 3) and st.shape == s.shape


@pytest.mark.parametrize("name", LAYERS)
def test_length_one_equals_one_step(name):
    layer = _make(name, dtype=f64)
    x = torch.randn(2, 1, 3, dtype=f64)
    with torch.no_grad():
        s0 = run_steps(layer, torch.randn(2, 3, 3, dtype=f64))[1]
        y, s = layer(x, initial_state=s0, return_state=True)
        yt, st = layer.step(x[:, 0], s0)
    assert_close_to_reference(y[:, 0], yt, 1e-12)
    assert_close_to_reference(s, st, 1e-12)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_input_is_computed_in_float32(name, dtype, tol):
    # float32 parameters, half-precision input: computed in float32, returned in the input's dtype;
    # the error is the rounding of input and output to `dtype`
    layer = _make(name)
    x = torch.randn(2, 8, 3).to(dtype)
    with torch.no_grad():
        y = layer(x)
        want = layer(x.float())
        yt, _ = layer.step(x[:, 0], layer.initial_state(2))
    assert y.dtype == dtype and yt.dtype == dtype
    assert_close_to_reference(y.float(), want, tol)


@pytest.mark.parametrize("name", LAYERS)
def test_non_real_inputs_refused_by_name(name):
    layer = _make(name)
    with raises_naming(TypeError, "x"):
        layer(torch.randn(1, 4, 3, dtype=torch.complex64))
    with raises_naming(TypeError, "x"):
        layer(torch.ones(1, 4, 3, dtype=torch.long))
    with raises_naming(TypeError, "x_t"):
        layer.step(torch.ones(1, 3, dtype=torch.long), layer.initial_state(1))


@pytest.mark.parametrize("cls", [S4, S4D, RTF, S5])
def test_out_of_range_constructor_scalars(cls):
    with raises_naming(ValueError, "d_model"):
        cls(0, 4)
    with raises_naming(TypeError, "d_model"):
        cls(2.5, 4)
    with raises_naming(TypeError, "d_model"):
        cls(True, 4)
    with raises_naming(ValueError, "d_state"):
        cls(2, 0)
    with raises_naming(ValueError, "ssm_lr"):
        cls(2, 4, ssm_lr=-1e-3)
    with raises_naming(ValueError, "ssm_lr"):
        cls(2, 4, ssm_lr=float("nan"))
    with raises_naming(TypeError, "dtype"):
        cls(2, 4, dtype=torch.int32)
    with raises_naming(TypeError, "dtype"):
        cls(2, 4, dtype=torch.float16)
    if cls is not RTF:
        with raises_naming(ValueError, "dt_min"):
            cls(2, 4, dt_min=0.2, dt_max=0.1)
        with raises_naming(ValueError, "dt_min"):
            cls(2, 4, dt_min=0.0)
        with raises_naming(ValueError, "dt_max"):
            cls(2, 4, dt_max=float("inf"))
    if cls in (S4, RTF):
        with raises_naming(ValueError, "l_max"):
            cls(2, 4, l_max=0)


@pytest.mark.parametrize("cls", [S4, S4D, RTF, S5])
def test_factory_arguments_place_parameters(cls):
    layer = cls(2, 4, device="cpu", dtype=f64)
    assert all(p.dtype == f64 and p.device.type == "cpu" for p in layer.parameters())
    x = torch.randn(1, 6, 2, dtype=f64)
    assert layer(x).dtype == f64
    # same initial values as building in float32 and converting (same seed)
    torch.manual_seed(3)
    a = cls(2, 4, dtype=f64)
    torch.manual_seed(3)
    b = cls(2, 4).to(f64)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ["s4", "s4d", "rtf"])
def test_kernel_length_scalars(name):
    layer = _make(name)
    with raises_naming(ValueError, "L"):
        layer.kernel(0)
    with raises_naming(TypeError, "L"):
        layer.kernel(2.0)
    assert layer.kernel(1).shape == (3, 1)


def test_kernels_refuse_half_precision_by_name():
    h = torch.float16
    with raises_naming(TypeError, "Ad"):
        naive_kernel(torch.eye(2, dtype=h), torch.ones(2), torch.ones(2), 3)
    with raises_naming(TypeError, "C"):
        naive_kernel(torch.eye(2), torch.ones(2), torch.ones(2, dtype=torch.bfloat16), 3)
    with raises_naming(TypeError, "a"):
        rational_kernel(torch.zeros(2, dtype=h), torch.ones(2), 4)
    with raises_naming(TypeError, "b"):
        rational_kernel(torch.zeros(2), torch.ones(2, dtype=torch.complex64), 4)
    with raises_naming(TypeError, "log_dA"):
        vandermonde_kernel(torch.zeros(2, dtype=h), torch.ones(2), 4)
    lam, P, B = -torch.ones(1, 2, dtype=torch.complex64), torch.zeros(1, 1, 2, dtype=torch.complex64), torch.ones(1, 2, dtype=torch.complex64)
    with raises_naming(TypeError, "dt"):
        dplr_kernel(lam, P, B, B, torch.ones(1, dtype=h), 4)
    with raises_naming(TypeError, "Lambda"):
        dplr_kernel(lam.real.to(h), P, B, B, torch.ones(1), 4)


def test_kernels_mixed_precision_and_complex_work():
    # float32 with float64 arguments are promoted; complex systems stay complex (checked against float64)
    g = torch.Generator().manual_seed(0)
    Ad = 0.5 * torch.randn(2, 3, 3, generator=g, dtype=f64)
    Bd, C = torch.randn(2, 3, generator=g, dtype=f64), torch.randn(2, 3, generator=g, dtype=f64)
    K = naive_kernel(Ad.float(), Bd, C.to(torch.complex64), 5)
    assert K.dtype == torch.complex128
    assert_close_to_reference(K.real, naive_kernel(Ad, Bd, C, 5), 1e-6)


def test_kernel_width_and_pole_errors():
    with raises_naming(ValueError, "log_dA"):
        vandermonde_kernel(torch.zeros(3, dtype=torch.complex64), torch.ones(4, dtype=torch.complex64), 5)
    with raises_naming(ValueError, "log_dA"):
        vandermonde_kernel(torch.zeros(2, 3, dtype=torch.complex64), torch.ones(3, 3, dtype=torch.complex64), 5)
    with raises_naming(ValueError, "a"):
        rational_kernel(torch.tensor([-1.0]), torch.tensor([1.0]), 8)  # pole at z = 1
    with raises_naming(ValueError, "a"):
        rational_kernel(torch.tensor([0.0, 1.0], dtype=f64), torch.ones(2, dtype=f64), 8)  # poles at ±i (z^4 = 1)
    for bad in BAD:
        with raises_naming(ValueError, "a"):
            rational_kernel(torch.tensor([bad]), torch.tensor([1.0]), 4)
        with raises_naming(ValueError, "CB"):
            vandermonde_kernel(-torch.ones(2), torch.tensor([1.0, bad]), 4)
        with raises_naming(ValueError, "Bd"):
            naive_kernel(torch.eye(2), torch.tensor([1.0, bad]), torch.ones(2), 3)


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_hippo_empty_batches_and_grad_inputs(measure):
    h = HiPPO(measure, 4)
    assert h.encode(torch.zeros(0, 10)).shape == (0, 10, 4)
    c = h.step(h.initial_state(0), torch.zeros(0), k=3)
    assert c.shape == (0, 4)
    u = torch.randn(2, 10, dtype=f64, requires_grad=True)
    C = h.encode(u)
    assert_close_to_reference(C.detach(), h.encode(u.detach()), 1e-12)
    C.sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    with raises_naming(TypeError, "batch_size"):
        h.initial_state(2.5)
    for bad in BAD:
        with raises_naming(ValueError, "u"):
            h.encode(torch.tensor([[0.0, bad, 1.0]]))
        with raises_naming(ValueError, "c"):
            h.step(torch.full((1, 4), bad), 1.0, k=2)
        with raises_naming(ValueError, "u_t"):
            h.step(torch.zeros(1, 4), bad, k=2)


def test_hippo_functions_empty_and_half_precision():
    from ssmkit.hippo import discretize, transition
    from ssmkit.hippo.legs import legs_scan, legs_solve, legs_step

    lam = torch.full((5,), 0.1, dtype=f64)
    assert legs_scan(torch.zeros(0, 5, dtype=f64), lam, lam, torch.zeros(0, 4, dtype=f64)).shape == (0, 5, 4)
    assert legs_step(torch.zeros(0, 4), torch.zeros(0), 0.1, 0.1).shape == (0, 4)
    assert legs_solve(0.5, torch.zeros(0, 4)).shape == (0, 4)
    A, B = transition("legt", 4)
    with raises_naming(TypeError, "A"):
        discretize(A.half(), B.half(), 0.1)
    with raises_naming(ValueError, "dt"):
        discretize(A, B, float("nan"))
    assert discretize(A, B, torch.zeros(0, dtype=f64) + 0.1)[0].shape == (0, 4, 4)

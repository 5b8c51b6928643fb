"""The selective scan's fast path against the sequential reference, and the Mamba layer."""
import pytest
import torch

from ssmkit.layers.base import run_steps
from helpers import assert_close_to_reference, raises_naming, rel_err

from ssmkit.layers import Mamba
from ssmkit.ops import _native, selective_scan, selective_scan_ref

f64 = torch.float64
needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")
# both fast paths: the native C kernel and the torch-ops scan (device-agnostic fallback)
PATHS = [pytest.param(True, id="native", marks=needs_native), pytest.param(False, id="torch")]


def _inputs(b=2, d=6, N=4, L=37, groups=None, seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
    shp = (b, N, L) if groups is None else (b, groups, N, L)
    A = (-torch.rand(d, N, generator=g, dtype=dtype) - 0.1).requires_grad_()
    return dict(u=r(b, d, L), delta=r(b, d, L), A=A, B=r(*shp), C=r(*shp), D=r(d), z=r(b, d, L), delta_bias=r(d),
                initial_state=r(b, d, N))


@pytest.mark.parametrize("native", PATHS)
@pytest.mark.parametrize("L,chunk", [(1, 4), (37, 8), (40, 8), (23, 64)])
@pytest.mark.parametrize("groups", [None, 1, 2, 3])
@pytest.mark.parametrize("use_z,softplus,use_h0", [(True, True, True), (False, True, False), (True, False, False)])
def test_fast_equals_reference_values_and_gradients(native, L, chunk, groups, use_z, softplus, use_h0):
    kw = _inputs(b=1 if groups == 1 else 2, L=L, groups=groups)
    if not softplus:  # keep Δ >= 0 without softplus so the system decays
        kw["delta"] = kw["delta"].detach().abs().requires_grad_()
        kw["delta_bias"] = kw["delta_bias"].detach().abs().requires_grad_()
    if not use_z:
        kw.pop("z")
    if not use_h0:
        kw.pop("initial_state")
    y1, h1 = selective_scan(**kw, delta_softplus=softplus, return_last_state=True, checkpoint_every=chunk, native=native)
    y2, h2 = selective_scan_ref(**kw, delta_softplus=softplus, return_last_state=True)
    assert rel_err(y1, y2) < 1e-10
    assert rel_err(h1, h2) < 1e-10
    g = torch.Generator().manual_seed(1)
    wy, wh = torch.randn(y1.shape, generator=g, dtype=f64), torch.randn(h1.shape, generator=g, dtype=f64)
    names = list(kw)
    g1 = torch.autograd.grad((y1 * wy).sum() + (h1 * wh).sum(), [kw[n] for n in names])
    g2 = torch.autograd.grad((y2 * wy).sum() + (h2 * wh).sum(), [kw[n] for n in names])
    for n, a, b in zip(names, g1, g2):
        assert float((a - b).abs().max() / b.abs().max().clamp(min=1e-300)) < 1e-10, n


@pytest.mark.parametrize("native", PATHS)
def test_forward_only_path_matches(native):
    kw = _inputs(L=50)
    with torch.no_grad():
        y1, h1 = selective_scan(**kw, delta_softplus=True, return_last_state=True, checkpoint_every=16, native=native)
    y2, h2 = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y1, y2.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1, h2.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_one_million_steps_float32_finite():
    L = 1_000_000
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2, L, generator=g)
    delta = torch.randn(1, 2, L, generator=g)
    A = -torch.exp(torch.randn(2, 4, generator=g))
    B = torch.randn(1, 4, L, generator=g)
    C = torch.randn(1, 4, L, generator=g)
    with torch.no_grad():
        y, h = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True, checkpoint_every=4096,
                              native=False)  # the torch path (the native one is tested below, unmarked)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()


@needs_native
@pytest.mark.parametrize("b,groups,L", [(1, None, 300), (3, 2, 129), (2, 4, 1000)])
def test_native_equals_torch_path_float32(b, groups, L):
    kw = _inputs(b=b, d=8, N=16, L=L, groups=groups, dtype=torch.float32, seed=3)
    outs = []
    for native in (True, False):
        y, h = selective_scan(**kw, delta_softplus=True, return_last_state=True, native=native)
        loss = (y * torch.cos(torch.arange(L, dtype=y.dtype))).sum() + h.square().sum()
        outs.append([y, h, *torch.autograd.grad(loss, list(kw.values()))])
    for name, a, r in zip(["y", "h", *kw], *outs):
        assert rel_err(a, r) < 1e-4, name


@needs_native
def test_native_scan_uses_threads_consistently():
    """The per-thread dB/dC accumulators give the same result for any thread count."""
    kw = _inputs(b=1, d=40, N=5, L=70, groups=2, seed=4)
    res = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = selective_scan(**kw, delta_softplus=True, checkpoint_every=16, native=True)
            res.append(torch.autograd.grad(y.square().sum(), [kw["B"], kw["C"], kw["A"]]))
    finally:
        torch.set_num_threads(old)
    for r in res[1:]:
        for a, b in zip(r, res[0]):
            assert rel_err(a, b) < 1e-12


@needs_native
def test_one_million_steps_float32_native_with_gradients():
    L = 1_000_000
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2, L, generator=g, requires_grad=True)
    delta = torch.randn(1, 2, L, generator=g, requires_grad=True)
    A = (-torch.exp(torch.randn(2, 4, generator=g))).requires_grad_()
    B = torch.randn(1, 4, L, generator=g, requires_grad=True)
    C = torch.randn(1, 4, L, generator=g, requires_grad=True)
    y, h = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True, native=True)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    grads = torch.autograd.grad(y.sum() + h.sum(), [u, delta, A, B, C])
    assert all(torch.isfinite(gr).all() for gr in grads)


def test_native_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE", "0")
    assert not _native.available()
    kw = {k: v.detach() for k, v in _inputs(L=9).items()}
    with pytest.raises(RuntimeError, match="native"):
        selective_scan(**kw, delta_softplus=True, native=True)
    y = selective_scan(**kw, delta_softplus=True)  # silently the torch path
    torch.testing.assert_close(y, selective_scan_ref(**kw, delta_softplus=True), rtol=1e-10, atol=1e-12)


def test_native_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setenv("SSMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="torch path"):
        assert not _native.available()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert not _native.available()
        kw = {k: v.detach() for k, v in _inputs(L=9).items()}
        torch.testing.assert_close(selective_scan(**kw, delta_softplus=True),
                                   selective_scan_ref(**kw, delta_softplus=True), rtol=1e-10, atol=1e-12)


@needs_native
def test_native_builds_into_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setenv("SSMKIT_CACHE_DIR", str(tmp_path))
    assert _native.available()
    built = sorted(p.name for p in tmp_path.glob("selective_scan-*"))
    assert len(built) == 2 and built[1] == built[0] + ".sha256"  # the library and its checksum
    assert not list(tmp_path.glob(".build-*"))  # temporary build dir removed


def test_long_sequence_finite_float32():
    L = 20_000  # a quick version of the 1,000,000-step check (marked slow)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2, L, generator=g)
    A = -torch.exp(torch.randn(2, 4, generator=g))
    B, C = torch.randn(1, 4, L, generator=g), torch.randn(1, 4, L, generator=g)
    with torch.no_grad():
        y = selective_scan(u, torch.randn(1, 2, L, generator=g) + 3, A, B, C, delta_softplus=True, checkpoint_every=1024)
    assert torch.isfinite(y).all()


def test_bad_input():
    kw = {k: v.detach() for k, v in _inputs().items()}
    with raises_naming(ValueError, "delta"):
        selective_scan(kw["u"], kw["delta"][:, :, :5], kw["A"], kw["B"], kw["C"])
    with raises_naming(ValueError, "A"):
        selective_scan(kw["u"], kw["delta"], kw["A"].abs(), kw["B"], kw["C"])
    with pytest.raises(ValueError, match=r"\bC must be on u's device"):  # never handed to the native kernel
        selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"].to("meta"))
    with raises_naming(ValueError, "B"):
        selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"][:, :3], kw["C"])
    with pytest.raises(ValueError, match="groups dividing"):
        selective_scan(kw["u"], kw["delta"], kw["A"], torch.zeros(2, 4, 4, 37, dtype=f64), kw["C"])
    u = kw["u"].clone()
    u[0, 0, 3] = float("nan")
    with raises_naming(ValueError, "u"):
        selective_scan(u, kw["delta"], kw["A"], kw["B"], kw["C"])
    with raises_naming(ValueError, "checkpoint_every"):
        selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], checkpoint_every=0)
    with pytest.raises(TypeError, match="native"):
        selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], native="yes")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mamba_forward_equals_step(dtype, tol):
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4, d_conv=3).to(dtype)
    x = torch.randn(2, 21, 8, dtype=dtype)
    y, (cs, hs) = layer(x, return_state=True)
    ys, (cs2, hs2) = run_steps(layer, x)
    assert float((y - ys).detach().abs().max() / ys.detach().abs().max()) < tol
    assert float((hs - hs2).detach().abs().max() / hs2.detach().abs().max()) < tol
    torch.testing.assert_close(cs, cs2)


def test_mamba_padding_and_continuation():
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4).double()
    x = torch.randn(3, 15, 8, dtype=f64)
    lengths = [15, 9, 2]
    mask = torch.arange(15)[None] < torch.tensor(lengths)[:, None]
    y, (cs, hs) = layer(torch.where(mask[..., None], x, torch.full_like(x, 9.0)), mask=mask, return_state=True)
    for i, l in enumerate(lengths):
        yi, (ci, hi) = layer(x[i:i + 1, :l], return_state=True)
        torch.testing.assert_close(y[i:i + 1, :l], yi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cs[i:i + 1], ci, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hs[i:i + 1], hi, rtol=1e-10, atol=1e-12)
    y1, s1 = layer(x[:, :6], return_state=True)
    y2 = layer(x[:, 6:], initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), layer(x), rtol=1e-10, atol=1e-12)


def test_mamba_gradcheck_and_bad_input():
    torch.manual_seed(0)
    layer = Mamba(4, d_state=2, d_conv=2).double()
    x = torch.randn(1, 5, 4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,), eps=1e-6, atol=1e-6)
    with raises_naming(ValueError, "x"):
        layer(torch.randn(1, 5, 3, dtype=f64))
    with raises_naming(ValueError, "state"):
        layer.step(torch.randn(2, 4, dtype=f64), layer.initial_state(3))
    with raises_naming(ValueError, "d_state"):
        Mamba(4, d_state=0)


def test_low_precision_inputs_scan_in_float32():
    # bfloat16 inputs (as under autocast) are promoted to float32 for the recurrence and y comes
    # back in u's dtype; the result equals the float32 scan of the same (rounded) values.
    g = torch.Generator().manual_seed(3)
    b, d, N, L = 2, 6, 4, 33
    u = torch.randn(b, d, L, generator=g).bfloat16()
    delta = torch.rand(b, d, L, generator=g).bfloat16()
    A = -torch.rand(d, N, generator=g) - 0.1  # float32, as the layer's parameter
    B = torch.randn(b, N, L, generator=g).bfloat16()
    C = torch.randn(b, N, L, generator=g).bfloat16()
    z = torch.randn(b, d, L, generator=g).bfloat16()
    y, h = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y32, h32 = selective_scan_ref(u.float(), delta.float(), A, B.float(), C.float(), z=z.float(),
                                  delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(h, h32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.float(), y32, rtol=1e-2, atol=1e-2)  # bfloat16 output rounding


def test_mamba_trains_under_bf16_autocast():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 12, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    torch.testing.assert_close(y.float(), m(x), rtol=0.1, atol=0.05)


# --- every layout the torch path accepts, on both paths, against the reference -------------------
LAYOUTS = ("contiguous", "transposed", "sliced")


def _laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout: a transposed view of a tensor stored
    with the last two dimensions swapped, or a strided slice of a larger tensor."""
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    return t


def _layout_case(GB, GC, layout, dtype, use_z, use_bias, softplus, use_h0, seed=0, b=2, d=4, N=3, L=9):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)
    kw = dict(u=r(b, d, L), delta=torch.rand(b, d, L, generator=g, dtype=f64) * (1 if softplus else 0.5),
              A=-torch.rand(d, N, generator=g, dtype=f64) - 0.1,
              B=r(b, N, L) if GB is None else r(b, GB, N, L), C=r(b, N, L) if GC is None else r(b, GC, N, L),
              D=r(d))
    if softplus:
        kw["delta"] = kw["delta"] * 4 - 2  # any sign before the softplus
    if use_z:
        kw["z"] = r(b, d, L)
    if use_bias:
        kw["delta_bias"] = torch.rand(d, generator=g, dtype=f64) * 0.5
    if use_h0:
        kw["initial_state"] = r(b, d, N)
    # the values are rounded to the test dtype first, so the float64 reference sees the same inputs
    kw = {k: v.to(dtype).to(f64) for k, v in kw.items()}
    ref = selective_scan_ref(**kw, delta_softplus=softplus, return_last_state=True)
    fast = {k: _laid_out(v.to(dtype), layout) if v.dim() >= 2 else v.to(dtype) for k, v in kw.items()}
    return fast, ref


@pytest.mark.parametrize("GB", [None, 1, 2])
@pytest.mark.parametrize("GC", [None, 1, 2])
def test_every_layout_native_torch_reference(GB, GC):
    """B grouped or not x C grouped or not x contiguity x dtype x z x delta_bias x softplus x
    initial_state: the native kernel, the torch path and the float64 reference agree."""
    import itertools
    paths = [True, False] if _native.available() else [False]
    for layout, dtype, use_z, use_bias, softplus, use_h0 in itertools.product(
            LAYOUTS, (torch.float32, f64), *([(False, True)] * 4)):
        fast, (y_ref, h_ref) = _layout_case(GB, GC, layout, dtype, use_z, use_bias, softplus, use_h0)
        tol = 1e-12 if dtype == f64 else 2e-6
        for native in paths:
            y, h = selective_scan(**fast, delta_softplus=softplus, return_last_state=True, native=native,
                                  checkpoint_every=4)
            what = f"{layout} {dtype} z={use_z} bias={use_bias} softplus={softplus} h0={use_h0} native={native}"
            assert y.dtype == dtype
            assert_close_to_reference(y.double(), y_ref, tol, "y " + what)
            assert_close_to_reference(h.double(), h_ref, tol, "last state " + what)


@pytest.mark.parametrize("GB,GC", [(None, 2), (2, None), (2, 4), (4, 1), (None, None)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gradients(GB, GC, layout):
    """Gradients of every operand on both paths against the float64 reference's autograd."""
    fast, _ = _layout_case(GB, GC, layout, f64, True, True, True, True, seed=5)
    names = list(fast)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in fast.items()}
    y_ref, h_ref = selective_scan_ref(**leaves, delta_softplus=True, return_last_state=True)
    g = torch.Generator().manual_seed(1)
    wy, wh = torch.randn(y_ref.shape, generator=g, dtype=f64), torch.randn(h_ref.shape, generator=g, dtype=f64)
    g_ref = torch.autograd.grad((y_ref * wy).sum() + (h_ref * wh).sum(), [leaves[n] for n in names])
    for native in ([True, False] if _native.available() else [False]):
        ops = {k: _laid_out(v.detach().clone(), layout).requires_grad_() if v.dim() >= 2
               else v.detach().clone().requires_grad_() for k, v in fast.items()}
        y, h = selective_scan(**ops, delta_softplus=True, return_last_state=True, native=native, checkpoint_every=4)
        grads = torch.autograd.grad((y * wy).sum() + (h * wh).sum(), [ops[n] for n in names])
        for n, a, b in zip(names, grads, g_ref):
            assert_close_to_reference(a, b, 1e-11, f"d{n} (native={native})")


def test_negative_step_without_softplus_is_refused():
    kw = {k: v.detach() for k, v in _inputs(L=9).items()}
    delta = kw["delta"].abs()
    with raises_naming(ValueError, "delta"):
        selective_scan(kw["u"], -delta, kw["A"], kw["B"], kw["C"])
    with raises_naming(ValueError, "delta_bias"):  # the step after the bias counts
        selective_scan(kw["u"], delta, kw["A"], kw["B"], kw["C"], delta_bias=torch.full((6,), -10.0, dtype=f64))
    # with the softplus any sign is fine; inside trusted_inputs the value check is skipped
    selective_scan(kw["u"], -delta, kw["A"], kw["B"], kw["C"], delta_softplus=True)
    from ssmkit._checks import trusted_inputs
    with trusted_inputs():
        selective_scan(kw["u"], delta * 0, kw["A"], kw["B"], kw["C"])


@pytest.mark.parametrize("native", PATHS)
def test_empty_batch_gives_empty_outputs_and_bad_lengths_are_named(native):
    kw = {k: v.detach()[:0] if k in ("u", "delta", "B", "C", "z", "initial_state") else v.detach()
          for k, v in _inputs(L=5).items()}
    y, h = selective_scan(**kw, delta_softplus=True, return_last_state=True, native=native)
    assert y.shape == (0, 6, 5) and h.shape == (0, 6, 4)
    kw = {k: v.detach() for k, v in _inputs(L=1).items()}  # one step
    y, h = selective_scan(**kw, delta_softplus=True, return_last_state=True, native=native)
    y2, h2 = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    assert_close_to_reference(y, y2, 1e-12)
    assert_close_to_reference(h, h2, 1e-12)
    kw = {k: v.detach()[..., :0] if k in ("u", "delta", "B", "C", "z") else v.detach()
          for k, v in _inputs(L=5).items()}
    with raises_naming(ValueError, "u"):
        selective_scan(**kw)


def test_complex_and_half_inputs():
    kw = {k: v.detach() for k, v in _inputs(L=7).items()}
    with raises_naming(TypeError, "B"):
        selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"].to(torch.complex128), kw["C"])
    # float16 is scanned in float32 (as bfloat16 is, see below): within float16 rounding
    h16 = {k: v.half() for k, v in kw.items()}
    y = selective_scan(**h16, delta_softplus=True)
    y32 = selective_scan_ref(**{k: v.float() for k, v in h16.items()}, delta_softplus=True)
    assert y.dtype == torch.float16
    assert_close_to_reference(y.float(), y32, 2e-3)


@needs_native
def test_long_mixed_grouping_reads_only_its_operands():
    """B grouped and C not, at a length where reading C with B's group stride would run past
    C's end: equal to the same scan with C given in grouped form (another layout of the same
    values), and finite."""
    L = 100_000
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(1, 4, L, generator=g), torch.randn(1, 4, L, generator=g)
    A = -torch.rand(4, 16, generator=g) - 0.1
    B, C = torch.randn(1, 2, 16, L, generator=g), torch.randn(1, 16, L, generator=g)
    with torch.no_grad():
        y1, h1 = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True, native=True)
        y2, h2 = selective_scan(u, delta, A, B, C.unsqueeze(1).expand(1, 2, 16, L), delta_softplus=True,
                                return_last_state=True, native=True)
    assert torch.isfinite(y1).all() and torch.equal(y1, y2) and torch.equal(h1, h2)


def test_bool_flags_take_a_bool_only():
    """0/1 compare equal to False/True, so a membership test would let them through; every flag is checked."""
    g = torch.Generator().manual_seed(0)
    for bsz in (0, 2):
        u = torch.randn(bsz, 4, 5, generator=g)
        kw = dict(u=u, delta=torch.rand(bsz, 4, 5, generator=g), A=-torch.rand(4, 3, generator=g),
                  B=torch.randn(bsz, 3, 5, generator=g), C=torch.randn(bsz, 3, 5, generator=g))
        for flag in ("delta_softplus", "return_last_state", "native"):
            for bad in (0, 1, 1.0, "yes"):
                with raises_naming(TypeError, flag):
                    selective_scan(**kw, **{flag: bad})
        for flag in ("delta_softplus", "return_last_state"):
            with raises_naming(TypeError, flag):
                selective_scan_ref(**kw, **{flag: 0})
        assert selective_scan(**kw, native=None).shape == (bsz, 4, 5)

"""The native SSD kernel (ssmkit.ops.ssd with native=True: a sequential recurrence per batch
element and head, and its reverse-scan backward) against the step-by-step reference ssd_ref:
outputs, final state and every gradient, float64 and float32, groups, edge cases, strides and
thread-count independence of the gradients."""
import importlib

import pytest
import torch

from ssmkit.ops import _native, ssd, ssd_ref

from helpers import assert_close_to_reference, raises_naming

ssd_module = importlib.import_module("ssmkit.ops.ssd")  # (ssmkit.ops.ssd is also the function)

needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")
f64 = torch.float64
NAMES = ["x", "dt", "A", "B", "C", "initial_state"]


def _inputs(b=2, L=23, H=4, P=6, G=2, N=5, seed=0, dtype=f64, decay=3.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64).to(dtype).requires_grad_()
    x, B, C = r(b, L, H, P), r(b, L, G, N), r(b, L, G, N)
    dt = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g, dtype=f64)).to(dtype).requires_grad_()
    A = (-torch.rand(H, generator=g, dtype=f64) * decay - 0.1).to(dtype).requires_grad_()
    h0 = r(b, H, P, N)
    return x, dt, A, B, C, h0


def _grads(fn, args, w, wh, use_y=True, use_h=True):
    """Outputs of ``fn(*args)`` and the gradients of <w, y> + <wh, h> for every argument."""
    x, dt, A, B, C, h0 = args
    y, h = fn(x, dt, A, B, C, initial_state=h0)
    loss = (y * w).sum() * use_y + (h * wh).sum() * use_h
    present = [a for a in args if a is not None]
    gs = iter(torch.autograd.grad(loss, present, allow_unused=True))
    return y, h, [next(gs) if a is not None else None for a in args]


def _native_fn(x, dt, A, B, C, initial_state=None):
    return ssd(x, dt, A, B, C, initial_state=initial_state, native=True)


@needs_native
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("L,every", [(1, 64), (23, 64), (23, 5), (40, 8), (37, 4)])
def test_native_float64_equals_reference(G, L, every, monkeypatch):
    """Values, final state and all six gradients (a gradient on the final state included) to
    1e-10 in float64; ``every`` is the restart interval of the backward's decay-gradient
    recursion, taken small here so that lengths that are not a multiple of it are covered."""
    monkeypatch.setattr(ssd_module, "restart_every", lambda L: every)
    args = _inputs(L=L, G=G, seed=L + G)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, L, 4, 6, generator=g, dtype=f64)
    wh = torch.randn(2, 4, 6, 5, generator=g, dtype=f64)
    y1, h1, g1 = _grads(_native_fn, args, w, wh)
    y2, h2, g2 = _grads(ssd_ref, args, w, wh)
    assert_close_to_reference(y1, y2, 1e-12, "y")
    assert_close_to_reference(h1, h2, 1e-12, "final state")
    for name, a, b in zip(NAMES, g1, g2):
        assert_close_to_reference(a, b, 1e-10, "d" + name)


@needs_native
@pytest.mark.parametrize("use_y,use_h", [(True, False), (False, True)])
def test_native_gradient_through_one_output_only_and_no_initial_state(use_y, use_h):
    """A loss on y alone (no gradient reaches the final state) or on the final state alone (no
    gradient reaches y); without an initial state."""
    x, dt, A, B, C, _ = _inputs(b=3, L=30, H=2, G=1, N=7, seed=5)
    args = (x, dt, A, B, C, None)
    g = torch.Generator().manual_seed(6)
    w = torch.randn(3, 30, 2, 6, generator=g, dtype=f64)
    wh = torch.randn(3, 2, 6, 7, generator=g, dtype=f64)
    _, _, g1 = _grads(_native_fn, args, w, wh, use_y, use_h)
    _, _, g2 = _grads(ssd_ref, args, w, wh, use_y, use_h)
    for name, a, b in zip(NAMES[:5], g1, g2):
        assert_close_to_reference(a, b, 1e-10, "d" + name)


@needs_native
def test_native_float32_against_float64_reference():
    """float32 kernel vs the float64 reference. Every output is a sum over the state's N
    products and over the past steps, each rounded with relative error 2^-24 ~ 6e-8; with
    sums of a few hundred terms of mixed signs the error stays around 1e-6 of the largest
    value, so 1e-5 (values) and 1e-4 (gradients: sums over P·N and over the sequence, and
    the decay gradient's recursion restarted every 64 steps) leave a margin of ~10x. The
    length crosses several restarts."""
    args = _inputs(b=2, L=150, H=4, P=8, G=2, N=16, seed=7, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 150, 4, 8, generator=g)
    wh = torch.randn(2, 4, 8, 16, generator=g)
    y1, h1, g1 = _grads(_native_fn, args, w, wh)
    args64 = [a.detach().double().requires_grad_() for a in args]
    y2, h2, g2 = _grads(ssd_ref, args64, w.double(), wh.double())
    assert y1.dtype == torch.float32 and h1.dtype == torch.float32
    assert_close_to_reference(y1.double(), y2, 1e-5, "y")
    assert_close_to_reference(h1.double(), h2, 1e-5, "final state")
    for name, a, b in zip(NAMES, g1, g2):
        assert a.dtype == torch.float32
        assert_close_to_reference(a.double(), b, 1e-4, "d" + name)


@needs_native
def test_native_matches_chunked_path_and_layer_shapes():
    """At a Mamba-2 layer's shape (headdim 64, d_state 64, heads sharing one group) the native
    and the chunked paths agree in float64, values and gradients."""
    args = _inputs(b=2, L=70, H=3, P=64, G=1, N=64, seed=9)
    g = torch.Generator().manual_seed(10)
    w = torch.randn(2, 70, 3, 64, generator=g, dtype=f64)
    wh = torch.randn(2, 3, 64, 64, generator=g, dtype=f64)
    y1, h1, g1 = _grads(_native_fn, args, w, wh)
    chunked = lambda *a, initial_state=None: ssd(*a, initial_state=initial_state, chunk_size=16, native=False)
    y2, h2, g2 = _grads(chunked, args, w, wh)
    assert_close_to_reference(y1, y2, 1e-12, "y")
    assert_close_to_reference(h1, h2, 1e-12, "final state")
    for name, a, b in zip(NAMES, g1, g2):
        assert_close_to_reference(a, b, 1e-10, "d" + name)


@needs_native
def test_native_batch_zero_and_length_one():
    x, dt, A, B, C, h0 = _inputs(b=0, L=4)
    y, h = ssd(x, dt, A, B, C, initial_state=h0, native=True)
    assert y.shape == (0, 4, 4, 6) and h.shape == (0, 4, 6, 5)
    gx, gh0 = torch.autograd.grad(y.sum() + h.sum(), [x, h0])
    assert gx.shape == x.shape and gh0.shape == h0.shape
    # one step: y = (dt x Bᵀ + exp(dt A) h0) C, by hand
    x, dt, A, B, C, h0 = (t.detach() for t in _inputs(b=1, L=1, H=2, G=1, seed=3))
    y, h = ssd(x, dt, A, B, C, initial_state=h0, native=True)
    a = torch.exp(dt[0, 0] * A)  # (H,)
    h_hand = a[:, None, None] * h0[0] + (dt[0, 0, :, None] * x[0, 0])[..., None] * B[0, 0, 0]
    torch.testing.assert_close(h[0], h_hand, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(y[0, 0], h_hand @ C[0, 0, 0], rtol=1e-14, atol=1e-14)


@needs_native
def test_native_gradients_do_not_depend_on_thread_count():
    """dB, dC (summed over the heads of a group) and dA (summed over the batch) come out
    bit-identical for 1, 2 and 3 threads: the kernel sums per-task partials in a fixed order."""
    args = _inputs(b=3, L=41, H=6, P=8, G=2, N=16, seed=11)
    g = torch.Generator().manual_seed(12)
    w = torch.randn(3, 41, 6, 8, generator=g, dtype=f64)
    wh = torch.randn(3, 6, 8, 16, generator=g, dtype=f64)
    old = torch.get_num_threads()
    res = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            res.append(_grads(_native_fn, args, w, wh))
    finally:
        torch.set_num_threads(old)
    for y, h, gs in res[1:]:
        assert torch.equal(y, res[0][0]) and torch.equal(h, res[0][1])
        for name, a, b in zip(NAMES, gs, res[0][2]):
            assert torch.equal(a, b), f"d{name} changed with the thread count"


@needs_native
def test_native_non_contiguous_inputs():
    """Strided views (a transposed x, B and C sliced out of one tensor, a strided dt and h0)
    give exactly the results of their contiguous copies, gradients included."""
    b, L, H, P, G, N = 2, 19, 4, 5, 2, 3
    g = torch.Generator().manual_seed(4)
    x = torch.randn(b, H, L, P, generator=g, dtype=f64).transpose(1, 2).requires_grad_()  # storage (b, H, L, P)
    BC = torch.randn(b, L, G, 2 * N, generator=g, dtype=f64)
    B, C = BC[..., :N].requires_grad_(), BC[..., N:].requires_grad_()
    dt = torch.rand(b, H, L, generator=g, dtype=f64).transpose(1, 2).requires_grad_()
    A = (-torch.rand(2 * H, generator=g, dtype=f64))[::2].requires_grad_()
    h0 = torch.randn(b, H, N, P, generator=g, dtype=f64).transpose(-1, -2).requires_grad_()
    args = (x, dt, A, B, C, h0)
    assert not any(t.is_contiguous() for t in args)
    w = torch.randn(b, L, H, P, generator=g, dtype=f64)
    wh = torch.randn(b, H, P, N, generator=g, dtype=f64)
    y1, h1, g1 = _grads(_native_fn, args, w, wh)
    dense = [t.detach().contiguous().requires_grad_() for t in args]
    y2, h2, g2 = _grads(_native_fn, dense, w, wh)
    assert torch.equal(y1, y2) and torch.equal(h1, h2)
    for name, a, b_ in zip(NAMES, g1, g2):
        assert torch.equal(a, b_), "d" + name
    _, _, g3 = _grads(ssd_ref, args, w, wh)
    for name, a, b_ in zip(NAMES, g1, g3):
        assert_close_to_reference(a, b_, 1e-10, "d" + name)


@needs_native
def test_native_long_sequence_strong_decay_float32():
    """A long float32 sequence with strong and weak decays (|A| from 0.1 to 8), where the
    backward's decay-gradient recursion (restarted every 16 steps) meets the most
    cancellation. dA sums dt_t·D_t over 700 steps, terms of both signs much larger than the
    sum, so its error relative to |dA| is amplified: 2e-4 (the chunked torch path is off by
    about 4e-5 here, the native kernel by about 3e-5); the other gradients to 1e-5."""
    args = _inputs(b=1, L=700, H=4, P=4, G=1, N=8, seed=13, dtype=torch.float32, decay=8.0)
    g = torch.Generator().manual_seed(14)
    w = torch.randn(1, 700, 4, 4, generator=g)
    wh = torch.randn(1, 4, 4, 8, generator=g)
    _, _, g1 = _grads(_native_fn, args, w, wh)
    args64 = [a.detach().double().requires_grad_() for a in args]
    _, _, g2 = _grads(ssd_ref, args64, w.double(), wh.double())
    for name, a, b in zip(NAMES, g1, g2):
        assert_close_to_reference(a.double(), b, 2e-4 if name == "A" else 1e-5, "d" + name)


def test_native_argument_and_fallback(monkeypatch):
    x, dt, A, B, C, h0 = (t.detach() for t in _inputs(L=9))
    with raises_naming(TypeError, "native"):
        ssd(x, dt, A, B, C, native=1)
    monkeypatch.setenv("SSMKIT_NATIVE", "0")
    assert not _native.available()
    with pytest.raises(RuntimeError, match="native"):
        ssd(x, dt, A, B, C, native=True)
    y, h = ssd(x, dt, A, B, C, initial_state=h0)  # silently the chunked path
    y2, h2 = ssd_ref(x, dt, A, B, C, initial_state=h0)
    assert_close_to_reference(y, y2, 1e-12, "y")
    assert_close_to_reference(h, h2, 1e-12, "final state")

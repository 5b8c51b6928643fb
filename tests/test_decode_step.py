"""The fused native decoding paths agree with the torch paths they replace.

- ``ssmkit.ops.decode_step.mamba_step`` / ``mamba2_step`` (reached through the layers' ``step``)
  against the layers' ``torch_step`` (the torch reference), float32 and float64, batch 1 and 3,
  with and without conv bias, 1 and 2 groups, a Δ clamp, both gated-norm orders;
- ``step_`` (in place) leaves in the state's own tensors what ``step`` returns;
- ``rows_matmul`` against a float64 ``F.linear``;
- a layer with bfloat16 projections steps in one native call, bit for bit as the composed step;
- ``LanguageModel.generate`` gives the same tokens and final logits with the native kernels
  disabled (``SSMKIT_NATIVE=0``: the torch path everywhere).
"""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close_to_reference
from ssmkit import Backbone, LanguageModel
from ssmkit.layers import Mamba, Mamba2
from ssmkit.layers.mamba_family import fused_step, negative_A, rows_linear
from ssmkit.ops import _native, decode_step

pytestmark = pytest.mark.skipif(not _native.available(), reason="needs the native kernels (a C compiler)")

# float32: one rounding per operation, a few dozen sums of d_state or width terms -> ~1e-6
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _perturbed(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _layers(dtype):
    return [
        Mamba(24, d_state=8, dtype=dtype),
        Mamba(24, d_state=8, d_conv=3, conv_bias=False, bias=True, dtype=dtype),
        Mamba2(32, d_state=16, headdim=8, dtype=dtype),
        Mamba2(32, d_state=16, headdim=8, ngroups=2, conv_bias=False, dt_limit=(0.01, 0.05),
               norm_before_gate=True, bias=True, dtype=dtype),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_native_step_equals_torch_step(dtype, batch):
    torch.manual_seed(0)
    for layer in _layers(dtype):
        layer = _perturbed(layer)
        state = tuple(torch.randn_like(t) for t in layer.initial_state(batch))
        x = torch.randn(batch, layer.d_model, dtype=dtype)
        with torch.no_grad():
            assert decode_step.applies(*state, layer.conv1d.weight)
            y, new = layer.step(x, state)
            y_ref, new_ref = layer.torch_step(x, state)
            own = tuple(t.clone() for t in state)
            y_inplace = layer.step_(x, own)
        name = type(layer).__name__
        assert_close_to_reference(y, y_ref, TOL[dtype], f"{name} output")
        for a, b, c, what in zip(new, new_ref, own, ("conv window", "ssm state")):
            assert_close_to_reference(a, b, TOL[dtype], f"{name} {what}")
            assert torch.equal(c, a), f"{name} {what}: step_ differs from step"
        assert torch.equal(y_inplace, y)
        # the input state is untouched by step (only step_ writes into it)
        assert not any(torch.equal(s, n) for s, n in zip(state, new))


def test_under_autograd_step_uses_the_torch_path_and_has_gradients():
    torch.manual_seed(1)
    layer = _perturbed(Mamba2(16, d_state=8, headdim=8))
    state = layer.initial_state(2)
    x = torch.randn(2, 16, requires_grad=True)
    y, _ = layer.step(x, state)
    y.sum().backward()
    assert x.grad is not None and layer.A_log.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_linear_equals_the_module_for_any_number_of_rows(dtype):
    """One to eight float32 rows take the native kernel, more rows and float64 BLAS's
    matrix-vector form: all equal the module to rounding."""
    torch.manual_seed(8)
    lin = torch.nn.Linear(45, 37, dtype=dtype)
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    for rows in (1, 2, 8, 9, 33):
        x = torch.randn(rows, 45, dtype=dtype)
        with torch.no_grad():
            assert_close_to_reference(rows_linear(lin, x).double(), F.linear(x.double(), W, b), TOL[dtype],
                                      f"{rows} rows")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("K", [45, 61])  # the kernels' blocks of 32 and 16 columns, and a tail
def test_rows_matmul_equals_linear(dtype, rows, K):
    torch.manual_seed(rows)
    W = torch.randn(37, K).to(dtype)
    bias = torch.randn(37).to(dtype)
    x = torch.randn(rows, K).to(dtype)
    for b in (None, bias):
        y = decode_step.rows_matmul(x, W, b)
        ref = F.linear(x.double(), W.double(), None if b is None else b.double())
        assert y.dtype == dtype
        # float32: sums of K products; bfloat16: the result is rounded to 8 mantissa bits (2^-8)
        assert_close_to_reference(y.double(), ref, 1e-6 if dtype == torch.float32 else 2 ** -8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K", [61, 1100])  # 3+ rows: two weight streams by four rows up to K = 1024, else four by two
def test_rows_matmul_gives_the_same_numbers_for_any_thread_count_and_number_of_rows(dtype, K):
    # the kernel groups weight rows into tiles by thread range (rows a quarter or a half of a range
    # apart) and rows of x by twos or fours; every output must still be the same sum, bit for bit,
    # whatever the grouping
    torch.manual_seed(0)
    W = torch.randn(37, K).to(dtype)
    x = torch.randn(5, K).to(dtype)
    old = torch.get_num_threads()
    whole = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for M in (37, 9, 3):  # ranges of several tiles, of one tile and a tail, of a tail only
                full = decode_step.rows_matmul(x, W[:M])
                for n in (2, 3, 4):
                    assert torch.equal(decode_step.rows_matmul(x[:n], W[:M]), full[:n])
                for b in range(5):
                    assert torch.equal(decode_step.rows_matmul(x[b:b + 1], W[:M]), full[b:b + 1])
                    assert torch.equal(decode_step.rows_matmul(x[b:b + 1], W[M - 1:M])[0, 0], full[b, M - 1])
            whole.append(decode_step.rows_matmul(x, W))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(y, whole[0]) for y in whole[1:])


def test_rows_matmul_declines_what_it_cannot_run():
    W = torch.randn(4, 3)
    assert decode_step.rows_matmul(torch.randn(2, 3, dtype=torch.float64), W.double()) is None
    assert decode_step.rows_matmul(torch.randn(2, 3).double(), W) is None
    with torch.enable_grad():
        assert decode_step.rows_matmul(torch.randn(2, 3), W.requires_grad_()) is None


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("batch", [1, 4])
def test_generate_same_tokens_and_logits_with_and_without_native(kind, batch, monkeypatch):
    torch.manual_seed(2)
    kw = {"d_state": 8} if kind == "mamba" else {"d_state": 16, "headdim": 16, "chunk_size": 8}
    bb = Backbone(32, 2, kind, kw, vocab_size=50, norm="rms", residual_in_fp32=True, pad_vocab_size_multiple=8)
    model = LanguageModel(bb, tie_embeddings=True, head_bias=False).eval()
    prompt = torch.randint(0, 50, (batch, 7))
    fast = model.generate(prompt, 12, temperature=0)
    monkeypatch.setenv("SSMKIT_NATIVE", "0")
    assert decode_step.rows_matmul(torch.randn(2, 32), model.head.weight.detach()) is None
    slow = model.generate(prompt, 12, temperature=0)
    assert torch.equal(fast, slow)
    # the logits after the generated tokens, from the states decode leaves: equal within float32
    with torch.no_grad():
        ref = model(fast)[:, -1]
        monkeypatch.delenv("SSMKIT_NATIVE")
        _, states = model(fast[:, :-1], return_state=True)
        logits, _ = model.step(fast[:, -1], states)
    assert_close_to_reference(logits, ref, 1e-5, "logits")


@pytest.mark.parametrize("batch", [1, 3])
def test_bfloat16_weights_fused_step_matches_float32_and_the_torch_path(batch):
    """bfloat16 weights, float32 state: the fused step runs in float32 on widened copies of the
    small parameters. Against the same (rounded) weights in float32 and against the bfloat16
    torch path: within bfloat16 rounding of the projections' inputs and outputs (2^-8 relative
    per rounding, a few of them)."""
    torch.manual_seed(3)
    for layer in _layers(torch.float32):
        layer = _perturbed(layer)
        half = type(layer)(**_config(layer), dtype=torch.bfloat16)
        half.load_state_dict(layer.state_dict())
        layer.load_state_dict(half.state_dict())  # the float32 layer holds the rounded weights
        state32 = tuple(torch.randn_like(t) for t in layer.initial_state(batch))
        state16 = (state32[0].to(torch.bfloat16), state32[1])
        layer_state = (state16[0].float(), state32[1])
        x = torch.randn(batch, layer.d_model).to(torch.bfloat16)
        with torch.no_grad():
            y, new = half.step(x, state16)
            y_torch, new_torch = half.torch_step(x, state16)
            y32, new32 = layer.step(x.float(), layer_state)
            own = tuple(t.clone() for t in state16)
            y_inplace = half.step_(x, own)
        name = type(layer).__name__
        assert y.dtype == torch.bfloat16 and new[0].dtype == torch.bfloat16 and new[1].dtype == torch.float32
        assert_close_to_reference(y.float(), y32, 2e-2, f"{name} against float32")
        assert_close_to_reference(y.float(), y_torch.float(), 3e-2, f"{name} against the bfloat16 torch path")
        assert_close_to_reference(new[1], new32[1], 2e-2, f"{name} state against float32")
        assert torch.equal(new[0], new_torch[0])  # the window holds in_proj outputs, already bfloat16
        assert torch.equal(y_inplace, y) and all(torch.equal(a, b) for a, b in zip(own, new))


@pytest.mark.parametrize("batch", [1, 3])
def test_bfloat16_layer_step_in_one_call_equals_the_composed_step(batch, monkeypatch):
    """bfloat16 projections, float32 residual and state: the whole layer in one native call
    (``native_layer_call``) rounds where the composed step rounds (x to bfloat16, in_proj output,
    y before out_proj, out_proj output) and runs the same kernels in between, so the two agree
    bit for bit; the window comes back in bfloat16, the state in float32, written in place."""
    torch.manual_seed(7)
    calls = []
    for name in ("mamba_layer_step", "mamba2_layer_step"):
        fn = getattr(decode_step, name)
        monkeypatch.setattr(decode_step, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    for layer in _layers(torch.float32):
        half = type(layer)(**_config(layer), dtype=torch.bfloat16)
        half.load_state_dict(_perturbed(layer).state_dict())
        state = (torch.randn_like(half.initial_state(batch)[0]), torch.randn(half.initial_state(batch)[1].shape))
        x = torch.randn(batch, half.d_model)  # the float32 residual stream
        c, ip, op = half.conv1d, half.in_proj, half.out_proj
        A = negative_A(half.A_log, half._A_cache)
        if isinstance(half, Mamba):
            kernel, params, kw = decode_step.mamba_step, (c.weight, c.bias, half.x_proj.weight, half.dt_proj.weight,
                                                          half.dt_proj.bias, A, half.D), {}
        else:
            kernel, params = decode_step.mamba2_step, (c.weight, c.bias, half.dt_bias, A, half.D, half.norm.weight)
            kw = dict(headdim=half.headdim, ngroups=half.ngroups, d_state=half.d_state, dt_limit=half.dt_limit,
                      eps=half.norm.eps, norm_before_gate=half.norm.norm_before_gate)
        with torch.no_grad():
            own = tuple(t.clone() for t in state)
            y_one = half.step_(x, own)  # in place: the one-call path
            y, new = fused_step(kernel, rows_linear(ip, x.to(torch.bfloat16)), state, None, params, half._A_cache, **kw)
            y_ref = rows_linear(op, y.to(torch.bfloat16)).float()
        name = type(half).__name__
        assert calls and calls.pop() == ("mamba_layer_step" if isinstance(half, Mamba) else "mamba2_layer_step")
        assert y_one.dtype == torch.float32 and own[0].dtype == torch.bfloat16 and own[1].dtype == torch.float32
        assert torch.equal(y_one, y_ref), f"{name}: output differs from the composed step"
        assert torch.equal(own[0], new[0]) and torch.equal(own[1], new[1]), f"{name}: state differs"


def _config(layer):
    if isinstance(layer, Mamba):
        return dict(d_model=layer.d_model, d_state=layer.d_state, d_conv=layer.d_conv,
                    conv_bias=layer.conv1d.bias is not None, bias=layer.in_proj.bias is not None)
    return dict(d_model=layer.d_model, d_state=layer.d_state, headdim=layer.headdim, ngroups=layer.ngroups,
                conv_bias=layer.conv1d.bias is not None, bias=layer.in_proj.bias is not None, dt_limit=layer.dt_limit,
                norm_before_gate=layer.norm.norm_before_gate)


def test_a_state_of_another_dtype_than_the_weights_takes_the_torch_path():
    torch.manual_seed(4)
    layer = _perturbed(Mamba(16, d_state=4))
    state = tuple(torch.randn_like(t).double() for t in layer.initial_state(2))
    x = torch.randn(2, 16)
    with torch.no_grad():
        y, new = layer.step(x, state)
        y_ref, new_ref = layer.torch_step(x, state)
    assert torch.equal(y, y_ref) and all(torch.equal(a, b) for a, b in zip(new, new_ref))


def test_add_rms_norm_equals_residual_add_then_rms_norm():
    torch.manual_seed(5)
    r, h, w = torch.randn(3, 40), torch.randn(3, 40), torch.randn(40)
    r0 = r.clone()
    out = decode_step.add_rms_norm(h, r, w, 1e-5)
    ref = F.rms_norm((r0 + h).double(), (40,), w.double(), 1e-5)
    assert_close_to_reference(r, r0 + h, 1e-7, "residual")
    assert_close_to_reference(out.double(), ref, 1e-6, "normed")
    assert_close_to_reference(decode_step.add_rms_norm(None, r0, w, 1e-5).double(),
                              F.rms_norm(r0.double(), (40,), w.double(), 1e-5), 1e-6, "normed without h")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backbone_step_with_fused_norms_equals_the_block_by_block_step(dtype):
    """float32: the same numbers up to float32 rounding. bfloat16 weights with a float32 residual:
    the fused path normalises the float32 residual (float32 copies of the norm weights) where the
    block-by-block step rounds it to bfloat16 first, so they agree to bfloat16 rounding (2^-8
    relative per rounding, a few of them through three layers)."""
    torch.manual_seed(6)
    bb = Backbone(32, 3, "mamba", {"d_state": 8}, vocab_size=40, norm="rms", residual_in_fp32=True,
                  dtype=dtype).eval()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    tokens = torch.randint(0, 40, (2,))
    with torch.no_grad():
        weights = bb._fused_rms_weights()
        assert weights is not None and all(w.dtype == torch.float32 for w in weights)
        states = [tuple(torch.randn_like(t) for t in s) for s in bb.initial_state(2)]
        ref, ref_states = bb.step(tokens, [tuple(t.clone() for t in s) for s in states])
        own = [tuple(t.clone() for t in s) for s in states]
        from ssmkit._checks import trusted_inputs
        with trusted_inputs():
            out = bb.step_(tokens, own)
    assert_close_to_reference(out.float(), ref.float(), tol, "features")
    for a, b in zip(own, ref_states):
        assert_close_to_reference(a[1], b[1], tol, "state")


def _stack_backbone(layer, dtype, **kw):
    opts = {"d_state": 8} if layer == "mamba" else {"d_state": 8, "headdim": 8, "ngroups": 2}
    bb = Backbone(32, 3, layer, {**opts, **kw}, vocab_size=40, norm="rms", residual_in_fp32=True, dtype=dtype).eval()
    with torch.no_grad():  # non-trivial norm weights and SSM parameters
        for n, p in bb.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return bb


@pytest.mark.parametrize("layer", ["mamba", "mamba2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_whole_stack_in_one_native_call_equals_the_layer_by_layer_path(layer, dtype, batch, monkeypatch):
    """``Backbone.step_`` runs every block of a pre-norm RMSNorm Mamba / Mamba-2 stack in one
    native call (``StackStep``): the same native layer steps and fused norms as the layer-by-layer
    path, in the same order, so the features and the states agree bit for bit, over several
    tokens (the states are updated in place)."""
    from ssmkit._checks import trusted_inputs
    from ssmkit.models import backbone as backbone_module

    torch.manual_seed(8)
    bb = _stack_backbone(layer, dtype)
    states = [tuple(torch.randn_like(t) for t in s) for s in bb.initial_state(batch)]
    a = [tuple(t.clone() for t in s) for s in states]
    b = [tuple(t.clone() for t in s) for s in states]
    with torch.no_grad(), trusted_inputs():
        assert bb._stack_plan() is not None, "the one-call plan should apply here"
        outs = [bb.step_(torch.randint(0, 40, (batch,), generator=torch.Generator().manual_seed(i)), a) for i in range(3)]
        monkeypatch.setattr(backbone_module.Backbone, "_stack_plan", lambda self: None)
        refs = [bb.step_(torch.randint(0, 40, (batch,), generator=torch.Generator().manual_seed(i)), b) for i in range(3)]
    for o, r in zip(outs, refs):
        assert o.dtype == torch.float32 and torch.equal(o, r)
    for (wa, ha), (wb, hb) in zip(a, b):
        assert torch.equal(wa, wb) and torch.equal(ha, hb)


def test_the_one_call_plan_follows_changes_to_the_model():
    """The plan holds raw pointers: it is rebuilt when a parameter changes in place, is replaced,
    when a layer is swapped, or an option it read changes; the answers always equal the
    layer-by-layer path on the current model."""
    from ssmkit._checks import trusted_inputs

    torch.manual_seed(9)
    bb = _stack_backbone("mamba2", torch.float32)
    tokens = torch.randint(0, 40, (2,))

    def both():
        states = [tuple(torch.randn_like(t) for t in s) for s in bb.initial_state(2)]
        with torch.no_grad(), trusted_inputs():
            plan = bb._stack_plan()
            fast = bb.step_(tokens, [tuple(t.clone() for t in s) for s in states])
            ref, _ = bb.step(tokens, [tuple(t.clone() for t in s) for s in states])
        assert_close_to_reference(fast, ref, 1e-5, "features")
        return plan

    p0 = both()
    assert p0 is not None and both() is p0  # reused while nothing changes
    with torch.no_grad():
        bb.blocks[1].layer.out_proj.weight.mul_(2)  # in place
    p1 = both()
    assert p1 is not p0
    bb.blocks[0].norm.weight = torch.nn.Parameter(torch.rand(32) + 0.5)  # replaced
    p2 = both()
    assert p2 is not p1
    bb.blocks[2].layer.norm.eps = 1e-2  # an option of one layer's step: the layers differ, no plan
    assert both() is None
    for blk in bb.blocks:
        blk.layer.norm.eps = 1e-2
    p3 = both()
    assert p3 is not None and p3 is not p2 and p3.options["eps"] == 1e-2
    bb.blocks[2].layer = Mamba(32, d_state=8).eval()  # mixed layer kinds: no one-call plan
    assert both() is None
    import copy
    import pickle
    clone = copy.deepcopy(bb)  # the plan stays out of the module: copying and pickling work
    pickle.loads(pickle.dumps(clone))


def test_states_that_do_not_fit_the_plan_take_the_layer_by_layer_path():
    """Non-contiguous states: the one-call plan declines (nothing written) and the layer-by-layer
    path answers, equal to ``step``."""
    from ssmkit._checks import trusted_inputs

    torch.manual_seed(10)
    bb = _stack_backbone("mamba", torch.float32)
    tokens = torch.randint(0, 40, (2,))
    base = [tuple(torch.randn_like(t) for t in s) for s in bb.initial_state(2)]
    odd = [(w.transpose(1, 2).contiguous().transpose(1, 2), h.clone()) for w, h in base]  # same values, other strides
    assert not odd[0][0].is_contiguous()
    with torch.no_grad(), trusted_inputs():
        plan = bb._stack_plan()
        assert plan is not None
        assert plan(bb._residual_input(tokens), odd) is None
        fast = bb.step_(tokens, odd)
        ref, _ = bb.step(tokens, [tuple(t.clone() for t in s) for s in base])
    assert_close_to_reference(fast, ref, 1e-5, "features")


def test_two_threads_decoding_one_model_keep_their_own_states():
    """The plan's pointer tables are per set of states: two threads stepping the same model with
    their own states (the native call releases the GIL) get what each would get alone."""
    import threading

    from ssmkit._checks import trusted_inputs

    torch.manual_seed(11)
    bb = _stack_backbone("mamba2", torch.float32)
    seqs = [torch.randint(0, 40, (20, 2)) for _ in range(2)]
    init = [[tuple(torch.randn_like(t) for t in s) for s in bb.initial_state(2)] for _ in range(2)]

    def run(i, out):
        states = [tuple(t.clone() for t in s) for s in init[i]]
        with torch.no_grad(), trusted_inputs():
            out[i] = torch.stack([bb.step_(tok, states) for tok in seqs[i]])

    alone = {}
    for i in range(2):
        run(i, alone)
    together = {}
    threads = [threading.Thread(target=run, args=(i, together)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert torch.equal(together[i], alone[i])


def test_stack_step_refuses_layers_it_cannot_run_together():
    bb = _stack_backbone("mamba", torch.float32)
    with torch.no_grad():
        calls = [b.layer.native_layer_call() for b in bb.blocks]
        norms = bb._fused_rms_weights()
    eps = [1e-5] * len(norms)
    with pytest.raises(ValueError, match="no layers"):
        decode_step.StackStep([], norms[:1], eps[:1])
    with pytest.raises(ValueError, match="norms"):
        decode_step.StackStep(calls, norms[:-1], eps[:-1])
    other = _stack_backbone("mamba", torch.float32, d_state=4)
    with torch.no_grad():
        mixed = calls[:1] + [other.blocks[0].layer.native_layer_call()]
    with pytest.raises(ValueError, match="same kernel, options and shapes"):
        decode_step.StackStep(mixed, norms[:3], eps[:3])
    plan = decode_step.StackStep(calls, norms, eps)
    assert plan(torch.zeros(2, 31), bb.initial_state(2)) is None  # a wrong width: declined, nothing run


def test_native_step_stays_finite_where_silu_saturates():
    """Inputs that drive the conv output far below -88 (float32's exp overflows): silu is -0 to
    float32, and the native step (compiled with -ffast-math, where v / (1 + inf) is NaN) must give
    the torch step's finite values."""
    torch.manual_seed(0)
    for layer in _layers(torch.float32)[:3:2]:  # Mamba, Mamba-2
        layer = _perturbed(layer)
        state = tuple(300 * torch.randn_like(t) for t in layer.initial_state(2))
        x = 300 * torch.randn(2, layer.d_model)
        with torch.no_grad():
            y, new = layer.step(x, state)
            y_ref, new_ref = layer.torch_step(x, state)
        name = type(layer).__name__
        assert bool(torch.isfinite(y_ref).all()), name  # the case is meaningful: the reference is finite
        assert bool(torch.isfinite(y).all()), name
        assert_close_to_reference(y, y_ref, TOL[torch.float32], f"{name} output")

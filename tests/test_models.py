"""Backbone and heads: norm types and placement, fp32 residual, tied embeddings and vocabulary
padding, left-padded batches, factory arguments, named errors; the Mamba family's shared
causal conv and Mamba-2's grouped gated norm against plain references."""
import pytest
import torch
import torch.nn.functional as F

from ssmkit.layers import Mamba, Mamba2
from ssmkit.layers.mamba_family import CausalConv
from ssmkit.models import Backbone, LanguageModel, SequenceClassifier

from helpers import assert_close_to_reference, raises_naming

f64 = torch.float64


def _lm(layer="mamba", **kw):
    layer_kw = {"d_state": 4} if layer == "mamba" else {"d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 4}
    bb_kw = {k: kw.pop(k) for k in list(kw) if k in ("norm", "prenorm", "residual_in_fp32", "pad_vocab_size_multiple",
                                                     "norm_eps", "dropout", "dtype")}
    return LanguageModel(Backbone(16, 2, layer, layer_kw, vocab_size=kw.pop("vocab_size", 13), **bb_kw), **kw)


@torch.no_grad()
def _steps(model, x):
    states = model.backbone.initial_state(x.shape[0], dtype=model.head.weight.dtype)
    outs = []
    for t in range(x.shape[1]):
        o, states = model.step(x[:, t], states)
        outs.append(o)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("opts", [dict(norm="rms", residual_in_fp32=True), dict(norm="layer", prenorm=False),
                                  dict(norm="batch"), dict(norm="rms", norm_eps=1e-3)])
@pytest.mark.parametrize("layer", ["mamba", "mamba2", "s4d"])
def test_norm_options_forward_equals_step(opts, layer):
    torch.manual_seed(0)
    if layer == "s4d":
        model = LanguageModel(Backbone(16, 2, "s4d", {"d_state": 8}, vocab_size=13, **opts)).double().eval()
    else:
        model = _lm(layer, **opts).double().eval()
    x = torch.randint(0, 13, (2, 9))
    assert_close_to_reference(_steps(model, x), model(x), 1e-9, "step vs forward")
    norm = model.backbone.blocks[0].norm
    assert type(norm).__name__ == {"rms": "RMSNorm", "layer": "LayerNorm", "batch": "_BatchNorm"}[opts["norm"]]
    if not opts.get("prenorm", True):
        assert isinstance(model.backbone.norm, torch.nn.Identity)


def test_rms_norm_and_post_norm_against_formulas():
    torch.manual_seed(1)
    bb = Backbone(8, 1, "mamba", {"d_state": 4}, d_input=3, norm="rms", norm_eps=1e-4).double()
    with torch.no_grad():
        bb.norm.weight.uniform_(0.5, 1.5)
    h = torch.randn(2, 5, 8, dtype=f64)
    expected = bb.norm.weight * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-4)
    assert_close_to_reference(bb.norm(h), expected, 1e-14, "RMSNorm")
    post = Backbone(8, 1, "mamba", {"d_state": 4}, d_input=3, prenorm=False).double()
    x = torch.randn(2, 5, 3, dtype=f64)
    blk = post.blocks[0]
    e = post.encoder(x)
    assert_close_to_reference(post(x), blk.norm(e + blk.layer(e)), 1e-14, "post-norm block")


def test_fp32_residual_and_half_precision_weights():
    torch.manual_seed(2)
    model = _lm("mamba2", norm="rms", residual_in_fp32=True).eval()
    x = torch.randint(0, 13, (2, 7))
    ref = model(x)
    half = _lm("mamba2", norm="rms", residual_in_fp32=True).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    feats = half.backbone(x)
    assert feats.dtype == torch.bfloat16  # the final norm returns the weights' dtype
    assert half.backbone.initial_state(2)[0][1].dtype == torch.float32  # state in float32
    assert_close_to_reference(half(x).float(), ref, 5e-2, "bfloat16 logits")
    assert_close_to_reference(_steps(half, x).float(), half(x).float(), 5e-2, "bfloat16 step vs forward")


def test_tied_embeddings_vocabulary_padding_and_head_without_bias():
    model = _lm(vocab_size=13, pad_vocab_size_multiple=8, tie_embeddings=True, head_bias=False)
    assert model.backbone.padded_vocab_size == 16 and model.backbone.encoder.weight.shape == (16, 16)
    assert model.head.weight is model.backbone.encoder.weight and model.head.bias is None
    assert model(torch.randint(0, 13, (1, 4))).shape == (1, 4, 16)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in _lm(vocab_size=13).parameters())
    with raises_naming(ValueError, "num_classes"):
        _lm(vocab_size=13, pad_vocab_size_multiple=8, tie_embeddings=True, num_classes=13)
    with raises_naming(ValueError, "pad_vocab_size_multiple"):
        _lm(pad_vocab_size_multiple=0)


@pytest.mark.parametrize("layer", ["mamba", "mamba2", "s4d"])
def test_left_padded_batch_equals_each_sequence_alone(layer):
    torch.manual_seed(3)
    if layer == "s4d":
        model = LanguageModel(Backbone(16, 2, "s4d", {"d_state": 8}, vocab_size=13)).double().eval()
    else:
        model = _lm(layer).double().eval()
    lengths = [9, 4, 1]
    x = torch.randint(1, 13, (3, 9))
    mask = torch.arange(9)[None] >= 9 - torch.tensor(lengths)[:, None]  # left padding
    x = torch.where(mask, x, torch.zeros_like(x))
    logits, states = model(x, mask=mask, return_state=True)
    assert bool((logits[~mask] == model.head.bias).all())  # padded positions: zero features
    for i, n in enumerate(lengths):
        alone, s_alone = model(x[i:i + 1, 9 - n:], return_state=True)
        assert_close_to_reference(logits[i:i + 1, 9 - n:], alone, 1e-12, f"row {i}")
        for a, b in zip(states, s_alone):  # the state is untouched by the leading pad tokens
            for ta, tb in zip(a if isinstance(a, (tuple, list)) else [a], b if isinstance(b, (tuple, list)) else [b]):
                assert_close_to_reference(ta[i:i + 1], tb, 1e-12, f"state of row {i}")
    # generation continues each row from its own last token
    out = model.generate(x, 5, temperature=0, mask=mask)
    for i, n in enumerate(lengths):
        assert torch.equal(out[i, 9:], model.generate(x[i:i + 1, 9 - n:], 5, temperature=0)[0, n:])
    with raises_naming(ValueError, "mask"):  # neither left nor right padding
        model(x, mask=torch.tensor([[True, False] * 4 + [True]] * 3))


def test_factory_arguments_and_named_errors():
    for cls, kw in ((Mamba, {}), (Mamba2, {"headdim": 8})):
        layer = cls(16, device="cpu", dtype=f64, **kw)
        assert {p.dtype for p in layer.parameters()} == {f64}
        assert layer.initial_state(2)[1].dtype == f64
    m = LanguageModel(Backbone(16, 1, "mamba2", {"headdim": 8}, vocab_size=9, dtype=f64, device="cpu"), head_bias=False,
                      dtype=f64, device="cpu")
    assert {p.dtype for p in m.parameters()} == {f64}
    c = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=2, dtype=f64), 3, dtype=f64)
    assert {p.dtype for p in c.parameters()} == {f64}
    with raises_naming(ValueError, "vocab_size"):
        Backbone(8, 1, "mamba", vocab_size=0)
    with raises_naming(ValueError, "num_classes"):
        LanguageModel(Backbone(8, 1, "mamba", vocab_size=5), 0)
    with raises_naming(ValueError, "num_classes"):
        SequenceClassifier(Backbone(8, 1, "s4d", d_input=1), 0)
    with raises_naming(ValueError, "norm"):
        Backbone(8, 1, "s4d", norm="group")
    with raises_naming(ValueError, "dt_limit"):
        Mamba2(16, headdim=8, dt_limit=(0.1, 0.01))
    model = _lm()
    states = model.backbone.initial_state(2)
    with raises_naming(ValueError, "states"):
        model.step(torch.tensor([1, 2]), states[:1])
    with raises_naming(ValueError, "x_t"):
        model.step(torch.tensor([1, 99]), states)
    # the model checks its input once, at the entry (its layers then skip full-tensor checks)
    with raises_naming(ValueError, "x"):
        Backbone(8, 1, "mamba", {"d_state": 4}, d_input=2)(torch.full((1, 3, 2), float("nan")))
    # an empty batch: empty outputs, no error
    assert model(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 13)
    logits, st = model(torch.zeros(0, 5, dtype=torch.long), return_state=True)
    assert st[0][1].shape[0] == 0
    assert model.step(torch.zeros(0, dtype=torch.long), st)[0].shape == (0, 13)
    clf = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3)
    assert clf(torch.zeros(0, 4, 1)).shape == (0, 3)


def test_causal_conv_against_padded_conv1d_and_steps():
    torch.manual_seed(4)
    conv = CausalConv(6, 4, device="cpu", dtype=f64)
    x = torch.randn(2, 6, 11, dtype=f64)
    expected = F.conv1d(F.pad(x, (3, 0)), conv.weight, conv.bias, groups=6)
    y, window = conv(x, return_window=True)
    assert_close_to_reference(y, expected, 1e-14, "forward")
    assert torch.equal(window, x[..., -3:])
    # in pieces, and token by token, from the carried window
    y1, w1 = conv(x[..., :2], return_window=True)  # shorter than the window
    y2, w2 = conv(x[..., 2:], w1, return_window=True)
    assert_close_to_reference(torch.cat([y1, y2], -1), expected, 1e-14, "pieces")
    w = torch.zeros(2, 6, 3, dtype=f64)
    steps = []
    for t in range(11):
        yt, w = conv.step(x[..., t], w)
        steps.append(yt)
    assert_close_to_reference(torch.stack(steps, -1), expected, 1e-14, "steps")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_causal_conv_in_half_precision_equals_the_float64_product_rounded(dtype):
    """Half-precision input on the CPU: the product is taken in float32 (torch's half-precision
    depthwise conv runs channel by channel); against the float64 product of the same rounded
    numbers, rounded once to the half dtype: within one rounding (2^-8 bfloat16, 2^-11 float16)."""
    torch.manual_seed(8)
    conv = CausalConv(12, 4, dtype=dtype)
    x, w0 = torch.randn(2, 12, 9).to(dtype), torch.randn(2, 12, 3).to(dtype)
    y, window = conv(x, w0, return_window=True)
    ref = F.conv1d(torch.cat([w0, x], -1).double(), conv.weight.double(), conv.bias.double(), groups=12)
    assert y.dtype == dtype and torch.equal(window, x[..., -3:])
    tol = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    assert ((y.double() - ref).abs() <= tol * ref.abs() + 1e-6).all()


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_mamba2_grouped_gated_norm_against_the_formula(norm_before_gate):
    torch.manual_seed(5)
    layer = Mamba2(16, headdim=8, ngroups=2, norm_eps=1e-3, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    y, z = torch.randn(3, 32, dtype=f64), torch.randn(3, 32, dtype=f64)
    v = y if norm_before_gate else y * F.silu(z)
    parts = []
    for g in v.split(16, -1):  # each group of d_inner / ngroups = 16 channels on its own
        parts.append(g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-3))
    expected = torch.cat(parts, -1) * layer.norm.weight
    if norm_before_gate:
        expected = expected * F.silu(z)
    assert_close_to_reference(layer.norm(y, z), expected, 1e-14, "grouped gated norm")


def test_mamba2_dt_limit_clamps_the_step():
    torch.manual_seed(6)
    layer = Mamba2(16, headdim=8, dt_limit=(0.05, 0.06)).double()
    dt = layer._dt(torch.randn(2, 3, 4, dtype=f64) * 5, f64).detach()
    assert float(dt.min()) >= 0.05 and float(dt.max()) <= 0.06
    x = torch.randn(2, 7, 16, dtype=f64)
    from ssmkit.layers.base import run_steps
    assert_close_to_reference(run_steps(layer, x)[0], layer(x), 1e-10, "step vs forward with the clamp")


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(LanguageModel._sample(logits, 1.0, None, g, top_p=0.7)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3: the two most likely tokens
    draws = {int(LanguageModel._sample(logits, 1.0, None, g, top_p=0.4)) for _ in range(50)}
    assert draws == {0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_real_features_in_another_dtype_are_cast_at_the_encoder(dtype):
    torch.manual_seed(5)
    clf = SequenceClassifier(Backbone(8, 2, "mamba2", {"d_state": 4, "headdim": 4}, d_input=2), 3).eval()
    bb = clf.backbone
    x = torch.randn(2, 4, 2).to(dtype)
    with torch.no_grad():
        # models compute and return in their parameters' dtype, as they do for token ids
        assert torch.equal(clf(x), clf(x.float()))
        h, _ = bb.step(x[:, 0], bb.initial_state(2))
        want, _ = bb.step(x[:, 0].float(), bb.initial_state(2))
    assert h.dtype == torch.float32 and torch.equal(h, want)


def test_backbone_and_head_arguments_are_named():
    with raises_naming(TypeError, "layer_kwargs"):
        Backbone(8, 1, "s4d", layer_kwargs=[1])
    for bad in (None, "s4d", 3):
        with raises_naming(TypeError, "backbone"):
            SequenceClassifier(bad, 3)
        with raises_naming(TypeError, "backbone"):
            LanguageModel(bad, 5)
    # None is the documented default: the backbone's (padded) vocabulary
    assert LanguageModel(Backbone(8, 1, "s4d", vocab_size=6, pad_vocab_size_multiple=4), None).num_classes == 8
    with raises_naming(ValueError, "num_classes"):
        LanguageModel(Backbone(8, 1, "s4d", d_input=2), None)
    # each layer's state is checked by the model, named after `states`, even for an empty batch
    bb = Backbone(4, 2, "mamba2", {"d_state": 4, "headdim": 4}, d_input=2)
    good = bb.initial_state(0)
    with raises_naming(ValueError, "states"):
        bb(torch.zeros(0, 3, 2), states=[[1.0], good[1]])
    states = bb.initial_state(3)
    states[0] = (states[0][0], states[0][1].long())
    with raises_naming(TypeError, "states"):
        bb(torch.zeros(3, 3, 2), states=states)
    with raises_naming(TypeError, "states"):
        bb.step(torch.zeros(3, 2), states)
    states = bb.initial_state(3)
    states[1][1][0, 0, 0, 0] = float("nan")
    with raises_naming(ValueError, "states"):
        bb(torch.zeros(3, 3, 2), states=states)
    for bad in (True, 2.0, float("nan")):  # d_input is checked even when a vocabulary makes it unused
        with pytest.raises((TypeError, ValueError), match="d_input"):
            Backbone(4, 1, "s4d", vocab_size=4, d_input=bad)


@pytest.mark.parametrize("name,kw", [("s4d", {"d_state": 4}), ("s4", {"d_state": 4, "l_max": 8}),
                                     ("rtf", {"d_state": 4, "l_max": 8}), ("s5", {"d_state": 4}),
                                     ("mamba", {"d_state": 4}), ("mamba2", {"d_state": 4, "headdim": 4})])
def test_every_layer_computes_another_input_dtype_in_its_parameters_dtype(name, kw):
    # the one rule (docs/reliability.md): cast to the parameters' dtype, returned in the input's
    from ssmkit.layers import get_layer
    torch.manual_seed(6)
    layer = get_layer(name)(8, **kw).eval()
    x = torch.randn(2, 6, 8, dtype=f64)
    with torch.no_grad():
        y, yt = layer(x), layer.step(x[:, 0], layer.initial_state(2))[0]
        assert y.dtype == f64 and yt.dtype == f64
        assert torch.equal(y, layer(x.float()).double())
        assert torch.equal(yt, layer.step(x[:, 0].float(), layer.initial_state(2))[0].double())


def test_generate_names_the_prompt_when_a_token_id_is_out_of_range():
    model = LanguageModel(Backbone(16, 1, "s4d", {}, vocab_size=10), tie_embeddings=True).eval()
    for bad in (torch.tensor([[1, 10]]), torch.tensor([[-1, 2]])):
        with raises_naming(ValueError, "prompt"):
            model.generate(bad, 2, temperature=0)

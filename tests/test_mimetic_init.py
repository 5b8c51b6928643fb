"""Mimetic initialisation of the Mamba-family layers (``init="mimetic"``): what it promises.

- the other parameters are drawn exactly as by the default init (same seed, same values);
- ``|A|`` lies in ``mimetic_A_range``, so the per-step decay ``exp(Δ A)`` is at least
  ``exp(-Δ_max · a_max)`` on real inputs (and far closer to 1 than with the default init);
- ``W_C = W_B``: ``C_t = B_t`` at every step, so the "attention score" ``C_tᵀ B_t`` of a token with
  itself is a squared norm (never negative), which the default init does not give;
- it is reachable from a training config through ``layer_options``; bad values are refused.
"""
import math

import pytest
import torch

from ssmkit.layers import Mamba, Mamba2
from ssmkit.layers.base import run_steps
from ssmkit.layers.init import mimetic_A_log

from helpers import raises_naming, rel_err


def _same_seed_pair(cls, **kw):
    torch.manual_seed(3)
    default = cls(**kw)
    torch.manual_seed(3)
    mimetic = cls(init="mimetic", **kw)
    torch.manual_seed(3)
    explicit_default = cls(init="default", **kw)
    return default, mimetic, explicit_default


def test_mimetic_A_log_range_and_log_uniform():
    torch.manual_seed(0)
    a = torch.exp(mimetic_A_log((20000,), 1e-3, 0.05))
    assert float(a.min()) >= 1e-3 * (1 - 1e-6) and float(a.max()) <= 0.05 * (1 + 1e-6)
    # log-uniform: the mean of log|A| is the midpoint of the log range (sd of the mean ~ 0.008)
    assert abs(float(torch.log(a).mean()) - 0.5 * (math.log(1e-3) + math.log(0.05))) < 0.05
    with raises_naming(ValueError, "a_min"):
        mimetic_A_log((3,), 0.0, 0.1)
    with raises_naming(ValueError, "a_max"):
        mimetic_A_log((3,), 0.1, 0.01)


def test_mamba_mimetic_changes_only_A_and_C_rows():
    default, mimetic, explicit = _same_seed_pair(Mamba, d_model=16, d_state=8)
    for (name, p), (_, q), (_, r) in zip(default.named_parameters(), mimetic.named_parameters(),
                                         explicit.named_parameters()):
        assert torch.equal(p, r), name  # init="default" is the default
        if name not in ("A_log", "x_proj.weight"):
            assert torch.equal(p, q), name
    R, N = default.dt_rank, 8
    W = mimetic.x_proj.weight.detach()
    assert torch.equal(W[R + N:], W[R:R + N])  # W_C = W_B
    assert torch.equal(W[:R + N], default.x_proj.weight.detach()[:R + N])  # Δ and B rows untouched
    assert not torch.equal(default.x_proj.weight[R + N:], default.x_proj.weight[R:R + N])
    A = -torch.exp(mimetic.A_log.detach())
    assert A.shape == (32, 8) and float(A.max()) < 0
    assert float(-A.max()) >= 1e-3 * (1 - 1e-6) and float(-A.min()) <= 0.05 * (1 + 1e-6)
    assert default.init == "default" and mimetic.init == "mimetic"


def _decays_and_self_scores(layer, x):
    """exp(Δ_t A) (B, L, E, N) and C_tᵀ B_t (B, L) of the first layer pass, computed from the
    layer's own pieces (in_proj, conv, x_proj, dt_proj)."""
    xi, _ = layer.in_proj(x).chunk(2, dim=-1)
    u = torch.nn.functional.silu(layer.conv1d(xi.transpose(1, 2))).transpose(1, 2)
    dt, Bm, Cm = layer._ssm_params(u)
    A = -torch.exp(layer.A_log)
    return torch.exp(dt[..., None] * A), dt, (Cm * Bm).sum(-1)


def test_mamba_mimetic_decay_bound_and_tied_scores_on_inputs():
    default, mimetic, _ = _same_seed_pair(Mamba, d_model=16, d_state=8)
    x = torch.randn(4, 50, 16)
    with torch.no_grad():
        dec_m, dt, self_m = _decays_and_self_scores(mimetic, x)
        dec_d, _, self_d = _decays_and_self_scores(default, x)
    a_max = float(torch.exp(mimetic.A_log.detach()).max())
    assert float(dec_m.min()) >= math.exp(-float(dt.max()) * a_max) * (1 - 1e-6)
    # the state keeps most of itself over the whole 50-step input; the default init forgets
    assert float(dec_m.prod(dim=1).min()) > 0.5
    assert float(dec_d.prod(dim=1).min()) < 0.01
    assert float(self_m.min()) >= 0  # C_tᵀ B_t = |B_t|² with W_C = W_B
    assert float(self_d.min()) < 0  # not so with independent W_B, W_C


def test_mamba_mimetic_layer_still_consistent():
    torch.manual_seed(1)
    layer = Mamba(8, d_state=4, init="mimetic").double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y = layer(x)
    ys, _ = run_steps(layer, x)
    assert rel_err(y, ys) < 1e-10


def test_mamba2_mimetic_ties_in_proj_and_conv_of_B_and_C():
    kw = dict(d_model=16, d_state=8, headdim=8, ngroups=2, chunk_size=8)
    default, mimetic, explicit = _same_seed_pair(Mamba2, **kw)
    tied = ("A_log", "in_proj.weight", "conv1d.weight", "conv1d.bias")
    for (name, p), (_, q), (_, r) in zip(default.named_parameters(), mimetic.named_parameters(),
                                         explicit.named_parameters()):
        assert torch.equal(p, r), name
        if name not in tied:
            assert torch.equal(p, q), name
    E, GN = 32, 16
    Wi, Wc, bc = (t.detach() for t in (mimetic.in_proj.weight, mimetic.conv1d.weight, mimetic.conv1d.bias))
    assert torch.equal(Wi[2 * E + GN:2 * E + 2 * GN], Wi[2 * E:2 * E + GN])
    assert torch.equal(Wi[:2 * E + GN], default.in_proj.weight.detach()[:2 * E + GN])
    assert torch.equal(Wi[2 * E + 2 * GN:], default.in_proj.weight.detach()[2 * E + 2 * GN:])  # Δ rows
    assert torch.equal(Wc[E + GN:], Wc[E:E + GN]) and torch.equal(bc[E + GN:], bc[E:E + GN])
    a = torch.exp(mimetic.A_log.detach())
    assert a.shape == (4,) and float(a.min()) >= 1e-3 * (1 - 1e-6) and float(a.max()) <= 0.05 * (1 + 1e-6)
    # after the conv and SiLU, C_t = B_t for every token
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        zxbcdt = mimetic.in_proj(x)
        _, xBC, _ = mimetic._split(zxbcdt)
        xBC = torch.nn.functional.silu(mimetic.conv1d(xBC.transpose(1, 2))).transpose(1, 2)
        _, Bm, Cm = mimetic._heads(xBC)
    assert torch.equal(Bm, Cm)
    y = mimetic(x)
    ys, _ = run_steps(mimetic, x)
    assert rel_err(y, ys) < 1e-4


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_mimetic_bad_options(cls):
    kw = dict(d_model=16, d_state=8) if cls is Mamba else dict(d_model=16, d_state=8, headdim=8)
    with raises_naming(ValueError, "init"):
        cls(init="attention", **kw)
    with raises_naming(ValueError, "mimetic_A_range"):
        cls(init="mimetic", mimetic_A_range=(0.0, 0.1), **kw)
    with raises_naming(TypeError, "mimetic_A_range"):
        cls(init="mimetic", mimetic_A_range=0.1, **kw)


def test_mimetic_from_training_config():
    from ssmkit.tasks import build_task
    from ssmkit.train.config import TrainConfig
    from ssmkit.train.trainer import build_model

    cfg = TrainConfig.from_dict(dict(task="selective_copying", layer="mamba", d_model=16, n_layers=2, d_state=4,
                                     task_options=dict(n_train=8, n_test=4, length=16, n_tokens=2),
                                     layer_options=dict(init="mimetic")))
    task = build_task(cfg.task, **cfg.task_options)
    model = build_model(cfg, task)
    layers = [m for m in model.modules() if isinstance(m, Mamba)]
    assert len(layers) == 2 and all(m.init == "mimetic" for m in layers)
    for m in layers:
        W = m.x_proj.weight
        assert torch.equal(W[m.dt_rank + 4:], W[m.dt_rank:m.dt_rank + 4])

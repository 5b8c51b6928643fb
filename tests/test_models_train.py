"""Models and training: overfitting, recurrent generation, resume, checkpoints, CLI."""
import json

import pytest
import torch

from ssmkit.cli import main
from ssmkit.layers import available_layers
from ssmkit.models import Backbone, LanguageModel, SequenceClassifier
from ssmkit.tasks import build_task
from ssmkit.train import CheckpointError, TrainConfig, fit, load_checkpoint, load_model

from helpers import raises_naming


pytestmark = pytest.mark.usefixtures("one_thread")


def small(layer):
    """Small layer options valid for every family."""
    return dict(d_state=8, headdim=8) if layer == "mamba2" else dict(d_state=8)


@pytest.mark.parametrize("layer", available_layers())
def test_tiny_model_overfits_tiny_batch(layer):
    torch.manual_seed(0)
    model = SequenceClassifier(Backbone(16, 2, layer, small(layer), d_input=1), 4)
    x = torch.randn(8, 12, 1)
    y = torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits = model(x)
        if (logits.argmax(-1) == y).all():  # fitted: the assertion below checks it again
            break
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(-1) == y).all(), f"{layer} did not fit 8 examples in 150 steps"


@pytest.mark.parametrize("layer", available_layers())
def test_generate_equals_greedy_full_forward(layer):
    torch.manual_seed(1)
    lm = LanguageModel(Backbone(16, 2, layer, small(layer), vocab_size=11), 11).double().eval()
    prompt = torch.randint(0, 11, (3, 6))
    out = lm.generate(prompt, 10, temperature=0)
    seq = prompt
    for _ in range(10):
        seq = torch.cat([seq, lm(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def _cfg(**kw):
    base = dict(task="copying", task_options=dict(n_train=64, n_test=16, n_tokens=3, delay=4), layer="s4d", d_model=16,
                n_layers=2, d_state=8, batch_size=16, epochs=3, lr=5e-3, warmup_steps=2, dropout=0.1, log_every=2)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_resume_is_bit_identical(tmp_path):
    full = fit(_cfg(), tmp_path / "full", progress=False)
    part = fit(_cfg(), tmp_path / "part", progress=False, pause_at=5)  # interrupted after step 5
    assert part["step"] == 5
    rest = fit(_cfg(), tmp_path / "part", resume=True, progress=False)
    assert rest["step"] == full["step"] == 12
    wa, _, _ = load_checkpoint(tmp_path / "full")
    wb, _, _ = load_checkpoint(tmp_path / "part")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert (tmp_path / "full" / "learning_curves.png").is_file()
    rows = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" for r in rows)


def test_checkpoint_errors_overwrite_nothing(tmp_path):
    run = tmp_path / "run"
    fit(_cfg(max_steps=2), run, progress=False)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already holds a run"):
        fit(_cfg(max_steps=2), run, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        fit(_cfg(), tmp_path / "empty", resume=True, progress=False)
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert before == after
    ckpt = next(run.glob("ckpt-*"))
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(run)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_cli_train_evaluate_generate(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["train", "--task", "copying", "--layer", "rtf", "--d-model", "16", "--n-layers", "1", "--max-steps", "3",
                 "--task-opt", "n_train=32", "--task-opt", "n_test=8", "--task-opt", "delay=3", "--out", out, "--no-progress"]) == 0
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cfg["layer"] == "rtf" and cfg["task_options"]["delay"] == 3
    assert main(["evaluate", out]) == 0
    assert '"acc"' in capsys.readouterr().out
    assert main(["generate", out, "--prompt", "2 3 4", "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.split()) == 8
    assert main(["generate", out, "--prompt", "2 99"]) == 2
    assert "token ids" in capsys.readouterr().err
    assert main(["train", "--task", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["tasks"]) == 0


def test_config_file_and_bad_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: digits\nlayer: s4d\nd_model: 8\nn_layers: 1\nmax_steps: 2\nbatch_size: 8\n")
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    p.write_text("task: digits\nbogus: 3\n")
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "r2")]) == 2
    with raises_naming(ValueError, "batch_size"):
        TrainConfig(batch_size=0).validate()


@pytest.mark.parametrize("layer", ["s4d", "mamba"])
def test_generate_runs_the_prompt_once_then_one_step_per_token(layer):
    torch.manual_seed(2)
    lm = LanguageModel(Backbone(16, 2, layer, small(layer), vocab_size=11), 11).eval()
    calls = {"forward": [], "step": []}
    for block in lm.backbone.blocks:
        layer_mod = block.layer
        fwd, stp = layer_mod.forward, layer_mod.step

        def counted_forward(x, *a, _f=fwd, **k):
            calls["forward"].append(tuple(x.shape))
            return _f(x, *a, **k)

        def counted_step(x_t, state, _s=stp):
            calls["step"].append(tuple(x_t.shape))
            return _s(x_t, state)

        layer_mod.forward, layer_mod.step = counted_forward, counted_step
        if hasattr(layer_mod, "step_"):  # the in-place step that generate's loop uses (Mamba)
            def counted_step_(x_t, state, check=True, _s=layer_mod.step_):
                calls["step"].append(tuple(x_t.shape))
                return _s(x_t, state, check)

            layer_mod.step_ = counted_step_
    prompt = torch.randint(0, 11, (3, 7))
    sizes = []
    real_step = lm.backbone.step_  # generate's decoding loop (states updated in its own list)

    def step_and_measure(x_t, states):
        out = real_step(x_t, states)
        sizes.append(sum(t.numel() for s in states for t in (s if isinstance(s, (tuple, list)) else [s])
                         if isinstance(t, torch.Tensor)))
        return out

    lm.backbone.step_ = step_and_measure
    out = lm.generate(prompt, 9, temperature=0)
    assert out.shape == (3, 16) and torch.equal(out[:, :7], prompt)
    # each layer sees the whole prompt once, in parallel, and then one position per new token: the
    # prefix is never recomputed (the 9th token needs no step after it)
    assert calls["forward"] == [(3, 7, 16)] * 2
    assert calls["step"] == [(3, 16)] * (2 * 8)
    assert len(sizes) == 8 and len(set(sizes)) == 1  # the recurrent state does not grow with the position


def test_generate_validates_and_samples():
    torch.manual_seed(3)
    lm = LanguageModel(Backbone(16, 1, "s4d", {"d_state": 8}, vocab_size=11), 11).eval()
    prompt = torch.randint(0, 11, (4, 5))
    greedy = lm.generate(prompt, 6, temperature=0)
    # top_k=1 keeps only the argmax, whatever the temperature
    assert torch.equal(lm.generate(prompt, 6, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = lm.generate(prompt, 12, temperature=1.5, generator=g())
    assert torch.equal(a, lm.generate(prompt, 12, temperature=1.5, generator=g()))  # reproducible with a generator
    assert not torch.equal(a, lm.generate(prompt, 12, temperature=0))  # and really sampled
    # top_k=2: every sampled token is one of the two most likely at its position
    s = lm.generate(prompt, 6, temperature=5.0, top_k=2, generator=g())
    logits = lm(s)[:, 4:-1]
    top2 = logits.topk(2, dim=-1).indices
    assert (top2 == s[:, 5:, None]).any(-1).all()
    for kw, err in [(dict(temperature=-1.0), ValueError), (dict(temperature=float("nan")), ValueError),
                    (dict(temperature="hot"), TypeError), (dict(top_k=0), ValueError), (dict(top_k=True), ValueError),
                    (dict(top_k=2.5), ValueError)]:
        with raises_naming(err, "temperature" if "temperature" in kw else "top_k"):
            lm.generate(prompt, 3, **kw)
    with raises_naming(ValueError, "max_new_tokens"):
        lm.generate(prompt, -1)
    with raises_naming(ValueError, "prompt"):
        lm.generate(prompt[0], 3)
    with raises_naming(TypeError, "prompt"):
        lm.generate(prompt.float(), 3)
    assert torch.equal(lm.generate(prompt, 0), prompt)


def test_resume_from_a_corrupt_checkpoint_overwrites_nothing(tmp_path):
    run = tmp_path / "run"
    fit(_cfg(max_steps=4), run, progress=False, pause_at=2)
    ckpt = run / (run / "LATEST").read_text().strip()

    def snapshot():
        return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    for victim, junk in (("trainer.pt", b"\x00garbage"), ("config.json", b"{not json"), ("model.safetensors", b"xx")):
        good = (ckpt / victim).read_bytes()
        (ckpt / victim).write_bytes(junk)
        before = snapshot()
        with pytest.raises(CheckpointError, match="corrupt"):
            fit(_cfg(max_steps=4), run, resume=True, progress=False)
        assert snapshot() == before, victim
        (ckpt / victim).write_bytes(good)
    (run / "LATEST").write_text("ckpt-99999999\n")  # a pointer to a folder that is gone
    before = snapshot()
    with pytest.raises(CheckpointError, match="missing"):
        fit(_cfg(max_steps=4), run, resume=True, progress=False)
    assert snapshot() == before
    (run / "LATEST").write_text(ckpt.name + "\n")
    before = snapshot()
    with pytest.raises(ValueError, match="different d_model"):  # resuming needs the run's own settings
        fit(_cfg(max_steps=4, d_model=8), run, resume=True, progress=False)
    with pytest.raises(ValueError, match="different dropout"):
        fit(_cfg(max_steps=4, dropout=0.2), run, resume=True, progress=False)
    assert snapshot() == before
    assert fit(_cfg(max_steps=4), run, resume=True, progress=False)["step"] == 4  # the repaired run continues


def test_a_folder_with_run_files_but_no_checkpoint_is_not_overwritten(tmp_path):
    out = tmp_path / "crashed"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"event": "start"}\n')
    with pytest.raises(ValueError, match="holds no checkpoint"):
        fit(_cfg(max_steps=1), out, progress=False)
    assert (out / "metrics.jsonl").read_text() == '{"event": "start"}\n' and sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_ignores_padding(pooling):
    torch.manual_seed(4)
    model = SequenceClassifier(Backbone(8, 2, "s4d", {"d_state": 4}, d_input=1), 3, pooling=pooling).eval()
    short, long_ = torch.randn(5, 1), torch.randn(9, 1)
    x = torch.zeros(2, 9, 1)
    x[0, :5], x[1] = short, long_
    x[0, 5:] = 100.0  # garbage in the padding must not matter
    mask = torch.arange(9)[None] < torch.tensor([[5], [9]])
    batch = model(x, mask=mask)
    torch.testing.assert_close(batch[0], model(short[None])[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch[1], model(long_[None])[0], rtol=1e-5, atol=1e-6)
    h = model.backbone(short[None])  # (1, 5, 8) features; the head sees their mean or the last row
    torch.testing.assert_close(model(short[None]), model.head(h[:, -1] if pooling == "last" else h.mean(1)))


def test_optimizer_groups_follow_the_layer_hints():
    from ssmkit.layers import get_optim_hints
    from ssmkit.train import make_optimizer

    cfg = _cfg(layer="s4d", lr=2e-3, weight_decay=0.07)
    model = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert len(where) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    for name, p in model.named_parameters():
        g, hints = where[id(p)], get_optim_hints(p)
        if hints:  # log_dt, A: the layer's own learning rate and weight decay
            assert (g["lr"], g["weight_decay"]) == (hints.get("lr", 2e-3), hints.get("weight_decay", 0.07 if p.dim() >= 2 else 0.0)), name
        elif p.dim() >= 2:
            assert (g["lr"], g["weight_decay"]) == (2e-3, 0.07), name
        else:  # biases and norms: no weight decay
            assert (g["lr"], g["weight_decay"]) == (2e-3, 0.0), name
    assert any(get_optim_hints(p) for p in model.parameters())


def test_warmup_then_cosine_schedule():
    from ssmkit.train import LRSchedule

    f = LRSchedule(10, 110).factor
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warm-up
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    after = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:]))  # then a cosine decay to zero


def test_seed_determinism_clipping_and_bf16(tmp_path, monkeypatch):
    import ssmkit.train.trainer as trainer

    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        norms.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(trainer.torch.nn.utils, "clip_grad_norm_", spy)
    a = fit(_cfg(max_steps=3, grad_clip=0.5), tmp_path / "a", progress=False)
    assert norms == [0.5] * 3  # gradients clipped at every step, at --grad-clip
    fit(_cfg(max_steps=3, grad_clip=0.5), tmp_path / "b", progress=False)
    fit(_cfg(max_steps=3, grad_clip=0.5, seed=1), tmp_path / "c", progress=False)
    wa, wb, wc = (load_checkpoint(tmp_path / d)[0] for d in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed: the same weights, bit for bit
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # another seed: other weights
    assert TrainConfig().precision == "fp32"  # mixed precision is off unless asked for
    bf = fit(_cfg(max_steps=3, precision="bf16"), tmp_path / "bf16", progress=False)
    assert bf["step"] == 3 and bf["test_loss"] == pytest.approx(a["test_loss"], rel=0.05)
    with raises_naming(ValueError, "precision"):
        _cfg(precision="fp16")


def test_an_interrupted_save_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    import ssmkit.train.checkpoint as ckpt_mod

    run = tmp_path / "run"
    fit(_cfg(max_steps=4, checkpoint_every=2), run, progress=False, pause_at=2)
    latest = (run / "LATEST").read_text()
    before = {p.name: p.read_bytes() for p in (run / latest.strip()).iterdir()}

    def dies(*a, **k):
        raise KeyboardInterrupt  # the process is stopped while the weights are being written

    monkeypatch.setattr(ckpt_mod, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(max_steps=4, checkpoint_every=2), run, resume=True, progress=False)
    assert (run / "LATEST").read_text() == latest
    assert {p.name: p.read_bytes() for p in (run / latest.strip()).iterdir()} == before
    model, _, _ = load_model(run)  # the last complete checkpoint still loads
    monkeypatch.undo()
    assert fit(_cfg(max_steps=4, checkpoint_every=2), run, resume=True, progress=False)["step"] == 4


def test_init_from_warm_starts_and_checks_the_shape(tmp_path):
    # A run started from another run's weights begins at those weights, with a fresh step count
    # and optimizer; a model of another shape or a missing run is refused.
    fit(_cfg(max_steps=6), tmp_path / "src", progress=False)
    longer = dict(n_train=64, n_test=16, n_tokens=3, delay=9)  # a longer sequence, same vocabulary
    ws, _, _ = load_checkpoint(tmp_path / "src")
    cfg = _cfg(task_options=longer, max_steps=1, lr=1e-12, warmup_steps=0, dropout=0.0, init_from=str(tmp_path / "src"))
    res = fit(cfg, tmp_path / "warm", progress=False)
    assert res["step"] == 1
    ww, _, _ = load_checkpoint(tmp_path / "warm")
    # One Adam step moves a weight by at most about its learning rate: 1e-12 for most, the SSM
    # parameters' own hinted rate (1e-3) for log_dt and A. A cold start (same seed, so the source's
    # own initialisation) is as far from the source as its 6 training steps moved it.
    dist = lambda w: max(float((w[k] - ws[k]).abs().max()) for k in ws)  # noqa: E731
    assert dist(ww) < 1.5e-3
    fit(_cfg(task_options=longer, max_steps=1, lr=1e-12, warmup_steps=0, dropout=0.0), tmp_path / "cold", progress=False)
    wc, _, _ = load_checkpoint(tmp_path / "cold")
    assert dist(wc) > 10 * dist(ww)
    with raises_naming(ValueError, "init_from"):
        fit(_cfg(d_model=8, init_from=str(tmp_path / "src")), tmp_path / "bad", progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(_cfg(init_from=str(tmp_path / "nowhere")), tmp_path / "bad2", progress=False)

"""Models and training: overfitting, recurrent generation, resume, checkpoints, CLI."""
import json

import pytest
import torch

from ssmkit.cli import main
from ssmkit.layers import available_layers
from ssmkit.models import Backbone, LanguageModel, SequenceClassifier
from ssmkit.tasks import build_task
from ssmkit.train import CheckpointError, TrainConfig, fit, load_checkpoint, load_model


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
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(-1) == y).all(), f"{layer} did not fit 8 examples (loss {loss.item():.3f})"


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
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).validate()

"""The trainer's parts: run folder policy, failed starts, resume after a kill, validation and
best-model selection, early stopping, schedules over a time budget, progress output, compile
fallback, threads, SSM learning rates."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import raises_naming
from ssmkit.models import Backbone, SequenceClassifier
from ssmkit.tasks import build_task
from ssmkit.train import CheckpointError, LRSchedule, TrainConfig, evaluate, fit, load_checkpoint, load_model
from ssmkit.train.progress import Reporter
from ssmkit.runtime import available_cpus
from ssmkit.train.execution import thread_count

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(task="copying", task_options=dict(n_train=40, n_test=8, n_tokens=2, delay=2), layer="s4d", d_model=8,
                n_layers=1, d_state=4, batch_size=8, max_steps=6, lr=5e-3, warmup_steps=1, log_every=1, eval_every=2)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _rows(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


# --- arguments -------------------------------------------------------------------------------
def test_fit_takes_a_mapping_and_names_bad_arguments(tmp_path):
    res = fit(_cfg().to_dict(), tmp_path / "dict", progress=False)
    assert res["step"] == 6
    with raises_naming(TypeError, "config"):
        fit(5, tmp_path / "x", progress=False)
    f = tmp_path / "a_file"
    f.write_text("keep me")
    with raises_naming(ValueError, "out_dir"):
        fit(_cfg(), f, progress=False)
    assert f.read_text() == "keep me"


# --- the run folder --------------------------------------------------------------------------
def test_a_folder_of_foreign_checkpoints_is_refused_and_kept(tmp_path):
    out = tmp_path / "runs"
    for step in (1, 2):
        (out / f"ckpt-{step:08d}").mkdir(parents=True)
        (out / f"ckpt-{step:08d}" / "model.safetensors").write_bytes(b"precious")
    before = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(ValueError, match="not empty and holds no checkpoint"):
        fit(_cfg(), out, progress=False)
    assert sorted(str(p) for p in out.rglob("*")) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fit(_cfg(max_steps=2), empty, progress=False)["step"] == 2  # an empty folder is used


def _diverge_at(monkeypatch, bad_step):
    import ssmkit.train.trainer as trainer

    real, calls = trainer._loss_and_metric, []

    def spy(model, *a, **k):
        loss, metric, n = real(model, *a, **k)
        if model.training:
            calls.append(1)
            if len(calls) >= bad_step:
                loss = loss * float("nan")
        return loss, metric, n

    monkeypatch.setattr(trainer, "_loss_and_metric", spy)


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_start_leaves_the_folder_as_found(tmp_path, monkeypatch, existed):
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    _diverge_at(monkeypatch, 2)  # before the first checkpoint (step 2)
    with pytest.raises(FloatingPointError, match="diverged.*step 2"):
        fit(_cfg(), out, progress=False)
    assert out.is_dir() == existed and (not existed or list(out.iterdir()) == [])
    monkeypatch.undo()
    assert fit(_cfg(max_steps=2), out, progress=False)["step"] == 2  # nothing blocks the next try


def test_a_failure_after_a_checkpoint_keeps_a_resumable_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _diverge_at(monkeypatch, 4)
    with pytest.raises(FloatingPointError):
        fit(_cfg(), out, progress=False)
    assert (out / "LATEST").read_text().strip() == "ckpt-00000002"
    monkeypatch.undo()
    assert fit(_cfg(), out, resume=True, progress=False)["step"] == 6


def test_metrics_hold_each_step_once_after_an_interruption_and_resume(tmp_path):
    out = tmp_path / "run"
    fit(_cfg(), out, progress=False, pause_at=2)
    with open(out / "metrics.jsonl", "a") as fh:  # what a process killed at step 3-4 had logged
        fh.write(json.dumps({"split": "train", "step": 3, "loss": 1.0}) + "\n")
        fh.write(json.dumps({"split": "train", "step": 4, "loss": 1.0}) + "\n")
        fh.write('{"split": "train", "st')  # a line cut short by the kill
    fit(_cfg(), out, resume=True, progress=False)
    text = (out / "metrics.jsonl").read_text()
    rows = [json.loads(l) for l in text.splitlines()]  # every line parses
    keys = [(r["split"], r["step"]) for r in rows if "split" in r]
    assert len(keys) == len(set(keys))
    assert [s for sp, s in keys if sp == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_kill_9_then_resume_logs_each_step_once(tmp_path):
    """A real SIGKILL in the middle of a run (after its first checkpoints), then --resume."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ssmkit.cli", "train", "--task", "copying", "--task-opt", "n_train=40",
            "--task-opt", "n_test=8", "--task-opt", "n_tokens=2", "--task-opt", "delay=2", "--layer", "s4d",
            "--d-model", "8", "--n-layers", "1", "--d-state", "4", "--batch-size", "8", "--max-steps", "400",
            "--log-every", "1", "--eval-every", "50", "--progress", "none", "--threads", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in sys.path if p.endswith("src")] + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = out / "LATEST"
        if latest.is_file() and latest.read_text().strip() >= "ckpt-00000100":
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    time.sleep(0.3)  # let it log some steps past the checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt_step = int((out / "LATEST").read_text().strip()[5:])
    logged = max(r["step"] for r in _rows(out) if r.get("split") == "train")
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [r["step"] for r in _rows(out) if r.get("split") == "train"]
    assert steps == list(range(1, 401)), (ckpt_step, logged)


# --- validation, best model, early stopping ---------------------------------------------------
class _Counting(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data, self.reads = data, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        return self.data[i]


def test_training_selects_on_val_and_tests_the_best_model_once(tmp_path):
    cfg = _cfg(max_steps=10, eval_every=2, lr=2e-2)
    task = build_task(cfg.task, seed=cfg.seed, **cfg.task_options)
    task.test = _Counting(task.test)
    res = fit(cfg, tmp_path / "run", progress=False, task=task)
    assert task.test.reads == len(task.test)  # the test split is read once, at the end
    rows = _rows(tmp_path / "run")
    assert not any(r.get("split") == "test" for r in rows)
    vals = [r for r in rows if r.get("split") == "val"]
    assert [r["step"] for r in vals] == [2, 4, 6, 8, 10]
    # the best accuracy; among equal accuracies the lower validation loss; then the earlier step
    best = min(vals, key=lambda r: (-r["acc"], r["loss"], r["step"]))
    assert res["best_step"] == best["step"] and res["val_acc"] == best["acc"]
    model, _, task2 = load_model(tmp_path / "run")  # the best checkpoint by default
    assert evaluate(model, task2, "test")["acc"] == pytest.approx(res["test_acc"])
    assert evaluate(model, task2, "val", seed=cfg.seed)["acc"] == pytest.approx(best["acc"])
    assert (tmp_path / "run" / "BEST").read_text().strip() == f"ckpt-{best['step']:08d}"
    w_last, st, _ = load_checkpoint(tmp_path / "run")
    assert st["step"] == 10


def test_early_stopping_after_patience_evaluations(tmp_path):
    # a learning rate so small that the validation accuracy cannot change after the first evaluation
    cfg = _cfg(max_steps=40, eval_every=1, lr=1e-12, ssm_lr=1e-12, early_stopping=3)
    res = fit(cfg, tmp_path / "run", progress=False)
    assert res["stopped"] == "early_stopping" and res["step"] == 4 and res["best_step"] == 1
    assert fit(_cfg(max_steps=4, eval_every=1, lr=1e-12, ssm_lr=1e-12), tmp_path / "no_es", progress=False)["stopped"] == "completed"


def test_a_task_without_val_holds_out_a_seeded_part_of_train():
    from ssmkit.train import validation_split

    task = build_task("copying", n_train=40, n_test=8, n_tokens=2, delay=2)
    task.val = None
    tr, va, note = validation_split(task, seed=3)
    assert len(tr) + len(va) == 40 and len(va) == 4 and "held out" in note
    assert set(tr.indices).isdisjoint(va.indices)
    assert validation_split(task, seed=3)[1].indices == va.indices != validation_split(task, seed=4)[1].indices


# --- schedules -------------------------------------------------------------------------------
def test_warmup_is_capped_at_its_fraction_of_the_run():
    s = LRSchedule(warmup_steps=500, total_steps=1000, warmup_fraction=0.1)
    assert s.warmup == 100 and "capped at 10%" in s.describe()
    assert s.factor(0) == pytest.approx(0.01) and s.factor(99) == pytest.approx(1.0)
    assert s.factor(1000) == pytest.approx(0.0, abs=1e-12)


def test_time_budget_schedule_warms_up_and_decays_by_elapsed_time():
    s = LRSchedule(warmup_steps=50, total_steps=100_000, warmup_fraction=0.1, time_budget=60.0)
    assert s.factor(0, elapsed=0.0) == pytest.approx(1 / 50)
    assert s.factor(9, elapsed=3.0) == pytest.approx(0.5)  # 5% of the budget: half-way through a 10% warm-up
    assert s.factor(10, elapsed=6.0) == pytest.approx(1.0) and s.warmup_end == pytest.approx(0.1)
    assert s.factor(20, elapsed=33.0) == pytest.approx(0.5)  # half-way from the end of warm-up to the budget
    assert s.factor(30, elapsed=60.0) == pytest.approx(0.0, abs=1e-12)  # the budget spent: fully decayed
    assert "10% of the time budget of 60 s" in s.describe()
    few = LRSchedule(warmup_steps=5, total_steps=100_000, warmup_fraction=0.1, time_budget=60.0)
    assert [few.factor(k, elapsed=0.1 * k) for k in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    smooth = LRSchedule(50, 100_000, 0.1, 60.0)
    ramp = [smooth.factor(k, elapsed=0.5 * k) for k in range(200)]
    assert max(abs(a - b) for a, b in zip(ramp, ramp[1:])) < 0.1  # continuous: no jump when warm-up ends
    s.step_time = 0.1
    assert s.expected_steps == 600 and "~600 steps fit" in s.describe()


def test_a_budget_stopped_run_ends_with_a_decayed_learning_rate(tmp_path):
    res = fit(_cfg(max_steps=100_000, eval_every=10_000, time_budget=2.0, lr=1e-2, warmup_steps=10_000),
              tmp_path / "run", progress=False)
    assert res["stopped"] == "time_budget"
    train = [r for r in _rows(tmp_path / "run") if r.get("split") == "train"]
    lrs = [r["lr"] for r in train]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] > 0.9e-2 and lrs[-1] < 0.05e-2  # warmed up fully, ended decayed
    # warm-up ended once 10% of the 2 s budget had passed (the lr of a row is set before its step,
    # so just after the previous row's elapsed time was taken), not after 10,000 steps; the log
    # rounds elapsed to the millisecond, so a time just under 0.2 s may read 0.2
    assert peak >= 1 and train[peak - 1]["elapsed"] < 0.3 and (peak < 2 or train[peak - 2]["elapsed"] <= 0.2)
    timing = next(r for r in _rows(tmp_path / "run") if r.get("event") == "timing")
    assert timing["expected_steps"] > 0 and res["params"] > 0


# --- output ----------------------------------------------------------------------------------
def test_plain_progress_lines_and_start_summary(tmp_path, capsys):
    cfg = _cfg(log_every=100)
    task = build_task(cfg.task, seed=cfg.seed, **cfg.task_options)
    task.val = None  # 10% of the 40 training sequences held out
    fit(cfg, tmp_path / "run", progress="lines", report_every=0.0, task=task)  # lines do not wait for log rows
    out = capsys.readouterr().out
    assert "\r" not in out
    assert "36 train / 4 val / 8 test sequences" in out and "parameters" in out and "lr schedule" in out
    assert sum(1 for l in out.splitlines() if "step " in l and "/6" in l) == 6  # one line per step at report_every=0
    start = next(r for r in _rows(tmp_path / "run") if r.get("event") == "start")
    assert (start["train"], start["val"], start["test"], start["steps"]) == (36, 4, 8, 6)


def test_reporter_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        with Reporter("auto", total=3, stream=stream, every=0.0) as r:
            for s in (1, 2, 3):
                r.update(s, {"split": "train", "step": s, "loss": 0.5})
    assert "\r" in tty.getvalue()
    assert "\r" not in log.getvalue() and log.getvalue().count("step ") == 3


# --- knobs -----------------------------------------------------------------------------------
def test_compile_falls_back_with_one_warning(tmp_path, monkeypatch, capsys):
    eager = fit(_cfg(), tmp_path / "eager", progress=False)

    def broken_compile(module, *a, **k):
        def fails(*args, **kwargs):
            raise RuntimeError("no compiler here\nsecond line")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    capsys.readouterr()
    res = fit(_cfg(compile=True), tmp_path / "compiled", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile failed (RuntimeError: no compiler here)" in err[0]
    assert res["test_loss"] == eager["test_loss"]  # the eager retry trained exactly the same model
    we, _, _ = load_checkpoint(tmp_path / "eager")
    wc, _, _ = load_checkpoint(tmp_path / "compiled")
    assert all(torch.equal(we[k], wc[k]) for k in we)


def test_threads_are_set_for_the_run_and_restored(tmp_path, monkeypatch):
    import ssmkit.train.trainer as trainer

    seen = []
    real = trainer._Run.train_step

    def spy(self, idx):
        seen.append((torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")))
        return real(self, idx)

    monkeypatch.setattr(trainer._Run, "train_step", spy)
    before = torch.get_num_threads()
    fit(_cfg(max_steps=2), tmp_path / "run", progress=False, threads=2)
    assert set(seen) == {(2, "2")} and torch.get_num_threads() == before
    with raises_naming(TypeError, "threads"):
        fit(_cfg(max_steps=2), tmp_path / "bad", progress=False, threads=1.5)
    with thread_count("auto") as (n, why):
        assert n == available_cpus() == torch.get_num_threads() and "auto" in why
    assert torch.get_num_threads() == before


def test_ssm_learning_rate_and_weight_decay_override_the_layer_hints():
    from ssmkit.layers import get_optim_hints
    from ssmkit.train import make_optimizer

    model = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3)
    opt = make_optimizer(model, _cfg(lr=2e-3, weight_decay=0.07, ssm_lr=5e-4, ssm_weight_decay=0.01))
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    tagged = [p for p in model.parameters() if get_optim_hints(p)]
    assert tagged and all((where[id(p)]["lr"], where[id(p)]["weight_decay"]) == (5e-4, 0.01) for p in tagged)
    others = [p for p in model.parameters() if not get_optim_hints(p)]
    assert all(where[id(p)]["lr"] == 2e-3 for p in others)


def test_cpu_optimizer_is_torchs_fused_adamw_with_the_default_kernels_values():
    # the fused CPU kernel is chosen for float32 / float64 CPU parameters; five steps give the same
    # parameters as AdamW's default (per-list) kernel with the same groups, to rounding (an ulp or two)
    from ssmkit.train import make_optimizer

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        model = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3).to(dtype)
        twin = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3).to(dtype)
        twin.load_state_dict(model.state_dict())
        opt = make_optimizer(model, _cfg(weight_decay=0.1))
        assert all(g["fused"] for g in opt.param_groups)
        ref = torch.optim.AdamW([{k: v for k, v in g.items() if k not in ("params", "fused", "foreach")}
                                 | {"params": [dict(twin.named_parameters())[n] for n, p in model.named_parameters()
                                               if any(p is q for q in g["params"])]}
                                 for g in opt.param_groups], foreach=True)
        for _ in range(5):
            for p, q in zip(model.parameters(), twin.parameters()):
                g = torch.randn_like(p)
                p.grad, q.grad = g, g.clone()
            opt.step()
            ref.step()
        for (n, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=4 * torch.finfo(dtype).eps, atol=1e-7 if dtype == torch.float32 else 1e-15, msg=n)
    frozen = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3).requires_grad_(False)
    with raises_naming(ValueError, "trainable parameters"):
        make_optimizer(frozen, _cfg())
    # half precision keeps torch's default kernel (the fused one rounds differently there)
    half = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3).to(torch.bfloat16)
    assert not any(g["fused"] for g in make_optimizer(half, _cfg()).param_groups)


def test_autocast_follows_the_model_device(monkeypatch):
    import ssmkit.train.trainer as trainer

    devices = []
    real = torch.autocast

    def spy(device_type, *a, **k):
        devices.append(device_type)
        return real(device_type, *a, **k)

    monkeypatch.setattr(trainer.torch, "autocast", spy)
    model = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3)
    x, y, mask = torch.randn(2, 5, 1), torch.tensor([0, 1]), torch.ones(2, 5, dtype=torch.bool)
    trainer._loss_and_metric(model, "classify", x, y, mask, "bf16")
    meta = SequenceClassifier(Backbone(8, 1, "s4d", {"d_state": 4}, d_input=1), 3)
    assert trainer._device_of(meta.to("meta")).type == "meta"
    assert devices == ["cpu"]


def test_load_model_names_a_path_of_the_wrong_type(tmp_path):
    for bad in (3, None, ["run"]):
        with raises_naming(TypeError, "path"):
            load_model(bad)
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "missing")


def test_improves_prefers_the_better_metric_then_the_lower_loss():
    from ssmkit.train.trainer import improves
    assert improves(0.5, 9.0, None, None)  # the first evaluation is the best so far
    assert improves(0.8, 9.0, 0.7, 0.1) and not improves(0.6, 0.01, 0.7, 0.1)  # accuracy: higher wins
    assert improves(1.0, 0.05, 1.0, 0.1) and not improves(1.0, 0.1, 1.0, 0.1)  # a tie: strictly lower loss
    assert not improves(1.0, 0.2, 1.0, 0.1)
    assert improves(0.2, 5.0, 0.3, 0.3, lower_is_better=True) and not improves(0.4, 0.0, 0.3, 0.3, lower_is_better=True)
    assert improves(0.3, 0.2, 0.3, 0.3, lower_is_better=True)
    assert not improves(1.0, 0.0, 1.0, None)  # a run resumed from a state without the loss keeps its best

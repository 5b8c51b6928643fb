"""The training loop, in named parts: the run folder policy (:mod:`.rundir`), restoring a run,
one training step, evaluation on the validation split with best-model checkpoints, and teardown.

AdamW with the layers' optimizer hints (or ``ssm_lr``/``ssm_weight_decay``), warm-up + cosine
schedule laid over the step count or the time budget (:mod:`.schedule`), gradient clipping,
early stopping, progress output (:mod:`.progress`), JSONL metrics, atomic checkpoints of the
last and of the best-by-validation model, and bit-identical resume (model, optimizer, RNG and
data order are restored). The test split is used once, at the end, on the best model.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .._io import atomic_write_json
from .._checks import check_bool, check_int
from ..layers import get_optim_hints
from ..models import Backbone, LanguageModel, SequenceClassifier
from ..tasks import IGNORE_INDEX, Task, build_task, pad_collate
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig
from .plots import plot_metrics
from .progress import Reporter
from .rundir import MetricsLog, RunFolder, truncate_metrics
from .execution import CompiledForward, process_group, thread_count
from .schedule import MEASURE_STEPS, LRSchedule

__all__ = ["build_model", "make_optimizer", "evaluate", "evaluate_dataset", "fit", "load_model", "plot_metrics",
           "validation_split", "VAL_FRACTION"]

VAL_FRACTION = 0.1  # held out of train when a task has no validation split


# --- model, optimizer, loss ------------------------------------------------------------------
def build_model(config: TrainConfig, task: Task) -> nn.Module:
    backbone = Backbone(config.d_model, config.n_layers, config.layer, config.layer_kwargs(task.max_len),
                        vocab_size=task.vocab_size, d_input=task.d_input, dropout=config.dropout,
                        **config.backbone_options)
    if task.kind == "tokens":
        return LanguageModel(backbone, task.num_classes)
    return SequenceClassifier(backbone, task.num_classes if task.kind == "classify" else 1, pooling=config.pooling)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with one group per distinct (lr, weight_decay). SSM parameters (those a layer tags
    with optimizer hints: A, Δ, B...) take ``config.ssm_lr`` / ``config.ssm_weight_decay`` when
    set, else the layer's hints; other matrices get ``config.weight_decay``, vectors none."""
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hints = get_optim_hints(p)
        default_wd = config.weight_decay if p.dim() >= 2 else 0.0
        lr = hints.get("lr", config.lr)
        wd = hints.get("weight_decay", default_wd)
        if hints:
            lr = config.ssm_lr if config.ssm_lr is not None else lr
            wd = config.ssm_weight_decay if config.ssm_weight_decay is not None else wd
        groups.setdefault((lr, wd), []).append(p)
    # torch's fused CPU kernel: the default (per-list) kernel's float32/float64 values to rounding, in
    # about a third of the time for the demo's 46 small tensors; other cases keep the default
    params = [p for ps in groups.values() for p in ps]
    if not params:
        raise ValueError("model has no trainable parameters (every parameter has requires_grad=False)")
    fused = all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd, "base_lr": lr}
                              for (lr, wd), ps in groups.items()], fused=True if fused else None)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _loss_and_metric(model, kind: str, x, y, mask, precision: str = "fp32", device=None):
    device = device if device is not None else _device_of(model)
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    use_mask = None if bool(mask.all()) else mask
    # bf16: autocast the forward pass (matrix products in bfloat16) on the model's device; the loss in float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(x, mask=use_mask)
    out = out.float()
    if kind == "tokens":
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX)
        scored = y != IGNORE_INDEX
        return loss, ((out.argmax(-1) == y) & scored).sum(), scored.sum()
    if kind == "classify":
        loss = nn.functional.cross_entropy(out, y)
        return loss, (out.argmax(-1) == y).sum(), len(y)
    pred = out[:, 0]
    loss = nn.functional.mse_loss(pred, y.to(pred.dtype))
    return loss, ((pred.detach() - y) ** 2).sum(), len(y)


def metric_name(kind: str) -> str:
    """``mse`` for regression (lower is better), ``acc`` otherwise (higher is better)."""
    return "mse" if kind == "regress" else "acc"


@torch.no_grad()
def evaluate_dataset(model: nn.Module, kind: str, data: Dataset, batch_size: int = 64,
                     precision: str = "fp32") -> Dict[str, float]:
    """Loss and accuracy (classification, tokens) or MSE (regression) over ``data``."""
    was = model.training
    model.eval()
    device = _device_of(model)
    tot_loss, tot_metric, tot_n = 0.0, 0.0, 0
    try:
        for start in range(0, len(data), batch_size):
            x, y, mask = pad_collate([data[i] for i in range(start, min(len(data), start + batch_size))])
            loss, metric, n = _loss_and_metric(model, kind, x, y, mask, precision, device)
            n = int(n)
            tot_loss += loss.item() * n
            tot_metric += float(metric)
            tot_n += n
    finally:
        model.train(was)
    return {"loss": tot_loss / max(1, tot_n), metric_name(kind): tot_metric / max(1, tot_n)}


def evaluate(model: nn.Module, task: Task, split: str = "test", batch_size: int = 64, precision: str = "fp32",
             seed: int = 0) -> Dict[str, float]:
    """Loss and accuracy (classification, tokens) or MSE (regression) on ``split``
    (``train``, ``val`` or ``test``). A task without a validation split uses the same held-out
    part of train as training did (:func:`validation_split` with ``seed``)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    train, val, _ = validation_split(task, seed)
    data = {"train": train, "val": val, "test": task.test}[split]
    return evaluate_dataset(model, task.kind, data, batch_size, precision)


def validation_split(task: Task, seed: int = 0, fraction: float = VAL_FRACTION) -> Tuple[Dataset, Dataset, str]:
    """``(train, val, note)``: the task's own splits, or, for a task that ships no validation
    split, a seeded ``fraction`` of train held out (at least one sequence) and the rest."""
    if task.val is not None:
        return task.train, task.val, ""
    n = len(task.train)
    if n < 2:
        raise ValueError(f"task {task.name!r} has no validation split and too few training sequences ({n}) to hold one out")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 12_345)).tolist()
    note = f"no validation split in the task: {k} of its {n} training sequences held out ({fraction:.0%}, seed {seed})"
    return Subset(task.train, sorted(perm[k:])), Subset(task.train, sorted(perm[:k])), note


def load_model(path, which: str = "best"):
    """Rebuild a trained model from a run folder or checkpoint: ``(model, config, task)``.
    ``which``: ``"best"`` (the best-by-validation checkpoint when the run has one) or ``"latest"``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a run or checkpoint folder (a str or os.PathLike), got {type(path).__name__}")
    weights, _, cfg = load_checkpoint(path, load_trainer_state=False, which=which)
    config = TrainConfig.from_dict(cfg)
    task = build_task(config.task, seed=config.seed, **config.task_options)
    model = build_model(config, task)
    _load_weights(model, weights, "checkpoint does not match its config")
    model.eval()
    return model, config, task


def _load_weights(model: nn.Module, weights: Dict[str, torch.Tensor], what: str) -> None:
    """Load ``weights`` into ``model``; a missing, unexpected or differently shaped tensor raises
    :class:`CheckpointError` starting with ``what``."""
    own = model.state_dict()
    bad = sorted(set(own) ^ set(weights)) + sorted(k for k in own if k in weights and own[k].shape != weights[k].shape)
    if bad:
        raise CheckpointError(f"{what} (first mismatch: {bad[0]!r})")
    model.load_state_dict(weights)


def _init_weights(model: nn.Module, path) -> None:
    """Load the model weights of the run or checkpoint at ``path`` into ``model`` (warm start)."""
    weights, _, _ = load_checkpoint(path, load_trainer_state=False)
    _load_weights(model, weights, f"init_from {str(path)!r} holds a model of another shape; it must be trained "
                                  "with the same layer, widths and vocabulary")


def improves(value: float, loss: float, best: Optional[float], best_loss: Optional[float],
             lower_is_better: bool = False) -> bool:
    """Whether a validation result (metric ``value``, loss ``loss``) beats the best so far: a
    better metric wins; an equal metric wins with a lower loss (a small validation split is often
    perfect for many evaluations in a row: this keeps the most confident of those models)."""
    if best is None:
        return True
    if value != best:
        return value < best if lower_is_better else value > best
    return best_loss is not None and loss < best_loss


# --- one run ---------------------------------------------------------------------------------
class _Run:
    """The state of one training run and its named parts; :func:`fit` drives them."""

    def __init__(self, config: TrainConfig, out: Path, rank: int, world: int, pause_at: Optional[int]):
        self.config, self.out, self.rank, self.world, self.pause_at = config, out, rank, world, pause_at
        self.main = rank == 0
        self.step = 0
        self.best_step: Optional[int] = None
        self.best: Optional[float] = None
        self.best_loss: Optional[float] = None  # breaks ties of the validation metric (small val splits)
        self.bad_evals = 0
        self.elapsed_before = 0.0
        self.resumed: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None
        self.log: Optional[MetricsLog] = None
        self.reporter: Optional[Reporter] = None

    # part 1: the run folder -------------------------------------------------------------
    def check_folder(self, resume: bool) -> RunFolder:
        folder = RunFolder(self.out, resume)
        folder.check()
        if resume:
            weights, trainer_state, cfg = load_checkpoint(self.out)
            saved = TrainConfig.from_dict(cfg)
            # the run's identity must match; only the stopping rule, logging cadence and knobs may change
            for k in (k for k in saved.to_dict() if k not in RESUME_FREE_FIELDS):
                if getattr(saved, k) != getattr(self.config, k):
                    raise ValueError(f"--resume with a different {k} ({getattr(self.config, k)!r}) "
                                     f"than the run ({getattr(saved, k)!r})")
            self.resumed = (weights, trainer_state)
        if self.world > 1:
            torch.distributed.barrier()  # every process has checked the folder before any writes to it
        return folder

    # part 2: build, then restore or initialise --------------------------------------------
    def build(self, task: Optional[Task]) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self.task = task or build_task(c.task, seed=c.seed, **c.task_options)
        self.train_data, self.val_data, self.val_note = validation_split(self.task, c.seed)
        self.model = build_model(c, self.task)
        self.opt = make_optimizer(self.model, c)
        self.n = len(self.train_data)
        self.spe = math.ceil(self.n / c.batch_size)
        self.total = c.max_steps or c.epochs * self.spe
        self.schedule = LRSchedule(c.warmup_steps, self.total, c.warmup_fraction, c.time_budget)
        self.eval_every = c.eval_every or self.spe
        self.ckpt_every = c.checkpoint_every or self.eval_every
        self.key = metric_name(self.task.kind)
        if self.resumed is not None:
            self.restore(*self.resumed)
        elif c.init_from:
            _init_weights(self.model, c.init_from)
        self.train_model: nn.Module = self.model
        if self.world > 1:  # data parallel: each process takes its share of every global batch
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)

    def restore(self, weights: Dict[str, torch.Tensor], st: Dict[str, Any]) -> None:
        where = str(self.out)
        _load_weights(self.model, weights, f"the checkpoint in {where!r} does not match its config")
        try:
            self.opt.load_state_dict(st["optimizer"])
            torch.set_rng_state(st["rng"])
        except (ValueError, TypeError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"the trainer state in {where!r} does not match the model: {exc}") from None
        self.step = int(st["step"])
        self.schedule.load_state_dict(st.get("schedule", {}))
        self.best, self.best_step = st.get("best"), st.get("best_step")
        self.best_loss = st.get("best_loss")
        self.bad_evals = int(st.get("bad_evals", 0))
        self.elapsed_before = float(st.get("elapsed", 0.0))

    def trainer_state(self) -> Dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(), "step": self.step,
                "schedule": self.schedule.state_dict(), "best": self.best, "best_step": self.best_step,
                "best_loss": self.best_loss, "bad_evals": self.bad_evals, "elapsed": self.elapsed()}

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    # part 3: one training step -------------------------------------------------------------
    def set_lr(self) -> float:
        f = self.schedule.factor(self.step, self.elapsed())
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        return self.config.lr * f

    def train_step(self, idx: List[int]):
        c = self.config
        x, y, mask = pad_collate([self.train_data[i] for i in idx])
        lr = self.set_lr()

        def forward_backward(model):
            loss, metric, cnt = _loss_and_metric(model, self.task.kind, x, y, mask, c.precision, self.device)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            return loss, metric, cnt

        loss, metric, cnt = self.forward.run(forward_backward)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged: the loss became {loss_value} at step {self.step + 1}; "
                                     f"lower --lr (now {c.lr:g}) or --grad-clip")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        self.step += 1
        return loss_value, float(metric), int(cnt), lr

    # part 4: evaluation and checkpoints ------------------------------------------------------
    def evaluate_and_checkpoint(self, epoch: int, do_eval: bool, do_ckpt: bool) -> bool:
        """Evaluate on val (and keep the best), checkpoint; True when early stopping says stop."""
        c = self.config
        improved, stop = False, False
        if do_eval:
            if self.main:
                res = evaluate_dataset(self.model, self.task.kind, self.val_data, max(c.batch_size, 64), c.precision)
                value = res[self.key]
                improved = improves(value, res["loss"], self.best, self.best_loss, lower_is_better=self.key == "mse")
                if improved:
                    self.best, self.best_step, self.bad_evals = value, self.step, 0
                    self.best_loss = float(res["loss"])
                else:
                    self.bad_evals += 1
                self.log.write({"split": "val", "step": self.step, "epoch": epoch, **res,
                                "best": self.best, "best_step": self.best_step})
                self.reporter.info(f"step {self.step}: val loss {res['loss']:.4g}, {self.key} {value:.4g}"
                                   + (" (best so far)" if improved else f" (best {self.best:.4g} at step {self.best_step})"))
                stop = bool(c.early_stopping and self.bad_evals >= c.early_stopping)
            if self.world > 1:  # every process learns the decision of process 0
                flags = torch.tensor([float(improved), float(stop)])
                torch.distributed.broadcast(flags, 0)
                improved, stop = bool(flags[0]), bool(flags[1])
        if (do_ckpt or improved or stop) and self.main:
            save_checkpoint(self.out, self.step, self.model, self.trainer_state(), c.to_dict(), best=improved)
            self.folder.checkpointed = True
        return stop

    # the loop ---------------------------------------------------------------------------
    def summary(self) -> Dict[str, Any]:
        t, c = self.task, self.config
        n_params = sum(p.numel() for p in self.model.parameters())
        info = {"task": t.name, "kind": t.kind, "train": len(self.train_data), "val": len(self.val_data),
                "test": len(t.test), "max_len": t.max_len, "classes": t.num_classes, "vocab_size": t.vocab_size,
                "layer": c.layer, "d_model": c.d_model, "n_layers": c.n_layers, "params": n_params,
                "steps": self.total, "steps_per_epoch": self.spe}
        size = "vocabulary {}".format(t.vocab_size) if t.vocab_size else f"{t.d_input} input channel(s)"
        out = {"classify": f"{t.num_classes} classes", "tokens": f"{t.num_classes} output tokens", "regress": "regression"}
        self.reporter.info(f"task {t.name}: {len(self.train_data):,} train / {len(self.val_data):,} val / "
                           f"{len(t.test):,} test sequences, length up to {t.max_len}, {size}, {out[t.kind]}")
        if self.val_note:
            self.reporter.info(self.val_note)
        self.reporter.info(f"model: {c.layer}, d_model {c.d_model}, {c.n_layers} layer{'s' if c.n_layers > 1 else ''}, "
                           f"{n_params:,} parameters"
                           + (", torch.compile" if c.compile else ""))
        self.reporter.info(f"run: {self.total} steps ({self.total / self.spe:.3g} epoch(s) of {self.spe}, batch "
                           f"{c.batch_size}); validation every {self.eval_every} steps"
                           + (f"; early stopping after {c.early_stopping} evaluations without improvement"
                              if c.early_stopping else "")
                           + (f"; time budget {c.time_budget:g} s" if c.time_budget else ""))
        self.reporter.info(self.schedule.describe())
        return info

    def loop(self, progress_mode: str, report_every: float, threads_note: str) -> str:
        """Train until done; returns why it stopped (completed, time_budget, early_stopping, paused)."""
        c = self.config
        self.reporter = Reporter(progress_mode if self.main else "none", self.total, self.step,
                                 f"{c.layer} on {self.task.name}", every=report_every)
        with self.reporter:
            info = self.summary()
            self.reporter.info(f"threads: {threads_note}")
            self.log.write({"event": "start" if self.resumed is None else "resume", "step": self.step, **info,
                            "warmup_steps": self.schedule.warmup, "threads": torch.get_num_threads()})
            self.forward = CompiledForward(self.train_model, c.compile, warn=self._warn)
            self.device = _device_of(self.model)
            self.model.train()
            win_loss, win_metric, win_n, win_seqs, t_win = 0.0, 0.0, 0, 0, time.perf_counter()
            measure_from, measured = (self.step, time.perf_counter()), self.schedule.step_time is not None
            while self.step < self.total:
                epoch, offset = divmod(self.step, self.spe)
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(c.seed * 1_000_003 + epoch))
                for b in range(offset, self.spe):
                    idx = perm[b * c.batch_size:(b + 1) * c.batch_size].tolist()
                    if self.world > 1:
                        idx = idx[self.rank::self.world]
                    loss, metric, cnt, lr = self.train_step(idx)
                    win_loss += loss * cnt
                    win_metric += metric
                    win_n += cnt
                    win_seqs += len(idx)
                    if not measured and self.step - measure_from[0] >= MEASURE_STEPS:
                        measured = True
                        self._timing((time.perf_counter() - measure_from[1]) / MEASURE_STEPS)
                    dt = time.perf_counter() - t_win
                    row = {"split": "train", "step": self.step, "epoch": epoch, "loss": win_loss / max(1, win_n),
                           self.key: win_metric / max(1, win_n), "lr": lr, "seq_per_s": win_seqs / max(dt, 1e-9),
                           "elapsed": round(self.elapsed(), 3)}  # the window since the last logged row
                    if self.step % c.log_every == 0 or self.step == self.total:
                        self.log.write(row)
                        win_loss, win_metric, win_n, win_seqs, t_win = 0.0, 0.0, 0, 0, time.perf_counter()
                    self.reporter.update(self.step, row)
                    over_budget = bool(c.time_budget and self.elapsed() > c.time_budget)
                    if self.world > 1 and c.time_budget:  # every process stops at the same step
                        flag = torch.tensor([float(over_budget)])
                        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                        over_budget = bool(flag.item())
                    done = self.step >= self.total
                    pausing = self.pause_at is not None and self.step >= self.pause_at
                    do_eval = self.step % self.eval_every == 0 or done or over_budget
                    stop = self.evaluate_and_checkpoint(epoch, do_eval, self.step % self.ckpt_every == 0 or done
                                                        or over_budget or pausing)
                    if stop:
                        self.reporter.info(f"early stopping at step {self.step}: no better validation {self.key} "
                                           f"in {c.early_stopping} evaluations")
                        return "early_stopping"
                    if over_budget:
                        self.reporter.info(f"time budget of {c.time_budget:g} s spent at step {self.step}")
                        return "time_budget"
                    if pausing:
                        return "paused"
                    if done:
                        break
            return "completed"

    def _timing(self, seconds_per_step: float) -> None:
        self.schedule.step_time = seconds_per_step
        epoch_s = seconds_per_step * self.spe
        self.reporter.info(f"measured {seconds_per_step:.3g} s/step: ~{epoch_s:.3g} s per epoch, "
                           f"~{seconds_per_step * self.total:.3g} s for {self.total} steps")
        if self.config.time_budget:
            self.reporter.info(self.schedule.describe())
        self.log.write({"event": "timing", "step": self.step, "seconds_per_step": seconds_per_step,
                        "seconds_per_epoch": epoch_s, "warmup_steps": self.schedule.warmup,
                        "expected_steps": self.schedule.expected_steps})

    def _warn(self, msg: str) -> None:
        import sys

        print(msg, file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.write({"event": "warning", "step": self.step, "message": msg})

    # part 5: the result ------------------------------------------------------------------
    def finish(self, stopped: str) -> Dict[str, Any]:
        c = self.config
        n_params = sum(p.numel() for p in self.model.parameters())
        result: Dict[str, Any] = {"step": self.step, "total_steps": self.total, "stopped": stopped,
                                  "stopped_early": stopped != "completed", "params": n_params,
                                  "train_seconds": self.elapsed(), "processes": self.world,
                                  "best_step": self.best_step, f"val_{self.key}": self.best}
        if self.main:
            if self.best_step is not None:  # the test split, once, on the model chosen by validation
                weights, _, _ = load_checkpoint(self.out, load_trainer_state=False, which="best")
                self.model.load_state_dict(weights)
            test = evaluate_dataset(self.model, self.task.kind, self.task.test, max(c.batch_size, 64), c.precision)
            result.update({f"test_{k}": v for k, v in test.items()})
            self.log.close()
            plot_metrics(self.out)
            atomic_write_json(self.out / "result.json", result)
        return result


def fit(config, out_dir, resume: bool = False, progress=True, task: Optional[Task] = None,
        pause_at: Optional[int] = None, threads=None, report_every: float = 5.0) -> Dict[str, Any]:
    """Train ``config`` (a :class:`TrainConfig` or a mapping of its fields) into the folder
    ``out_dir``; returns the run's facts and the test metrics of the best-validation model.

    ``progress``: True (a bar on a terminal, plain lines every ``report_every`` seconds
    otherwise), False (silent), or one of ``"auto"``, ``"bar"``, ``"lines"``, ``"none"``.
    ``pause_at``: stop after that many steps with a checkpoint, as an interruption would, without
    changing the schedule (unlike ``max_steps``); ``resume=True`` continues the run exactly.
    ``threads``: None (keep the current setting), an int, or ``"auto"`` (every CPU the process may use, ssmkit.runtime).
    """
    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    elif isinstance(config, TrainConfig):
        config.validate()
    else:
        raise TypeError(f"config must be a TrainConfig or a mapping of its fields, got {type(config).__name__}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    check_bool("resume", resume)
    if pause_at is not None:
        check_int("pause_at", pause_at, minimum=1)
    mode = {True: "auto", False: "none"}.get(progress, progress) if isinstance(progress, bool) else progress
    with contextlib.ExitStack() as stack:
        rank, world = stack.enter_context(process_group())
        if world > 1 and config.batch_size % world:
            raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world})")
        _, threads_note = stack.enter_context(thread_count(threads))
        run = _Run(config, Path(out_dir), rank, world, pause_at)
        folder = run.folder = run.check_folder(resume)
        try:
            if run.main:
                folder.create()
            run.build(task)
            if run.main:
                if resume:
                    truncate_metrics(run.out / "metrics.jsonl", run.step)  # every step once after a resume
                atomic_write_json(run.out / "config.json", config.to_dict())
            run.log = stack.enter_context(MetricsLog(run.out / "metrics.jsonl" if run.main else None))
            run.t_start = time.perf_counter()
            stopped = run.loop(mode, report_every, threads_note)
            result = run.finish(stopped)
        except BaseException:
            if run.log is not None:
                run.log.close()
            if run.main:
                folder.abandon()  # a new run that failed before its first checkpoint leaves no trace
            raise
        if world > 1:
            torch.distributed.barrier()
        return result

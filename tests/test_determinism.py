"""Bit-identical training on several threads.

The native selective scan's backward cuts its work into tasks fixed by the shapes and sums
every partial result in index order (see ssmkit.ops._native), so its gradients do not depend on
the number of threads or on which thread ran which task. These tests check:

- the scan's outputs and gradients are bit-identical across repeated calls on 2 threads and
  between 1, 2 and 3 threads (the kernel's guarantee);
- a few optimisation steps of a Mamba layer on 2 threads give the same weights bit for bit
  when repeated with the same seed;
- (slow) a Mamba run through the CLI on 2 threads, killed with SIGKILL after its first
  checkpoint and resumed with ``--resume``, ends with the same weights bit for bit as an
  uninterrupted run.
"""
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssmkit.layers import Mamba
from ssmkit.ops import _native, selective_scan

SRC = str(Path(__file__).resolve().parents[1] / "src")
needs_native = pytest.mark.skipif(not _native.available(),
                                  reason="native CPU kernel unavailable (no C compiler or SSMKIT_NATIVE=0)")


@pytest.fixture
def threads():
    """Set torch's intra-op thread count inside a test, restored afterwards."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def _scan_inputs(b=2, d=24, N=5, L=300, groups=2, seed=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_()
    A = (-torch.rand(d, N, generator=g) - 0.1).requires_grad_()
    return dict(u=r(b, d, L), delta=r(b, d, L), A=A, B=r(b, groups, N, L), C=r(b, N, L), D=r(d), z=r(b, d, L),
                delta_bias=r(d), initial_state=r(b, d, N))


@needs_native
def test_scan_gradients_bit_identical_for_any_thread_count(threads):
    mod = importlib.import_module("ssmkit.ops.selective_scan")
    kw = _scan_inputs()
    old_budget = mod._PARTIAL_BUDGET
    res = []
    try:
        mod._PARTIAL_BUDGET = 2 * 6 * 16 * 5  # the backward sweeps segments of 16 steps (8 tasks)
        for n in (2, 2, 1, 3):
            threads(n)
            y, h = selective_scan(**kw, delta_softplus=True, return_last_state=True, checkpoint_every=16, native=True)
            w = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
            res.append([y, h, *torch.autograd.grad((y * w).sum() + h.square().sum(), list(kw.values()))])
    finally:
        mod._PARTIAL_BUDGET = old_budget
    for r in res[1:]:
        for name, a, b in zip(["y", "h", *kw], r, res[0]):
            assert torch.equal(a, b), name


def _train_mamba(seed: int, steps: int = 3) -> dict:
    torch.manual_seed(seed)
    layer = Mamba(16, d_state=8)  # 32 channels: 4 tasks of 8 channels per batch element
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(2, 24, 16, generator=g)
        loss = (layer(x) - x.roll(1, dims=1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


@needs_native
def test_mamba_training_bit_identical_on_two_threads(threads):
    threads(2)
    a, b = _train_mamba(0), _train_mamba(0)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["A_log"], _train_mamba(1)["A_log"])  # (the comparison can fail)


TINY_RUN = ["--task", "copying", "--task-opt", "n_train=64", "--task-opt", "n_test=4", "--task-opt", "n_tokens=2",
            "--task-opt", "delay=4", "--layer", "mamba", "--d-model", "8", "--n-layers", "2", "--d-state", "4",
            "--batch-size", "4", "--max-steps", "40", "--warmup-steps", "1", "--checkpoint-every", "4",
            "--eval-every", "1000", "--no-progress", "--seed", "3"]


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SSMKIT_NATIVE"}
    env.update(PYTHONPATH=SRC, OMP_NUM_THREADS="2")  # torch and the native kernel on 2 threads
    return subprocess.Popen([sys.executable, "-m", "ssmkit.cli", "train", *TINY_RUN, "--out", str(out), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _final_weights(run: Path) -> bytes:
    return (run / (run / "LATEST").read_text().strip() / "model.safetensors").read_bytes()


@needs_native
@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical_on_two_threads(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p_full = _cli(full)
    p_cut = _cli(cut)
    deadline = time.monotonic() + 600
    while not (cut / "LATEST").is_file():  # kill -9 as soon as a checkpoint exists
        assert p_cut.poll() is None, f"run ended before it could be killed: {p_cut.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p_cut.send_signal(signal.SIGKILL)
    p_cut.wait()
    killed_at = (cut / "LATEST").read_text().strip()
    assert killed_at != "ckpt-00000040", "the run finished before the kill; lengthen it"
    p_resume = _cli(cut, "--resume")
    for p in (p_full, p_resume):
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    assert (cut / "LATEST").read_text().strip() == (full / "LATEST").read_text().strip() == "ckpt-00000040"
    assert _final_weights(cut) == _final_weights(full)

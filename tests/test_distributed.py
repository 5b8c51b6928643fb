"""Data-parallel training with torchrun: 2 processes agree with 1 process on the same global batch."""
import os
import socket
import subprocess
import sys

import torch

from ssmkit.train import load_checkpoint

ARGS = ["train", "--task", "digits", "--layer", "s4d", "--d-model", "8", "--n-layers", "1", "--d-state", "4",
        "--batch-size", "8", "--max-steps", "4", "--warmup-steps", "1", "--lr", "1e-2", "--no-progress"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "ssmkit.cli", *ARGS, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
                          f"--master-port={_free_port()}", "-m", "ssmkit.cli", *ARGS, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    w1, _, _ = load_checkpoint(tmp_path / "one")
    w2, _, cfg = load_checkpoint(tmp_path / "two")
    assert cfg["batch_size"] == 8
    for k in w1:
        # gradients are averaged over two half-batches instead of computed on the whole batch:
        # equal up to float32 rounding
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "two" / "metrics.jsonl").is_file()

"""What ssmkit's malloc policy (``SSMKIT_MALLOC``, ssmkit.runtime.keep_freed_memory) is worth.

Run: OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_malloc.py [--rounds 3]

glibc's default behaviour (blocks above the mmap threshold mapped afresh and unmapped when
freed) against ``keep`` (served from the heap, freed memory kept for reuse). Each measurement
runs in a fresh process (``SSMKIT_MALLOC=default`` or ``keep``; one warm-up call, then timed
calls), the two alternate, and each case's time is the median over rounds. (Switching with
``mallopt`` inside one process does not compare them: blocks the heap already holds are reused
under either setting.) Cases:
- a Mamba and a Mamba-2 layer's forward (inference) at the 130m width, batch 4, length 2048;
- a whole 4-layer Mamba-2 language model's prompt forward at the 130m widths, batch 1, length 2048;
- one training step (forward + backward + AdamW) at the demo's shape: S4D and Mamba, d_model 64,
  4 layers, batch 32, length 196 (its tensors are below the mmap threshold).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = ["Mamba layer forward (4, 2048, 768)", "Mamba-2 layer forward (4, 2048, 768)",
         "Mamba-2 LM 4 layers prompt (1, 2048)", "s4d training step (32, 196), d_model 64 x4",
         "mamba training step (32, 196), d_model 64 x4"]


def build(name: str):
    """The function timed for the case ``name`` (one of CASES); only that case's model is made."""
    import torch

    from ssmkit._checks import trusted_inputs
    from ssmkit.layers import Mamba, Mamba2
    from ssmkit.models import Backbone, LanguageModel, SequenceClassifier

    g = torch.Generator().manual_seed(0)
    if "layer forward" in name:
        layer = (Mamba(768, d_state=16) if name.startswith("Mamba layer") else Mamba2(768, d_state=128, headdim=64)).eval()
        x = torch.randn(4, 2048, 768, generator=g)

        def fwd():
            with torch.no_grad(), trusted_inputs():
                layer(x)
        return fwd
    if "LM" in name:
        lm = LanguageModel(Backbone(768, 4, "mamba2", {"d_state": 128, "headdim": 64}, vocab_size=50280, norm="rms",
                                    residual_in_fp32=True, pad_vocab_size_multiple=8), tie_embeddings=True,
                           head_bias=False).eval()
        tokens = torch.randint(0, 50280, (1, 2048), generator=g)

        def lm_fwd():
            with torch.no_grad():
                lm(tokens)
        return lm_fwd
    model = SequenceClassifier(Backbone(64, 4, name.split()[0], {}, d_input=1), 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xb, yb = torch.randn(32, 196, 1, generator=g), torch.randint(0, 10, (32,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return step


def worker(name: str) -> float:
    import torch

    from ssmkit import runtime

    torch.manual_seed(0)
    fn = build(name)
    fn()  # warm-up (and load the native kernels)
    reps = 2 if ("layer" in name or "LM" in name) else 10
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    print(runtime.status()["malloc"], (time.perf_counter() - t0) / reps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    print("| case | glibc default | keep | speed-up |\n|---|---|---|---|")
    for name in CASES:
        times = {"default": [], "keep": []}
        for r in range(args.rounds):
            for policy in (("default", "keep") if r % 2 == 0 else ("keep", "default")):
                env = dict(os.environ, SSMKIT_MALLOC=policy)
                out = subprocess.run([sys.executable, __file__, "--worker", name], env=env, capture_output=True,
                                     text=True, check=True).stdout.split()
                if out[-2] != policy:
                    raise SystemExit(f"the malloc policy {policy!r} did not apply here (got {out[-2]})")
                times[policy].append(float(out[-1]))
        med = {p: statistics.median(v) for p, v in times.items()}
        print(f"| {name} | {med['default'] * 1e3:.0f} ms | {med['keep'] * 1e3:.0f} ms | "
              f"{med['default'] / med['keep']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

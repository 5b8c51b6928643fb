"""Training steps per second at several thread counts, alternated in ONE process (so that the
machine's other load is shared alike), for the `--threads` policy of docs/training.md.

Run: OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_threads.py [--layer s4d] [--rounds 3] [--steps 8]
Prints the load average, the `auto` choice, and steps/s per thread count with the ratio to 1 thread.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from ssmkit.models import Backbone, SequenceClassifier
from ssmkit.train.runtime import choose_threads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="s4d")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    # the demo's shape: d_model 64, 4 layers, batch 32, length 196
    model = SequenceClassifier(Backbone(64, 4, args.layer, {"d_state": 64}, d_input=1), 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 196, 1), torch.randint(0, 10, (32,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores; auto would choose {choose_threads()} thread(s)")
    times = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            torch.set_num_threads(n)
            step()  # warm-up of this setting
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[n].append((time.perf_counter() - t) / args.steps)
    base = min(times[counts[0]])
    for n in counts:
        best = min(times[n])
        print(f"threads {n}: {1 / best:.2f} steps/s (best of {args.rounds}), {base / best:.2f}x the {counts[0]}-thread rate")


if __name__ == "__main__":
    main()

"""LegS update: the O(N) step (cumsum + banded solve) against the dense solve it replaces.

Run: .venv/bin/python benchmarks/bench_hippo.py
Prints microseconds per step for batch 1 and 16 at N = 64, 256, 1024 and the speed-up.
"""
from __future__ import annotations

import time

import torch

from ssmkit.hippo import HiPPO, legs_scan, legs_step, legs_step_dense, transition


def per_call(fn, reps):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'N':>5} {'batch':>5} {'dense step us':>14} {'O(N) step us':>13} {'ratio':>7} {'O(N) scan us/step':>18} {'ratio':>7}")
    for N in (64, 256, 1024):
        A, B = transition("legs", N)
        for batch in (1, 16):
            c = torch.randn(batch, N, dtype=torch.float64)
            u = torch.randn(batch, dtype=torch.float64)
            reps = 200 if N < 1024 else 30
            k = 5000  # a step index deep into the stream: λ = 1/(2k)
            dense = per_call(lambda: legs_step_dense(c, u, 1 / (2 * k), 1 / (2 * (k + 1)), A, B), reps)
            fast = per_call(lambda: legs_step(c, u, 1 / (2 * k), 1 / (2 * (k + 1))), reps)
            L = 2000
            U = torch.randn(batch, L, dtype=torch.float64)
            ks = torch.arange(k, k + L, dtype=torch.float64)
            scan = per_call(lambda: legs_scan(U, 1 / (2 * ks), 1 / (2 * (ks + 1)), c), 1) / L
            print(f"{N:>5} {batch:>5} {dense * 1e6:>14.1f} {fast * 1e6:>13.1f} {dense / fast:>6.1f}x {scan * 1e6:>18.1f} {dense / scan:>6.1f}x")
    L = 10_000
    u = torch.randn(L, dtype=torch.float64)
    t = time.perf_counter()
    HiPPO("legs", 64).encode(u)
    print(f"HiPPO('legs', 64).encode of {L} samples: {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()

"""Causal convolution of (B, L, H) tensors: the direct native sum against the FFT route.

    OMP_NUM_THREADS=1 python benchmarks/bench_conv.py [--lengths 64 128 196 256 384 512] [--H 64 256] [--B 32]

For each shape, times ``ssmkit.ops.fftconv(u, K, D, method=...)`` forward and forward + backward
(gradients of u and K) with ``method="fft"`` and ``method="direct"``, alternated in the same
rounds (median of the rounds), one thread, float32, a full-length kernel (Lk = L, as the LTI
layers use). Prints the times and the ratio fft / direct (above 1: the direct sum is faster).
``fftconv``'s ``DIRECT_MAX_LEN`` is the crossover read from this table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate  # noqa: E402

from ssmkit.ops.fftconv import DIRECT_MAX_LEN, fftconv  # noqa: E402


def _rounds(fns, repeats):
    return {k: statistics.median(v) for k, v in alternate(fns, repeats).items()}


def bench(B, L, H, repeats):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, L, H, generator=g, requires_grad=True)
    K = torch.randn(H, L, generator=g, requires_grad=True)
    D = torch.randn(H, generator=g, requires_grad=True)
    gy = torch.randn(B, L, H, generator=g)

    def fwd(method):
        def run():
            with torch.no_grad():
                fftconv(u, K, D, method=method)
        return run

    def fwd_bwd(method):
        def run():
            u.grad = K.grad = D.grad = None
            fftconv(u, K, D, method=method).backward(gy)
        return run

    for m in ("fft", "direct"):  # warm-up
        fwd_bwd(m)()
    t = _rounds({"fft fwd": fwd("fft"), "direct fwd": fwd("direct"),
                 "fft fwd+bwd": fwd_bwd("fft"), "direct fwd+bwd": fwd_bwd("direct")}, repeats)
    print(f"B={B:3d} L={L:5d} H={H:4d}  forward: fft {t['fft fwd'] * 1e3:8.2f} ms  direct {t['direct fwd'] * 1e3:8.2f} ms"
          f"  ({t['fft fwd'] / t['direct fwd']:5.2f}x)   forward+backward: fft {t['fft fwd+bwd'] * 1e3:8.2f} ms"
          f"  direct {t['direct fwd+bwd'] * 1e3:8.2f} ms  ({t['fft fwd+bwd'] / t['direct fwd+bwd']:5.2f}x)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="*", default=[64, 128, 196, 256, 384, 512])
    ap.add_argument("--H", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"{torch.get_num_threads()} thread(s); fftconv's method='auto' sums directly up to L = {DIRECT_MAX_LEN}")
    for H in args.H:
        for L in args.lengths:
            bench(args.B, L, H, args.repeats)


if __name__ == "__main__":
    main()

"""Selective scan on the CPU: ssmkit's fast path against the sequential reference and mambapy.

Run: .venv/bin/python benchmarks/bench_selective_scan.py   (mambapy: pip install -e ".[bench]")
Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss)
is its own. Prints forward+backward seconds, peak memory and ratios; Mamba.step decode
tokens/s; and a bandwidth-bound estimate for the same work.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

B, D, N = 4, 512, 16
LENGTHS = (1024, 4096)


def _inputs(L):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, D, L, generator=g, requires_grad=True)
    delta = (0.5 * torch.randn(B, D, L, generator=g)).requires_grad_()
    A = (-torch.exp(torch.randn(D, N, generator=g))).requires_grad_()
    Bm = torch.randn(B, N, L, generator=g, requires_grad=True)
    Cm = torch.randn(B, N, L, generator=g, requires_grad=True)
    return u, delta, A, Bm, Cm


def run_one(impl: str, L: int) -> dict:
    import resource

    torch.set_num_threads(2)
    u, delta, A, Bm, Cm = _inputs(L)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if impl == "ssmkit":
        from ssmkit.ops import selective_scan

        y = selective_scan(u, delta, A, Bm, Cm, delta_softplus=True, chunk=32)
    elif impl == "reference":
        from ssmkit.ops import selective_scan_ref

        y = selective_scan_ref(u, delta, A, Bm, Cm, delta_softplus=True)
    else:  # mambapy's parallel (Blelloch) scan, as its Mamba block calls it
        from mambapy.pscan import pscan

        dt = torch.nn.functional.softplus(delta).transpose(1, 2)  # (B, L, D)
        dA = torch.exp(dt.unsqueeze(-1) * A)
        BX = dt.unsqueeze(-1) * Bm.transpose(1, 2).unsqueeze(2) * u.transpose(1, 2).unsqueeze(-1)
        hs = pscan(dA, BX)
        y = (hs @ Cm.transpose(1, 2).unsqueeze(-1)).squeeze(3).transpose(1, 2)
    y.sum().backward()
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": sec, "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024}


def decode_rate() -> float:
    from ssmkit.layers import Mamba

    torch.set_num_threads(2)
    layer = Mamba(512).eval()
    state = layer.initial_state(1)
    x = torch.randn(1, 512)
    with torch.no_grad():
        for _ in range(20):
            _, state = layer.step(x, state)
        n = 300
        t = time.perf_counter()
        for _ in range(n):
            _, state = layer.step(x, state)
    return n / (time.perf_counter() - t)


def bandwidth_gbs() -> float:
    torch.set_num_threads(2)
    a = torch.randn(64 * 1024 * 1024 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    return 10 * 2 * a.numel() * 4 / (time.perf_counter() - t) / 1e9


def main():
    if len(sys.argv) == 3:
        print(json.dumps(run_one(sys.argv[1], int(sys.argv[2]))))
        return
    try:
        import mambapy  # noqa: F401
        impls = ("ssmkit", "reference", "mambapy")
    except ImportError:
        impls = ("ssmkit", "reference")
        print("mambapy is not installed (pip install -e '.[bench]'): comparing against the reference only")
    print(f"torch {torch.__version__}, 2 threads; selective scan forward+backward, batch {B}, D={D}, N={N}")
    print(f"{'L':>6} {'impl':>10} {'seconds':>9} {'peak MB':>9} {'vs ssmkit':>10}")
    bw = bandwidth_gbs()
    for L in LENGTHS:
        res = {}
        for impl in impls:
            if impl == "reference" and L > 1024:
                continue  # minutes per run; the ratio at L=1024 says enough
            out = subprocess.run([sys.executable, __file__, impl, str(L)], capture_output=True, text=True)
            if out.returncode:
                print(f"{L:>6} {impl:>10} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            res[impl] = json.loads(out.stdout)
        for impl, r in res.items():
            ratio = r["seconds"] / res["ssmkit"]["seconds"]
            print(f"{L:>6} {impl:>10} {r['seconds']:>9.3f} {r['peak_mb']:>9.0f} {ratio:>9.1f}x")
        # memory-bound estimate: the (B, D, L, N) state is read/written about 12 times in fwd+bwd
        est = 12 * B * D * L * N * 4 / (bw * 1e9)
        print(f"{L:>6} {'bound':>10} {est:>9.3f}   (12 passes over the (B,D,L,N) state at {bw:.1f} GB/s copy bandwidth)")
    print(f"Mamba(d_model=512).step decode: {decode_rate():.0f} tokens/s (batch 1)")


if __name__ == "__main__":
    main()

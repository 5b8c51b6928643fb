"""Selective scan on the CPU: ssmkit's native kernel and torch path against the sequential
reference and mambapy.

Run: .venv/bin/python benchmarks/bench_selective_scan.py   (mambapy: pip install -e ".[bench]")
Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss)
is its own; inside it, forward+backward is run once untimed (except the slow reference), then
repeated, and the median time is reported (the machine may be shared, so single timings are
noisy). Prints seconds, peak memory and the
speed-up over mambapy; Mamba.step decode tokens/s; and a compute-bound estimate for the
same work. "CPU s" is the process's CPU time (both threads), less sensitive to other load than
wall time but inflated by OpenMP threads spinning while they wait.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

B, D, N = 4, 512, 16
LENGTHS = (1024, 4096)
REPEATS = {"native": 9, "torch": 3, "reference": 1, "mambapy": 3}
LABELS = {"native": "ssmkit native", "torch": "ssmkit torch", "reference": "reference", "mambapy": "mambapy"}


def _inputs(L):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, D, L, generator=g, requires_grad=True)
    delta = (0.5 * torch.randn(B, D, L, generator=g)).requires_grad_()
    A = (-torch.exp(torch.randn(D, N, generator=g))).requires_grad_()
    Bm = torch.randn(B, N, L, generator=g, requires_grad=True)
    Cm = torch.randn(B, N, L, generator=g, requires_grad=True)
    return u, delta, A, Bm, Cm


def _fwd_bwd(impl, u, delta, A, Bm, Cm):
    if impl in ("native", "torch"):
        from ssmkit.ops import selective_scan

        y = selective_scan(u, delta, A, Bm, Cm, delta_softplus=True, native=impl == "native",
                           checkpoint_every=64 if impl == "native" else 32)
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


def run_one(impl: str, L: int) -> dict:
    import resource

    torch.set_num_threads(2)
    u, delta, A, Bm, Cm = _inputs(L)
    if impl == "native":
        from ssmkit.ops import _native

        assert _native.available(), "native kernel unavailable"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if impl != "reference":  # one untimed warm-up run (thread pool start, first-touch page faults)
        _fwd_bwd(impl, u, delta, A, Bm, Cm)
    times, cpu = [], []
    for _ in range(REPEATS[impl]):
        for x in (u, delta, A, Bm, Cm):
            x.grad = None
        t, c = time.perf_counter(), time.process_time()
        _fwd_bwd(impl, u, delta, A, Bm, Cm)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times), "min": min(times), "cpu": statistics.median(cpu),
            "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024}


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


def compute_bound(L: int) -> tuple[float, float, float]:
    """Seconds for the arithmetic of fwd+bwd at full vector throughput on 2 cores: per element
    of the (B, D, L, N) state, 2 exp (forward, and the backward's recompute) and about 20
    other flops (forward ~4, recompute ~3, reverse step ~13). Rates measured here: sgemm
    GFLOP/s with 2 threads (an upper bound on flop throughput), torch.exp on an in-cache block
    with 1 thread, times 2 cores. Returns (seconds, GFLOP/s, Gexp/s)."""
    torch.set_num_threads(2)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    gflops = 10 * 2 * 1024 ** 3 / (time.perf_counter() - t) / 1e9
    torch.set_num_threads(1)
    x = torch.rand(32768) * -4
    out = torch.empty_like(x)
    torch.exp(x, out=out)
    t = time.perf_counter()
    for _ in range(300):
        torch.exp(x, out=out)
    gexp = 2 * 300 * x.numel() / (time.perf_counter() - t) / 1e9
    torch.set_num_threads(2)
    elems = B * D * L * N
    return elems * (2 / (gexp * 1e9) + 20 / (gflops * 1e9)), gflops, gexp


def main():
    if len(sys.argv) == 3:
        print(json.dumps(run_one(sys.argv[1], int(sys.argv[2]))))
        return
    try:
        import mambapy  # noqa: F401
        impls = ("native", "torch", "reference", "mambapy")
    except ImportError:
        impls = ("native", "torch", "reference")
        print("mambapy is not installed (pip install -e '.[bench]'): comparing against the reference only")
    print(f"torch {torch.__version__}, 2 threads; selective scan forward+backward, batch {B}, D={D}, N={N}; "
          f"median of {REPEATS} runs")
    print(f"{'L':>6} {'impl':>14} {'seconds':>9} {'min':>8} {'CPU s':>8} {'peak MB':>8} {'mambapy/impl':>13}")
    for L in LENGTHS:
        res = {}
        for impl in impls:
            if impl == "reference" and L > 1024:
                continue  # tens of seconds per run; the ratio at L=1024 says enough
            out = subprocess.run([sys.executable, __file__, impl, str(L)], capture_output=True, text=True)
            if out.returncode:
                print(f"{L:>6} {LABELS[impl]:>14} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            res[impl] = json.loads(out.stdout)
        ref = res.get("mambapy")
        for impl, r in res.items():
            ratio = f"{ref['seconds'] / r['seconds']:>12.1f}x" if ref else ""
            print(f"{L:>6} {LABELS[impl]:>14} {r['seconds']:>9.3f} {r['min']:>8.3f} {r['cpu']:>8.3f} {r['peak_mb']:>8.0f} {ratio}")
        est, gflops, gexp = compute_bound(L)
        print(f"{L:>6} {'compute bound':>14} {est:>9.3f}   (2 exp + ~20 flops per state element; "
              f"{gflops:.0f} GFLOP/s sgemm, {gexp:.2f} Gexp/s)")
    print(f"Mamba(d_model=512).step decode: {decode_rate():.0f} tokens/s (batch 1)")


if __name__ == "__main__":
    main()

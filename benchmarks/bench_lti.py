"""LTI kernels: time and peak memory of the S4 (Cauchy), S4D (Vandermonde) and RTF (rational)
kernels against a materialised naive baseline; RTF time against state size; step latency.

Run: .venv/bin/python benchmarks/bench_lti.py            (kernels, memory, step latency)
     .venv/bin/python benchmarks/bench_lti.py train [--baseline REF] [--profile]
         the demo's model (d_model 64, 4 layers, d_state 64, batch 32, length 196; forward + backward
         + AdamW, one thread) per LTI layer; with --baseline, the same model from git REF's src/
         (exported with `git archive`) timed in alternation with this checkout's, ratios printed
     .venv/bin/python benchmarks/bench_lti.py state [L]     forward with and without return_state
     .venv/bin/python benchmarks/bench_lti.py s4grad       S4 kernel forward vs forward + backward
     .venv/bin/python benchmarks/bench_lti.py long [L]      S4 against S4D forward at length L
Each kernel runs in a fresh subprocess; peak memory is that process's peak resident set
(ru_maxrss) minus its resident set just before the first call, so it counts what the call
allocates. Kernel times are the median of REPEATS calls (one for the slow naive baseline): the
CPU may be shared.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

H, N = 256, 64
REPEATS = 5
STEP_POSITIONS = (100, 100_000)  # each position is reached by stepping: about 2 minutes for S4


def _kernel(kind: str, L: int, n: int = N) -> dict:
    import resource

    torch.set_num_threads(2)
    from ssmkit.layers import RTF, S4, S4D

    torch.manual_seed(0)
    if kind == "s4":
        layer = S4(H, n, l_max=L)
    elif kind == "s4d":
        layer = S4D(H, n)
    elif kind == "rtf":
        layer = RTF(H, n, l_max=L, init="montel")
    else:  # naive: the S4D system's dense (H, N, N) matrices, powered L times, all powers kept
        layer = S4D(H, n)
    with torch.no_grad():
        dense = layer.discrete_ssm()[:3] if kind == "naive" else None
        layer.kernel(min(L, 64))  # warm-up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(1 if kind == "naive" else REPEATS):
            t = time.perf_counter()
            K = _naive(*dense, L) if kind == "naive" else layer.kernel(L)
            times.append(time.perf_counter() - t)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert K.shape == (H, L) and bool(torch.isfinite(K).all())
    return {"seconds": statistics.median(times), "extra_mb": (peak - base) / 1024}


def _naive(Ad, Bd, C, L):
    """Materialise Ā^k B̄ for every k: (H, L, N) complex, then contract with C."""
    v = Bd
    powers = torch.empty(H, L, Ad.shape[-1], dtype=Ad.dtype)
    for k in range(L):
        powers[:, k] = v
        v = (Ad @ v.unsqueeze(-1)).squeeze(-1)
    return torch.einsum("hln,hn->hl", powers, C).real


def _step_latency(kind: str) -> dict:
    torch.set_num_threads(1)
    from ssmkit.layers import RTF, S4, S4D

    torch.manual_seed(0)
    layer = {"s4": lambda: S4(H, N, l_max=1024), "s4d": lambda: S4D(H, N), "rtf": lambda: RTF(H, N, l_max=1024)}[kind]()
    x = torch.randn(1, H)
    out = {}
    with torch.no_grad():
        state = layer.initial_state(1)
        pos = 0
        for target in STEP_POSITIONS:
            while pos < target - 50:  # advance the state; the cost per step is what is measured
                _, state = layer.step(x, state)
                pos += 1
            t = time.perf_counter()
            for _ in range(50):
                _, state = layer.step(x, state)
            pos += 50
            out[target] = (time.perf_counter() - t) / 50 * 1e6
    return out


def _train_worker(layer: str, steps: int, profile: bool) -> dict:
    """ms per training step of the demo's model (the checkout on PYTHONPATH), one thread."""
    torch.set_num_threads(1)
    from torch import nn

    from ssmkit.models.backbone import Backbone

    torch.manual_seed(0)
    bb = Backbone(d_model=64, n_layers=4, layer=layer, layer_kwargs=dict(d_state=64), d_input=1)
    head = nn.Linear(64, 10)
    opt = torch.optim.AdamW(list(bb.parameters()) + list(head.parameters()), lr=1e-3)
    x, t = torch.randn(32, 196, 1), torch.randint(0, 10, (32,))

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(bb(x).mean(1)), t).backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out = {"ms": statistics.median(times) * 1e3}
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(3):
                step()
        out["table"] = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return out


def _train(argv):
    import os
    import tempfile

    baseline = argv[argv.index("--baseline") + 1] if "--baseline" in argv else None
    profile = "--profile" in argv
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(os.path.dirname(here), "src")
    trees = {"this checkout": src}
    tmp = tempfile.TemporaryDirectory()
    if baseline:
        root = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                              check=True).stdout.strip()
        arch = subprocess.run(["git", "-C", root, "archive", baseline, "src"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp.name], input=arch, check=True)
        trees = {f"baseline {baseline}": os.path.join(tmp.name, "src"), **trees}

    def run(tree, layer, prof=False):
        env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
        r = subprocess.run([sys.executable, __file__, "_train", layer, "5", "1" if prof else "0"], env=env,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        return json.loads(r.stdout)

    print("demo model: d_model 64, 4 layers, d_state 64, batch 32, length 196, fwd+bwd+AdamW, 1 thread;")
    print("median ms/step over 5 steps, 3 rounds alternating the trees (shared machine: compare ratios)")
    for layer in ("s4d", "s4", "rtf"):
        res = {name: [] for name in trees}
        for _ in range(3):
            for name, tree in trees.items():
                res[name].append(run(tree, layer)["ms"])
        med = {name: statistics.median(v) for name, v in res.items()}
        line = ", ".join(f"{name}: {m:.0f} ms" for name, m in med.items())
        if baseline:
            line += f"; speed-up {med[f'baseline {baseline}'] / med['this checkout']:.2f}x"
        print(f"  {layer:>4}: {line}")
        if profile and layer == "s4d":
            for name, tree in trees.items():
                print(f"\nprofile ({name}, s4d, 3 steps):\n" + run(tree, layer, True)["table"])


def _state(L: int):
    torch.set_num_threads(1)
    from ssmkit.layers import RTF, S4, S4D

    torch.manual_seed(0)
    x = torch.randn(1, L, 64)
    print(f"forward with and without return_state, d_model 64, d_state 64, batch 1, L={L}, 1 thread")
    for name, layer in (("s4", S4(64, 64, l_max=1024)), ("s4d", S4D(64, 64)), ("rtf", RTF(64, 64, l_max=1024, init="montel"))):
        with torch.no_grad():
            layer(x[:, :64], return_state=True)
            res = {False: [], True: []}
            for _ in range(2):
                for rs in (False, True):
                    t = time.perf_counter()
                    layer(x, return_state=rs)
                    res[rs].append(time.perf_counter() - t)
        a, b = min(res[False]), min(res[True])
        print(f"  {name:>4}: without {a:.3f} s, with state {b:.3f} s, ratio {b / a:.2f}")


def _s4grad():
    import importlib

    torch.set_num_threads(1)
    from ssmkit.layers import S4

    cauchy = importlib.import_module("ssmkit.kernels.cauchy")
    torch.manual_seed(0)
    Hs, L = 64, 1024
    layer = S4(Hs, 64, l_max=L)
    rounds = 15
    print(f"S4 kernel, H={Hs}, N=64, L={L}, 1 thread: forward vs forward + backward (median of {rounds}, alternated)")

    def run(method, bwd):
        lam, P, B, Ct, dt = layer._params()
        K = cauchy.dplr_kernel(lam, P, B, Ct, dt, L, method=method)
        if bwd:
            K.pow(2).sum().backward()

    res = {(m, b): [] for m in ("cauchy", "vandermonde") for b in (False, True)}
    for m, b in res:
        run(m, b)
    for _ in range(rounds):
        for (m, b), v in res.items():
            t = time.perf_counter()
            run(m, b)
            v.append(time.perf_counter() - t)
    for m in ("cauchy", "vandermonde"):
        f, fb = statistics.median(res[(m, False)]), statistics.median(res[(m, True)])
        print(f"  {m:>11}: forward {f * 1e3:.1f} ms, forward+backward {fb * 1e3:.1f} ms, "
              f"(forward+backward)/forward {fb / f:.2f}")


def _long(L: int):
    torch.set_num_threads(1)
    from ssmkit.layers import S4, S4D

    torch.manual_seed(0)
    x = torch.randn(1, L, 64)
    s4, s4d = S4(64, 64, l_max=1024), S4D(64, 64)
    print(f"forward at L={L}, d_model 64, d_state 64, batch 1, 1 thread (S4's l_max = 1024)")
    with torch.no_grad():
        s4(x[:, :2048]), s4d(x[:, :2048])
        t = time.perf_counter(); s4d(x); a = time.perf_counter() - t  # noqa: E702
        t = time.perf_counter(); s4(x); b = time.perf_counter() - t  # noqa: E702
    print(f"  S4D {a:.2f} s, S4 {b:.2f} s, ratio {b / a:.2f}")


def main():
    if len(sys.argv) > 1:
        cmd = sys.argv[1]
        if cmd == "_train":
            print(json.dumps(_train_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")))
        elif cmd == "train":
            _train(sys.argv[2:])
        elif cmd == "state":
            _state(int(sys.argv[2]) if len(sys.argv) > 2 else 20000)
        elif cmd == "s4grad":
            _s4grad()
        elif cmd == "long":
            _long(int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20)
        elif cmd == "step":
            print(json.dumps(_step_latency(sys.argv[2])))
        else:
            print(json.dumps(_kernel(cmd, int(sys.argv[2]), int(sys.argv[3]))))
        return

    def sub(*args):
        r = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True)
        if r.returncode:
            return None
        return json.loads(r.stdout)

    print(f"torch {torch.__version__}; kernels for H={H}, N={N} (2 threads)")
    print(f"{'L':>6} {'kernel':>7} {'seconds':>9} {'extra MB':>9} {'vs naive':>9}")
    for L in (1024, 4096, 16384):
        res = {k: sub(k, L, N) for k in ("s4", "s4d", "rtf")}
        res["naive"] = sub("naive", L, N) if L <= 4096 else None  # (H, L, N) complex128 = 4.3 GB at 16384
        for k, r in res.items():
            if r is None:
                print(f"{L:>6} {k:>7} {'skipped (materialised powers need > 4 GB)' if k == 'naive' else 'failed'}")
                continue
            ratio = f"{res['naive']['seconds'] / r['seconds']:.1f}x" if res.get("naive") else "-"
            print(f"{L:>6} {k:>7} {r['seconds']:>9.3f} {r['extra_mb']:>9.0f} {ratio:>9}")
    print(f"\nRTF kernel time against state size, H={H}, L=16384")
    base = None
    for n in (16, 64, 256, 1024, 2048):
        r = sub("rtf", 16384, n)
        base = base or r["seconds"]
        print(f"  N={n:>5}: {r['seconds']:.3f} s ({r['seconds'] / base:.2f}x of N=16), extra {r['extra_mb']:.0f} MB")
    print(f"\nstep latency, H={H}, N={N}, batch 1, 1 thread (µs per step)")
    for k in ("s4", "s4d", "rtf"):
        r = sub("step", k)
        print(f"  {k:>4}: " + ", ".join(f"position {p:,}: {r[str(p)]:.0f} µs" for p in STEP_POSITIONS))


if __name__ == "__main__":
    main()

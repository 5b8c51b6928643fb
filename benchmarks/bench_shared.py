"""Behaviour on a shared machine: throughput alone and next to CPU-bound processes, per thread
count and OpenMP waiting policy, in one run.

Run: .venv/bin/python benchmarks/bench_shared.py [--hogs 2] [--rounds 2] [--seconds 4]
     [--threads 1 2] [--policies default passive short] [--workloads train_s4d train_mamba decode_mamba]

Workloads (the demo's shape):
- ``train_s4d`` / ``train_mamba``: a 4-layer backbone, d_model 64, batch 32, length 196,
  10-class head, forward + backward + AdamW; steps/s;
- ``decode_mamba``: a 4-layer Mamba language model (d_model 64, vocabulary 256), recurrent
  ``step`` at batch 1; tokens/s.

Each (thread count, policy) runs in a fresh process whose environment selects the waiting
policy before torch is imported (``default``: nothing set; ``passive``: OMP_WAIT_POLICY=PASSIVE;
``short``: ssmkit's default, see ssmkit.runtime; ``spinN``: GOMP_SPINCOUNT=N). That process
measures every workload alone and next to ``--hogs`` busy-loop processes it starts and stops
itself (alone first in even rounds, loaded first in odd ones); rounds rotate the order of the
processes. With 1 thread
the policy does not matter (there is no pool to wait in), so only ``default`` runs.

The table gives medians, the slow-down (alone / loaded) and the slow-down a fair share of the
cores predicts: with P cores, H hogs and t threads the run gets min(t, P t / (H + t)) cores
instead of min(t, P). "cpu" is the process's CPU time per wall second (cores busy, spinning
included). Other users of the machine are not controlled: the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def policy_env(policy: str) -> dict:
    if policy == "default":
        return {}
    if policy == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    if policy.startswith("spin"):
        return {"GOMP_SPINCOUNT": str(int(policy[4:]))}
    sys.path.insert(0, SRC)
    from ssmkit.runtime import wait_policy_env  # noqa: E402  (imports nothing heavy)

    return wait_policy_env(policy)


def build(workload: str):
    """A zero-argument function doing one unit of work (a training step or a decoded token)."""
    import torch

    from ssmkit.models import Backbone, LanguageModel, SequenceClassifier

    torch.manual_seed(0)
    kind, layer = workload.split("_")
    if kind == "train":
        model = SequenceClassifier(Backbone(64, 4, layer, {}, d_input=1), 10)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(32, 196, 1), torch.randint(0, 10, (32,))

        def unit():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return unit
    lm = LanguageModel(Backbone(64, 4, layer, {}, vocab_size=256), 256).eval()
    with torch.inference_mode():
        _, states = lm(torch.randint(0, 256, (1, 16)), return_state=True)
    box = [states, torch.zeros(1, dtype=torch.long)]

    def unit():
        with torch.inference_mode():
            logits, box[0] = lm.step(box[1], box[0])
            box[1] = logits.argmax(-1)
    return unit


def measure(unit, seconds: float, min_units: int) -> dict:
    unit()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < min_units or time.perf_counter() - t0 < seconds:
        unit()
        n += 1
    wall = time.perf_counter() - t0
    return {"rate": n / wall, "cpu": (time.process_time() - c0) / wall}


def worker(cfg: dict) -> dict:
    """One process per (threads, policy): every workload, alone and next to the hogs, in the
    order ``cfg["phases"]`` gives (hog counts)."""
    from ssmkit import runtime

    runtime.configure(cfg["threads"])
    out = {}
    for w in cfg["workloads"]:
        unit = build(w)
        for hogs in cfg["phases"]:
            procs = start_hogs(hogs)
            try:
                time.sleep(0.3 if hogs else 0.0)
                out[f"{w}|{hogs}"] = measure(unit, cfg["seconds"], 2 if w.startswith("train") else 20)
            finally:
                stop_hogs(procs)
    return {"results": out, "runtimes": runtime.openmp_runtimes(), "wait_env": runtime.status()["wait_env"]}


def run_child(cfg: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS and k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(policy_env(cfg["policy"]))
    env["SSMKIT_WAIT_POLICY"] = "default"  # the variables above are the whole policy
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                       env=env, timeout=3600)
    if r.returncode:
        raise RuntimeError(f"worker failed for {cfg}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_hogs(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_hogs(hogs: list) -> None:
    for p in hogs:
        p.kill()
    for p in hogs:
        p.wait()


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--policies", nargs="*", default=["default", "passive", "short"])
    ap.add_argument("--workloads", nargs="*", default=["train_s4d", "train_mamba", "decode_mamba"])
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    sys.path.insert(0, SRC)
    from ssmkit.runtime import available_cpus  # noqa: E402

    P = available_cpus()
    H = a.hogs
    configs = [dict(threads=t, policy=p, workloads=a.workloads, seconds=a.seconds)
               for t in a.threads for p in (a.policies if t > 1 else ["default"])]
    results = {}
    print(f"{P} CPUs; load average before: {loadavg()}", flush=True)
    runtimes = set()
    for r in range(a.rounds):
        k = r % len(configs)
        for cfg in configs[k:] + configs[:k]:
            cfg = dict(cfg, phases=[0, H] if r % 2 == 0 else [H, 0])
            out = run_child(cfg)
            runtimes.add(tuple(out["runtimes"]))
            for key, m in out["results"].items():
                w, hogs = key.split("|")
                results.setdefault((w, cfg["threads"], cfg["policy"], int(hogs)), []).append(m)
                print(f"  round {r} t={cfg['threads']} {cfg['policy']} {w} hogs {hogs}: {m['rate']:.3f}/s "
                      f"cpu {m['cpu']:.2f}", flush=True)
            print(f"  load average {loadavg()}", flush=True)
    print(f"load average after: {loadavg()}")
    print(f"OpenMP runtimes loaded in the workers: {sorted(runtimes)}")
    print(f"\nmedians of {a.rounds} alternated runs; loaded = {H} busy-loop processes on {P} CPUs")
    print("| workload | threads | policy | alone /s | loaded /s | cpu alone | cpu loaded | slow-down | "
          "fair share | excess | loaded vs 1 thread loaded |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in a.workloads:
        one = statistics.median(o["rate"] for o in results[(w, 1, "default", H)]) if (w, 1, "default", H) in results else None
        for cfg in configs:
            t, p = cfg["threads"], cfg["policy"]
            alone = results[(w, t, p, 0)]
            loaded = results[(w, t, p, H)]
            ra, rl = statistics.median(o["rate"] for o in alone), statistics.median(o["rate"] for o in loaded)
            ca, cl = statistics.median(o["cpu"] for o in alone), statistics.median(o["cpu"] for o in loaded)
            fair = min(t, P) / min(t, P * t / (H + t))
            slow = ra / rl
            vs1 = f"{rl / one:.2f}x" if one else "-"
            print(f"| {w} | {t} | {p} | {ra:.3f} | {rl:.3f} | {ca:.2f} | {cl:.2f} | {slow:.2f}x | {fair:.2f}x | "
                  f"{slow / fair:.2f}x | {vs1} |")


if __name__ == "__main__":
    main()

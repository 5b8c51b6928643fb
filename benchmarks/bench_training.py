"""Training throughput of whole models: this checkout against the baseline commit, in one run.

Run: .venv/bin/python benchmarks/bench_training.py [--quick] [--baseline COMMIT] [--threads 1]

For every layer family, d_model 64 and 256, lengths 196, 1024 and 4096: a 2-layer backbone
classifies real-valued sequences (10 classes; the demo's setting at length 196) with
forward + backward + AdamW. The batch keeps about 6,272 tokens per step (32 sequences at
length 196, 6 at 1024, 1 at 4096). Each measurement runs in a fresh process (2 warm-up steps,
then timed steps); the new and the baseline code alternate, and the table gives medians of
sequences/s and their ratio. ``--quick`` runs only the demo's shape (d_model 64, length 196).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS = ["s4", "s4d", "rtf", "s5", "mamba", "mamba2"]


def worker(cfg: dict) -> dict:
    import torch

    from ssmkit.models import Backbone, SequenceClassifier

    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    layer, H, L, B = cfg["layer"], cfg["d_model"], cfg["length"], cfg["batch"]
    kw = {"l_max": L} if layer in ("rtf", "s4") else {}
    model = SequenceClassifier(Backbone(H, 2, layer, kw, d_input=1), 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(B, L, 1), torch.randint(0, 10, (B,))
    steps, t = 0, None
    deadline = None
    while True:
        if steps == 2:
            t = time.perf_counter()
            deadline = t + cfg["seconds"]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if t is not None and steps >= 2 + cfg["min_steps"] and time.perf_counter() > deadline:
            break
    rate = (steps - 2) * B / (time.perf_counter() - t)
    if not bool(torch.isfinite(loss)):  # a diverged model computes on NaN/inf, at another speed
        raise SystemExit(f"the loss is not finite after {steps} steps ({loss.item()}): not a measurement")
    return {"seq_per_s": rate}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--layers", nargs="*", default=LAYERS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    import _versions

    shapes = [(64, 196)] if a.quick else [(64, 196), (64, 1024), (64, 4096), (256, 196), (256, 1024), (256, 4096)]
    configs = [dict(layer=lay, d_model=H, length=L, batch=max(1, 6272 // L), threads=a.threads,
                    seconds=a.seconds, min_steps=3) for H, L in shapes for lay in a.layers]
    base = a.baseline or _versions.BASELINE
    print(f"training throughput, sequences/s (median of {a.rounds} alternated runs, {a.threads} thread(s)); "
          f"baseline {base}")
    print(f"| layer | d_model | length | batch | this | baseline | speed-up |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for cfg, new, old, err in _versions.compare(Path(__file__), configs, "seq_per_s", base, a.rounds, a.threads):
        note = f" ({'; '.join(f'{k}: {v}' for k, v in err.items())})" if err else ""
        print(f"| {cfg['layer']} | {cfg['d_model']} | {cfg['length']} | {cfg['batch']} | {new:.1f} | {old:.1f} | "
              f"{new / old:.2f}x |{note}", flush=True)


if __name__ == "__main__":
    main()

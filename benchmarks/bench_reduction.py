"""Balanced truncation of a trained run: test metric, kernel error against the bound, and step
latency at each order, plus the source's Hankel singular values per layer.

Run (after ``ssmkit demo --out /tmp/demo_inspect`` and ``ssmkit reduce`` of each order):
    python benchmarks/bench_reduction.py /tmp/demo_inspect/smnist_s4d /tmp/demo_inspect/r32 /tmp/demo_inspect/r16 ...

Each reduced run folder must hold ``reduction.json`` (written by ``ssmkit reduce``). Step latency
is the time of one ``backbone.step`` (every layer, batch 1 and 50, float32, one thread), the
models measured alternately in ROUNDS rounds of STEPS steps in this one process (the machine may
be shared); the median round is reported with its ratio to the source model. Writes the table
(markdown) to stdout and a figure of error and bound against order to --figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROUNDS, STEPS = 7, 100


def _step_time(model, batch: int) -> float:
    bb = model.backbone
    states = bb.initial_state(batch)
    d_in = bb.d_input
    x = torch.randn(STEPS, batch, d_in)
    with torch.no_grad():
        t = time.perf_counter()
        for k in range(STEPS):
            _, states = bb.step(x[k], states)
        return (time.perf_counter() - t) / STEPS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("source")
    p.add_argument("reduced", nargs="+")
    p.add_argument("--figure", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from ssmkit.train import evaluate, load_model

    runs = [args.source] + args.reduced
    models, rows = [], []
    for r in runs:
        model, config, task = load_model(r)
        rec = json.loads((Path(r) / "reduction.json").read_text()) if r != args.source else None
        res = evaluate(model, task, "test")
        rows.append({"run": r, "d_state": config.d_state, "acc": res.get("acc", res.get("mse")), "rec": rec})
        models.append(model)
    for m in models:  # warm-up (caches of the step constants)
        _step_time(m, 1)
    lat = {b: [[] for _ in models] for b in (1, 50)}
    for _ in range(ROUNDS):
        for b in (1, 50):
            for i, m in enumerate(models):
                lat[b][i].append(_step_time(m, b))
    print("| model | order r | d_state | test acc | max bound | max measured | median bound | median measured "
          "| max measured / ‖G‖∞ | step µs (B=1) | vs full | step µs (B=50) | vs full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {b: statistics.median(lat[b][0]) for b in (1, 50)}
    curve = []
    for i, row in enumerate(rows):
        rec = row["rec"]
        t1, t50 = statistics.median(lat[1][i]), statistics.median(lat[50][i])
        if rec is None:
            cells = ["source", "", str(row["d_state"]), f"{row['acc']:.3f}", "0", "0", "0", "0", "0"]
        else:
            b = np.concatenate([l["bound"] for l in rec["layers"].values()])
            e = np.concatenate([l["error"] for l in rec["layers"].values()])
            n = np.concatenate([l["hinf_norm"] for l in rec["layers"].values()])
            cells = [Path(row["run"]).name, str(rec["order"]), str(row["d_state"]), f"{row['acc']:.3f}",
                     f"{b.max():.3g}", f"{e.max():.3g}", f"{np.median(b):.3g}", f"{np.median(e):.3g}",
                     f"{(e / n).max():.3g}"]
            curve.append((rec["order"], np.median(b), np.median(e), b.max(), e.max()))
        cells += [f"{t1 * 1e6:.0f}", f"{base[1] / t1:.2f}x", f"{t50 * 1e6:.0f}", f"{base[50] / t50:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    # Hankel singular values of the source, per layer (from the first reduced run's record)
    rec = rows[1]["rec"]
    print("\nSource Hankel singular values per layer (median channel): order whose bound is 10% / 1% of the "
          "order-0 bound, and σ_32/σ_1, σ_16/σ_1, σ_8/σ_1:")
    print("| layer | r(10%) | r(1%) | σ_32/σ_1 | σ_16/σ_1 | σ_8/σ_1 | median ‖G‖∞ |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, l in rec["layers"].items():
        hsv = np.array(l["hsv"])
        tails = 2 * np.cumsum(hsv[:, ::-1], 1)[:, ::-1]  # tails[:, r] = bound at order r
        tails = np.concatenate([tails, np.zeros((hsv.shape[0], 1))], 1)
        r10 = [int(np.nonzero(t <= 0.1 * t[0])[0][0]) for t in tails]
        r1 = [int(np.nonzero(t <= 0.01 * t[0])[0][0]) for t in tails]
        rel = np.median(hsv / hsv[:, :1], 0)
        print(f"| {name} | {int(np.median(r10))} | {int(np.median(r1))} | {rel[31]:.3g} | {rel[15]:.3g} | {rel[7]:.3g} "
              f"| {np.median(l['hinf_norm']):.3g} |")
    if args.figure and curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        curve.sort()
        o = [c[0] for c in curve]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        a1.semilogy(o, [c[1] for c in curve], "o-", label="bound 2Σσ (median channel)")
        a1.semilogy(o, [c[2] for c in curve], "s-", label="measured max_ω|G-G_r| (median channel)")
        a1.semilogy(o, [c[3] for c in curve], "o--", label="bound (worst channel)")
        a1.semilogy(o, [c[4] for c in curve], "s--", label="measured (worst channel)")
        a1.set(xlabel="order r", ylabel="H∞ error", xscale="log", title="kernel error vs bound")
        a1.set_xticks(o, [str(v) for v in o])
        a1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        a1.legend(fontsize=7)
        accs = {r["rec"]["order"]: r["acc"] for r in rows[1:]}
        full = rows[0]["d_state"]
        a2.plot(o + [full], [accs[v] for v in o] + [rows[0]["acc"]], "o-")
        a2.set(xlabel="order r (state per channel; the last point is the source)", ylabel="test accuracy",
               xscale="log", title="test accuracy")
        a2.set_xticks(o + [full], [str(v) for v in o + [full]])
        a2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        fig.tight_layout()
        fig.savefig(args.figure, dpi=110)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()

"""``ssmkit inspect``: figures of what a trained run's layers learned — kernels, poles,
frequency responses, Δ, memory lengths, Hankel singular values — with an index.html."""
from __future__ import annotations

from .._checks import check_positive_int
from ..inspection import inspect_run, write_report


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="figures of a trained run's kernels, poles, responses, Δ", description=__doc__)
    p.add_argument("run", help="run folder or ckpt-* folder")
    p.add_argument("--out", required=True, help="folder for the PNGs, inspection.json and index.html")
    p.add_argument("--length", type=int, default=None, help="kernel window in lags (default max(16384, 8 x task length))")
    p.add_argument("--channels", type=int, default=4, help="channels drawn per kernel / response figure (default 4)")
    p.add_argument("--batch-size", type=int, default=16, help="test sequences for the Mamba / Mamba-2 Δ (default 16)")


def run(args) -> int:
    if args.length is not None:
        check_positive_int("--length", args.length)
    check_positive_int("--channels", args.channels)
    check_positive_int("--batch-size", args.batch_size)
    inspections, config, task = inspect_run(args.run, L=args.length, batch_size=args.batch_size)
    index = write_report(inspections, args.out, title=f"{config.layer} on {task.name}: {args.run}",
                         n_channels=args.channels, task_len=task.max_len)
    for ins in inspections:
        s = ins.summary()
        parts = [f"{ins.name} ({ins.kind})"]
        if "memory" in s:
            med = s["memory_median"]
            parts.append(f"median memory {med:.0f} lags" if med is not None else "median memory beyond the window")
        if "dt" in s:
            parts.append(f"Δ median {s['dt']['median']:.3g}")
        if "spectral_radius" in s:
            parts.append(f"spectral radius {s['spectral_radius']:.6f}")
        if "order_for_1pct" in s:
            r = sorted(s["order_for_1pct"])
            parts.append(f"order for a 1% bound: median {r[len(r) // 2]}, max {r[-1]}")
        print(", ".join(parts))
    print(f"report: {index}")
    return 0

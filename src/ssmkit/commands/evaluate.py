"""``ssmkit evaluate``: metrics of a trained checkpoint on a split of its task (or another task).
By default the best-by-validation checkpoint of a run, on its test split."""
from __future__ import annotations

import json

from ..tasks import build_task
from ..train import evaluate, load_model
from .train import _parse_options


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint", description=__doc__)
    p.add_argument("checkpoint", help="run folder or ckpt-* folder")
    p.add_argument("--task", help="task name (default: the one it was trained on)")
    p.add_argument("--task-opt", action="append", metavar="KEY=VALUE", help="task option (e.g. test_length=4096)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--which", default="best", choices=("best", "latest"),
                   help="a run's best-by-validation checkpoint (default) or its latest")
    p.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    model, config, task = load_model(args.checkpoint, which=args.which)
    opts = _parse_options(args.task_opt, "--task-opt")
    if args.task or opts:
        name = args.task or config.task
        base = dict(config.task_options) if name == config.task else {}
        task = build_task(name, seed=config.seed, **{**base, **opts})
    res = evaluate(model, task, args.split, args.batch_size, seed=config.seed)
    print(json.dumps({"task": task.name, "split": args.split, **res}, indent=2))
    return 0

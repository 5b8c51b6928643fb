"""``ssmkit train``: train any layer family on any task, with checkpoints and resume.

Options come from a shipped recipe (``--recipe``), then a config file (``--config``), then the
flags, each overriding the one before."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..layers import available_layers
from ..train import TrainConfig, fit, load_config_file
from ..train.progress import PROGRESS_MODES
from ..train.recipes import available_recipes, load_recipe

# flag name -> config field type; None defaults mean "take the recipe's / file's / TrainConfig's value"
_FLAGS = {
    "task": str, "layer": str, "d_model": int, "n_layers": int, "d_state": int, "dropout": float, "lr": float,
    "weight_decay": float, "ssm_lr": float, "ssm_weight_decay": float, "epochs": int, "max_steps": int,
    "batch_size": int, "warmup_steps": int, "warmup_fraction": float, "grad_clip": float, "seed": int,
    "eval_every": int, "log_every": int, "checkpoint_every": int, "early_stopping": int, "time_budget": float,
    "pooling": str, "precision": str, "init_from": str,
}
_HELP = {
    "layer": "layer family", "task": "task name (`ssmkit tasks` lists them)",
    "precision": "fp32 (default) or bf16 mixed precision (autocast on the model's device)",
    "init_from": "start from the model weights of another run (same model shape), with a fresh optimizer and "
                 "schedule: e.g. train short, then long",
    "ssm_lr": "learning rate of the SSM parameters (A, dt, B, ...); default: each layer's own",
    "ssm_weight_decay": "weight decay of the SSM parameters; default: each layer's own (0)",
    "early_stopping": "stop after this many evaluations without a better validation metric (0: never)",
    "time_budget": "seconds of training: the lr schedule is laid over it and the run stops when it is spent",
    "warmup_fraction": "warm-up never takes more than this fraction of the run (default 0.1)",
    "eval_every": "steps between evaluations on the validation split (default: once per epoch)",
}


def _parse_options(items, what):
    """``key=value`` pairs; values parsed as YAML scalars (ints, floats, bools, strings)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} must be key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ValueError(f"{what} {item!r}: the value is not a valid YAML scalar") from None
    return out


def _threads(v: str):
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"expected 'auto' or an int >= 1, got {v!r}")
    return n


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a task", description=__doc__)
    p.add_argument("--recipe", metavar="NAME", help="start from a shipped recipe (`--recipe list` or `ssmkit recipes`)")
    p.add_argument("--config", help="YAML or JSON file of options (overrides the recipe; flags override both)")
    for name, typ in _FLAGS.items():
        extra = dict(help=_HELP.get(name))
        if name == "layer":
            extra["choices"] = available_layers()
        elif name == "precision":
            extra["choices"] = ("fp32", "bf16")
        elif name == "init_from":
            extra["metavar"] = "RUN"
        elif name == "early_stopping":
            extra["metavar"] = "PATIENCE"
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None, **extra)
    p.add_argument("--task-opt", action="append", metavar="KEY=VALUE", help="task option, e.g. size=14 (repeatable)")
    p.add_argument("--layer-opt", action="append", metavar="KEY=VALUE", help="layer option, e.g. init=lin (repeatable)")
    p.add_argument("--backbone-opt", action="append", metavar="KEY=VALUE",
                   help="backbone option (e.g. its normalisation), passed to Backbone (repeatable)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (falls back to eager with a one-line warning if compiling fails)")
    p.add_argument("--out", help="run folder (config, metrics, plots, checkpoints): new or empty, or a run to --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--pause-at", type=int, default=None, metavar="STEP",
                   help="stop after STEP steps with a checkpoint; --resume continues exactly")
    p.add_argument("--threads", type=_threads, default=None, metavar="N|auto",
                   help="intra-op threads (torch and the native kernels). Default: OMP_NUM_THREADS if set, "
                        "else auto = every CPU this process may use (docs/performance.md)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="auto (default): a bar on a terminal, plain lines when the output is redirected")
    p.add_argument("--no-progress", action="store_true", help="no bar: plain progress lines (same as --progress lines)")
    p.add_argument("--report-every", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between plain progress lines (default 5)")


def config_from_args(args) -> TrainConfig:
    data = {}
    if args.recipe:
        data = load_recipe(args.recipe)[1]
        if args.layer is not None and args.layer != data.get("layer"):
            # a recipe's layer options belong to its layer (e.g. Mamba's init): another --layer
            # starts from that layer's defaults (--layer-opt and --config still apply)
            data.pop("layer_options", None)
    if args.config:
        file_data = load_config_file(args.config)
        for k in ("task_options", "layer_options", "backbone_options"):  # options merge, key by key
            if isinstance(file_data.get(k), dict) and isinstance(data.get(k), dict):
                file_data[k] = {**data[k], **file_data[k]}
        data.update(file_data)
    for name in _FLAGS:
        v = getattr(args, name)
        if v is not None:
            data[name] = v
    if args.compile:
        data["compile"] = True
    for key, flag, field in (("task_opt", "--task-opt", "task_options"), ("layer_opt", "--layer-opt", "layer_options"),
                             ("backbone_opt", "--backbone-opt", "backbone_options")):
        opts = _parse_options(getattr(args, key), flag)
        if opts:
            base = data.get(field, {})
            if not isinstance(base, dict):
                raise TypeError(f"{field} must be a mapping of option names to values, got {base!r}")
            data[field] = {**base, **opts}
    return TrainConfig.from_dict(data)


def _list_recipes() -> str:
    return "\n".join(f"{name:18s} {desc}" for name, desc in available_recipes().items())


def run(args) -> int:
    if args.recipe == "list":
        print(_list_recipes())
        return 0
    if not args.out:
        raise ValueError("--out is required: the run folder (new or empty, or a run to --resume)")
    config = config_from_args(args)
    threads = args.threads if args.threads is not None else (None if "OMP_NUM_THREADS" in os.environ else "auto")
    progress = "lines" if args.no_progress else args.progress
    result = fit(config, args.out, resume=args.resume, progress=progress, pause_at=args.pause_at, threads=threads,
                 report_every=args.report_every)
    print(json.dumps(result, indent=2))
    print(f"run folder: {Path(args.out)}")
    return 0

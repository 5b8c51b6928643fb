"""Tasks by name: each builder registers itself with :func:`register_task`, carrying its
description, kind and split sizes; ``build_task(name, seed=0, **options)`` builds one.

A builder is a function ``builder(seed=0, **options) -> Task`` whose keyword arguments, with
their defaults, are the task's options::

    @register_task("copying", kind="tokens", description="...",
                   sizes=lambda o: dict(train=o["n_train"], val=o["n_val"], test=o["n_test"], length=...))
    def copying(seed=0, n_train=2000, n_val=200, n_test=200, ...): ...

``sizes`` maps the resolved options to ``{"train", "val", "test", "length"}`` without
building the task; a task whose sizes depend on its data (files) leaves it out, and
:func:`task_sizes` builds the task and measures it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .._checks import check_int
from .base import SPLITS, TASK_KINDS, Task

__all__ = ["TaskSpec", "register_task", "get_task_spec", "build_task", "available_tasks", "task_options",
           "task_sizes", "measure_sizes", "unknown_sizes"]


@dataclass(frozen=True)
class TaskSpec:
    """What the registry knows about a task without building it."""
    name: str
    builder: Callable[..., Task]
    description: str
    kinds: Tuple[str, ...]
    defaults: Dict[str, Any]  # options (all but seed) and their defaults
    sizes: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None

    def resolve(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """Defaults updated with ``options``; unknown option names raise ValueError."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"task {self.name!r} has no option(s) {', '.join(unknown)}; "
                             f"options: {', '.join(sorted(self.defaults))}")
        return {**self.defaults, **options}


_TASKS: Dict[str, TaskSpec] = {}


def register_task(name: str, *, description: str, kind: Union[str, Tuple[str, ...]],
                  sizes: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None):
    """Function decorator: make ``builder(seed=0, **options) -> Task`` buildable by ``name``.

    ``kind`` is one of ``TASK_KINDS`` (a tuple when it depends on the data, e.g. a dataset
    that may be classification or regression); ``sizes(options)`` returns the split sizes and
    the sequence length as a string (see the module docstring).
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    for k in kinds:
        if k not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}, got {k!r}")

    def deco(builder):
        if name in _TASKS and _TASKS[name].builder is not builder:
            raise ValueError(f"task name {name!r} is already registered to {_TASKS[name].builder.__name__}")
        params = inspect.signature(builder).parameters
        if "seed" not in params:
            raise TypeError(f"task builder {builder.__name__} must take a seed argument")
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"task builder {builder.__name__}: every option needs a default, {', '.join(missing)} has none")
        defaults = {k: p.default for k, p in params.items() if k != "seed"}
        _TASKS[name] = TaskSpec(name, builder, description, kinds, defaults, sizes)
        builder.task_name = name
        return builder

    return deco


def get_task_spec(name: str) -> TaskSpec:
    """The registered :class:`TaskSpec` of ``name``; unknown names raise ValueError listing the known ones."""
    if not isinstance(name, str) or name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def available_tasks() -> Dict[str, str]:
    """Task names and one-line descriptions, in registration order."""
    return {name: spec.description for name, spec in _TASKS.items()}


def task_options(name: str) -> Dict[str, Any]:
    """The options a task accepts (all but ``seed``), with their defaults."""
    return dict(get_task_spec(name).defaults)


def unknown_sizes(note: str) -> Dict[str, Any]:
    """Sizes that cannot be known without data: ``None`` and a note in place of the length."""
    return {"train": None, "val": None, "test": None, "length": note}


def measure_sizes(task: Task) -> Dict[str, Any]:
    """Split sizes and the range of sequence lengths of a built task."""
    lengths = sorted({len(ds[i][0]) for ds in (task.train, task.val, task.test) for i in range(len(ds))})
    span = str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    return {**{s: len(getattr(task, s)) for s in SPLITS}, "length": span}


def task_sizes(name: str, **options) -> Dict[str, Any]:
    """``{"train": n, "val": n, "test": n, "length": "..."}`` for a task and options: from the
    options where the task declares how, otherwise by building the task (``None`` and a note
    when its data is not available)."""
    spec = get_task_spec(name)
    resolved = spec.resolve(options)
    if spec.sizes is not None:
        return spec.sizes(resolved)
    try:
        return measure_sizes(build_task(name, **options))
    except ImportError as exc:
        return unknown_sizes(f"unavailable ({str(exc).split(':')[0]})")


def build_task(name: str, seed: int = 0, **options) -> Task:
    """Build task ``name`` with ``seed``; unknown names or options raise ValueError naming them.

    The returned task's ``options`` record every option that shaped the data (``seed``
    included), with the values the builder resolved (e.g. ``normalize="series"`` for ``True``).
    """
    spec = get_task_spec(name)
    seed = check_int("seed", seed, minimum=0)
    resolved = spec.resolve(options)
    task = spec.builder(seed=seed, **options)
    task.options = {"seed": seed, **resolved, **task.options}
    return task

"""Datasets as tasks: synthetic, ListOps, sequential images, time series (see tasks/base.py for the
contract and tasks/registry.py for registration). Importing this package registers every task."""
from .base import IGNORE_INDEX, SPLITS, TASK_KINDS, Task, TensorDataset, pad_collate
from .registry import (TaskSpec, available_tasks, build_task, get_task_spec, register_task, task_options,
                       task_sizes)
from . import synthetic, listops, images, timeseries  # noqa: E402,F401  (each module registers its tasks)
from .listops import evaluate_listops
from .baselines import one_nn_accuracy

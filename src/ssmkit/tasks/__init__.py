"""Datasets as tasks: synthetic, ListOps, sequential images, time series (see tasks/base.py)."""
from .base import IGNORE_INDEX, TASK_KINDS, Task, pad_collate

"""Execution knobs of a run: the thread count, the process group of data-parallel training and
optional ``torch.compile``. Each is a context manager or a wrapper that cleans up on every path."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional, Tuple, Union

import torch

from .._checks import check_positive_int
from ..runtime import resolve_threads

__all__ = ["thread_count", "process_group", "CompiledForward"]


@contextlib.contextmanager
def thread_count(threads: Union[None, int, str]) -> Iterator[Tuple[int, str]]:
    """Set torch's intra-op threads (which the native kernels follow) and ``OMP_NUM_THREADS`` for
    the block; ``None`` keeps the current setting, ``"auto"`` uses every CPU the process may use (:func:`ssmkit.runtime.resolve_threads`).
    Yields ``(threads, why)``; the previous setting is restored afterwards."""
    if threads is None:
        yield torch.get_num_threads(), "unchanged (torch's setting)"
        return
    if threads == "auto":
        n = resolve_threads("auto")
        why = (f"auto: the {n} CPU(s) this process may use (idle OpenMP threads wait passively, "
               "so a shared machine slows a run about as its share of the cores; docs/performance.md)")
    else:
        n = check_positive_int("threads", threads)
        why = "asked"
    old, old_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield n, why
    finally:
        torch.set_num_threads(old)
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env


def _init_distributed():
    """``(rank, world_size, initialised_here)``; joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1, False
    own = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")  # CPU collectives
        own = True
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), own


@contextlib.contextmanager
def process_group() -> Iterator[Tuple[int, int]]:
    """``(rank, world_size)``; a process group joined here is destroyed on leaving, errors included."""
    rank, world, own = _init_distributed()
    try:
        yield rank, world
    finally:
        if own and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class CompiledForward:
    """``torch.compile`` of a module, falling back to the module itself, with one warning line,
    when compiling fails (at ``compile`` or during the first call, where compilation happens)."""

    def __init__(self, module: torch.nn.Module, enabled: bool, warn=None):
        self.module = module
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.compiled = None
        self.checked = not enabled
        self.failure: Optional[str] = None
        if enabled:
            try:
                self.compiled = torch.compile(module)
            except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.failure = f"{type(exc).__name__}: {first}"
        self.warn(f"ssmkit: warning: torch.compile failed ({self.failure}); training without it")
        self.compiled, self.checked = None, True

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def run(self, fn):
        """``fn(module)``; the first call with the compiled module falls back to eager on failure
        (with the random state rewound, so the eager retry sees the same dropout masks)."""
        if self.compiled is None:
            return fn(self.module)
        if self.checked:
            return fn(self.compiled)
        rng = torch.get_rng_state()
        try:
            out = fn(self.compiled)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            torch.set_rng_state(rng)
            for p in self.module.parameters():
                p.grad = None
            return fn(self.module)
        self.checked = True
        return out

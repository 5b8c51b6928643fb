"""Timing shared by the benchmarks: functions alternated round by round in one process."""
from __future__ import annotations

import time
from typing import Callable, Dict, List


def alternate(fns: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, List[float]]:
    """Seconds of each call over ``repeats`` rounds, every function once per round in turn (on a
    shared machine, a disturbance then hits all of them alike): ``{name: [seconds per round]}``."""
    ts: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return ts

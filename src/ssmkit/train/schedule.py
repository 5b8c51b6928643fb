"""Learning-rate schedule: linear warm-up, then cosine decay to zero, laid over the run.

The run's progress is ``p = max(step / total_steps, elapsed / time_budget)``: the step count
when no time budget is set (deterministic, so a resumed run is bit-identical), and whichever
ends the run first when one is. So a run stopped by its time budget ends with a decayed
learning rate, instead of being cut off at the top of its schedule.

Warm-up lasts ``warmup_steps`` steps but never more than ``warmup_fraction`` of the run's
expected steps (``total_steps``, or with a time budget the steps that fit in it at the step
time measured over the first :data:`MEASURE_STEPS` steps), so a long-sequence run is never
stopped inside its warm-up.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

__all__ = ["LRSchedule", "MEASURE_STEPS"]

MEASURE_STEPS = 5


class LRSchedule:
    """Multiplier of each parameter group's base learning rate at a step."""

    def __init__(self, warmup_steps: int, total_steps: int, warmup_fraction: float = 0.1, time_budget: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(1, int(total_steps))
        self.warmup_fraction = float(warmup_fraction)
        self.time_budget = float(time_budget)
        self.step_time: Optional[float] = None  # seconds per step, measured (time budget only)

    # --- what was chosen --------------------------------------------------------------------
    @property
    def expected_steps(self) -> int:
        """Steps the run is expected to take: total steps, or fewer if the budget allows fewer."""
        if self.time_budget > 0 and self.step_time:
            return max(1, min(self.total_steps, int(self.time_budget / self.step_time)))
        return self.total_steps

    @property
    def warmup(self) -> int:
        """Warm-up steps actually used: ``warmup_steps`` capped at ``warmup_fraction`` of the run."""
        return min(self.warmup_steps, int(self.warmup_fraction * self.expected_steps))

    def describe(self) -> str:
        cap = int(self.warmup_fraction * self.expected_steps)
        why = (f"{self.warmup_steps} asked, capped at {self.warmup_fraction:.0%} of the run"
               if self.warmup_steps > cap else f"{self.warmup_steps} asked, within {self.warmup_fraction:.0%} of the run")
        if self.time_budget > 0:
            over = (f"the time budget of {self.time_budget:g} s" if self.step_time is None else
                    f"the time budget of {self.time_budget:g} s (~{self.expected_steps} steps at "
                    f"{self.step_time:.3g} s/step, measured over the first {MEASURE_STEPS} steps)")
            over += f" or {self.total_steps} steps, whichever ends first"
        else:
            over = f"{self.total_steps} steps"
        return f"lr schedule: linear warm-up for {self.warmup} steps ({why}), then cosine decay to 0 over {over}"

    # --- the multiplier ---------------------------------------------------------------------
    def progress(self, step: int, elapsed: float = 0.0) -> float:
        p = step / self.total_steps
        if self.time_budget > 0:
            p = max(p, elapsed / self.time_budget)
        return min(1.0, p)

    def factor(self, step: int, elapsed: float = 0.0) -> float:
        """Multiplier for the update made at ``step`` (0-based), ``elapsed`` seconds into the run."""
        w = self.warmup
        if w and step < w:
            return (step + 1) / w
        if self.time_budget > 0:
            p = self.progress(step, elapsed)
            pw = w / self.expected_steps
            q = (p - pw) / max(1e-12, 1.0 - pw)
        else:
            q = (step - w) / max(1, self.total_steps - w)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, q))))

    def state_dict(self) -> Dict[str, Any]:
        return {"step_time": self.step_time}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step_time = state.get("step_time")

"""Learning-rate schedule: linear warm-up, then cosine decay to zero, laid over the run.

The run's progress is ``p = max(step / total_steps, elapsed / time_budget)``: the step count
when no time budget is set (deterministic, so a resumed run is bit-identical), and whichever
ends the run first when one is. So a run stopped by its time budget ends with a decayed
learning rate, instead of being cut off at the top of its schedule.

Warm-up never takes more than ``warmup_fraction`` of the run. Without a time budget it lasts
``min(warmup_steps, warmup_fraction * total_steps)`` steps. With one, it ends at whichever comes
first, ``warmup_steps`` steps or ``warmup_fraction`` of the progress (so of the budget's time);
the ramp is ``max((step + 1) / warmup_steps, p / warmup_fraction)``, continuous in time, and the
cosine decay then runs from the progress at which warm-up ended to the end of the run. The step
time measured over the first :data:`MEASURE_STEPS` steps only serves the log (how many steps
are expected to fit in the budget), so a long-sequence run is never stopped inside its warm-up.
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
        self.step_time: Optional[float] = None  # seconds per step, measured (for the log)
        self.warmup_end: Optional[float] = None  # progress at which warm-up ended (time budget only)

    # --- what was chosen --------------------------------------------------------------------
    @property
    def expected_steps(self) -> int:
        """Steps the run is expected to take: total steps, or fewer if the budget allows fewer."""
        if self.time_budget > 0 and self.step_time:
            return max(1, min(self.total_steps, int(self.time_budget / self.step_time)))
        return self.total_steps

    @property
    def warmup(self) -> int:
        """Warm-up steps: ``warmup_steps`` capped at ``warmup_fraction`` of the expected steps
        (with a time budget, an estimate until the step time is measured)."""
        return min(self.warmup_steps, int(self.warmup_fraction * self.expected_steps))

    def describe(self) -> str:
        cap = int(self.warmup_fraction * self.expected_steps)
        why = (f"{self.warmup_steps} asked, capped at {self.warmup_fraction:.0%} of the run"
               if self.warmup_steps > cap else f"{self.warmup_steps} asked, within {self.warmup_fraction:.0%} of the run")
        if self.time_budget > 0:
            est = ("" if self.step_time is None else
                   f"; ~{self.expected_steps} steps fit at {self.step_time:.3g} s/step (measured over the first "
                   f"{MEASURE_STEPS} steps), so warm-up ~{self.warmup} steps")
            return (f"lr schedule: linear warm-up until {self.warmup_steps} steps or {self.warmup_fraction:.0%} of the "
                    f"time budget of {self.time_budget:g} s, whichever comes first{est}; then cosine decay to 0 by the "
                    f"end of the budget or of {self.total_steps} steps, whichever comes first")
        return (f"lr schedule: linear warm-up for {self.warmup} steps ({why}), then cosine decay to 0 over "
                f"{self.total_steps} steps")

    # --- the multiplier ---------------------------------------------------------------------
    def progress(self, step: int, elapsed: float = 0.0) -> float:
        p = step / self.total_steps
        if self.time_budget > 0:
            p = max(p, elapsed / self.time_budget)
        return min(1.0, p)

    def factor(self, step: int, elapsed: float = 0.0) -> float:
        """Multiplier for the update made at ``step`` (0-based), ``elapsed`` seconds into the run.
        With a time budget, call it once per step, in order: it records where warm-up ended."""
        if self.time_budget <= 0:
            w = self.warmup
            if w and step < w:
                return (step + 1) / w
            q = (step - w) / max(1, self.total_steps - w)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, q))))
        p = self.progress(step, elapsed)
        if self.warmup_end is None:
            ramp = max((step + 1) / self.warmup_steps if self.warmup_steps else 1.0,
                       p / self.warmup_fraction if self.warmup_fraction else 1.0)
            if ramp < 1.0:
                return ramp
            self.warmup_end = p
        q = (p - self.warmup_end) / max(1e-12, 1.0 - self.warmup_end)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, q))))

    def state_dict(self) -> Dict[str, Any]:
        return {"step_time": self.step_time, "warmup_end": self.warmup_end}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step_time = state.get("step_time")
        self.warmup_end = state.get("warmup_end")

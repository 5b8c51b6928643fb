"""What a run prints: a start summary, then a progress bar on a terminal or plain lines every
few seconds when the output is redirected to a file (no carriage returns in logs)."""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional, TextIO

__all__ = ["Reporter", "PROGRESS_MODES"]

PROGRESS_MODES = ("auto", "bar", "lines", "none")


class Reporter:
    """``mode``: ``"bar"`` (tqdm), ``"lines"`` (one line every ``every`` seconds), ``"none"``,
    or ``"auto"`` (a bar when ``stream`` is a terminal, lines otherwise). A context manager:
    the bar is closed on every path."""

    def __init__(self, mode: str = "auto", total: int = 0, initial: int = 0, desc: str = "", every: float = 5.0,
                 stream: Optional[TextIO] = None):
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode, self.total, self.every, self.desc = mode, total, every, desc
        self._bar = None
        self._initial = initial
        self._last_line = -float("inf")
        self._t0 = time.perf_counter()

    def __enter__(self) -> "Reporter":
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self._initial, desc=self.desc, unit="step", file=self.stream,
                             dynamic_ncols=True)
        return self

    def info(self, msg: str) -> None:
        """A line of its own (above the bar, if any)."""
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def update(self, step: int, row: Optional[Dict[str, Any]] = None, force: bool = False) -> None:
        """Step ``step`` is done; ``row``: the latest training numbers (loss, acc, lr, ...)."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if row:
                self._bar.set_postfix({k: _fmt(v) for k, v in row.items() if k in ("loss", "acc", "mse", "lr", "seq_per_s")},
                                      refresh=False)
        elif self.mode == "lines" and row is not None:
            now = time.perf_counter()
            if force or now - self._last_line >= self.every:
                self._last_line = now
                parts = [f"step {step}/{self.total}"] + [f"{k} {_fmt(v)}" for k, v in row.items()
                                                           if k not in ("split", "step")]
                print(f"[{now - self._t0:7.1f} s] " + "  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

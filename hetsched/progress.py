"""A one-line progress bar on stderr for long CLI work (profiling, calibration, benchmarks).

Only the CLI creates one; library functions take a ``progress(done, total)`` callback.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as ``bar(done, total)``; redraws at most every 0.1 s, ends the line when done."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self._started = time.monotonic()
        self._last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = total > 0 and done >= total
        if not finished and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        fraction = done / total if total else 1.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = now - self._started
        end = "\n" if finished else ""
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {elapsed:5.1f}s{end}")
        self.stream.flush()

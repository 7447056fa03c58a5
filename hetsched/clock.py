"""Time is passed in: the real monotonic clock in production, a fake one in tests and simulations.

Only :class:`MonotonicClock` reads ``time.perf_counter()``; everything else asks
the clock it was given, so the same scheduler code runs on both (trio's MockClock idea).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since an arbitrary origin, never decreasing."""

    def now(self) -> float: ...


class MonotonicClock:
    """The real clock."""

    # The C function itself, no Python frame: the scheduler reads the clock several times per task.
    now = staticmethod(time.perf_counter)


class FakeClock:
    """A clock that moves only when told: deterministic tests and simulated platforms."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self._now += seconds

    def set(self, when_s: float) -> None:
        """Jump to ``when_s`` (not before now)."""
        self.advance(when_s - self._now)

"""Timing one call many times, for the benches that compare per-request costs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed_calls(call: Callable[[], Any], requests: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``requests`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples

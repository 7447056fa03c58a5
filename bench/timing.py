"""Timing calls, and the CPU servers spend on them, for the benches that compare per-request costs."""

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


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its children (Triton's backend stubs)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total

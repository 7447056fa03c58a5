"""Timing calls, and the CPU servers spend on them, for the benches that compare per-request costs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
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


def thread_cpu_s(pid: int) -> dict[tuple[str, str, int], float]:
    """On-CPU seconds of every thread of a process and its children, by (OS process name, OS thread
    name, thread id), from ``/proc/<pid>/task/<tid>/schedstat`` (Linux): nanoseconds, where
    ``stat``'s clock ticks would round away the few milliseconds each of a gRPC server's hundreds
    of threads spends.  A process's unnamed threads carry its own name (``python``)."""
    import psutil

    root = psutil.Process(pid)
    seconds = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            process_name = Path(f"/proc/{process.pid}/comm").read_text().strip()
        except OSError:
            continue  # it ended meanwhile
        for task in Path(f"/proc/{process.pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                on_cpu_ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
            seconds[(process_name, name, int(task.name))] = on_cpu_ns / 1e9
    return seconds


def cpu_by_role(before: dict[tuple[str, str, int], float], after: dict[tuple[str, str, int], float],
                role: Callable[[str, str], str]) -> dict[str, float]:
    """CPU seconds spent between two :func:`thread_cpu_s` snapshots, summed by ``role(process name,
    thread name)`` (threads that ended meanwhile are missing: compare with :func:`tree_cpu_s`)."""
    spent: dict[str, float] = {}
    for (process, thread, tid), seconds in after.items():
        key = role(process, thread)
        spent[key] = spent.get(key, 0.0) + seconds - before.get((process, thread, tid), 0.0)
    return spent

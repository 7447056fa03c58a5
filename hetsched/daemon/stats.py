"""What the daemon counts: per-model request statistics (Triton's statistics extension) and per-worker
busy time, one source for both ``/v2/models/stats`` and the Prometheus metrics.

Request counts and durations are taken where requests are answered; queue and
compute times come from the scheduler's task events (a :class:`TaskStats`
instrument), per executed batch: an execution is one job through the plan, its
queue time runs from submission to its first part starting, its compute time is
the sum of its parts' run times.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from hetsched.runtime import job_model_name
from hetsched.task import Task, WorkerSpec


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Counters of one served model version; change them under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows answered
    execution_count: int = 0  # batches run
    rejected: int = 0  # refused because the queue was full
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def answered(self, seconds: float, rows: int, ok: bool) -> None:
        with self.lock:
            (self.success if ok else self.fail).add(seconds)
            if ok:
                self.inference_count += rows
            self.last_inference_ms = int(time.time() * 1000)

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        """Triton's statistics-extension form of these counters."""
        with self.lock:
            zero = Duration().as_dict()
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    "compute_input": zero,
                    "compute_infer": self.compute_infer.as_dict(),
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": zero,
                        "compute_infer": d.as_dict(),
                        "compute_output": zero,
                    }
                    for size, d in sorted(self.batches.items())
                ],
            }


class TaskStats:
    """A scheduler instrument: per-model queue and compute times, per-worker busy time.

    Called under the scheduler lock for every task event, so it only adds numbers.
    """

    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}  # runtime model name -> its served version's stats
        self.busy_s: dict[str, float] = defaultdict(float)  # worker name -> seconds running tasks
        self.workers: dict[str, WorkerSpec] = {}
        self.started = time.monotonic()

    def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
        stats = self.models.get(job_model_name(task.job))
        if event == "start" and task.part == 0 and stats is not None:  # part 0 starts every job
            with stats.lock:
                stats.execution_count += 1
                stats.compute_infer.count += 1
                stats.batches[task.batch].count += 1
                if math.isfinite(task.submit_s):
                    stats.queue.add(max(0.0, when_s - task.submit_s))
        if event not in ("end", "fail") or worker is None or not math.isfinite(task.start_s):
            return
        ran_s = max(0.0, when_s - task.start_s)
        self.workers[worker.name] = worker
        self.busy_s[worker.name] += ran_s
        if stats is not None:
            with stats.lock:  # an execution's compute time is the sum of its parts'
                stats.compute_infer.ns += int(ran_s * 1e9)
                stats.batches[task.batch].ns += int(ran_s * 1e9)

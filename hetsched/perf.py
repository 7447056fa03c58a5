"""What the scheduler knows about time: history-based predictions, transfer estimates, and learning.

:class:`HistoryOracle` is the production :class:`~hetsched.scheduler.PerfOracle`:
compute time from the history model at the task's exact footprint, else from a
batch-size regression over the batches this stage ran at on that kind (inside
their range only), else NaN ("not calibrated: run it there"); transfers from the
bus model (0 on the same memory node).  Every executed task is recorded, so the
models keep learning while serving.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

from hetsched.task import Task, WorkerSpec
from perfmodels.history import HistoryKey, HistoryModel
from perfmodels.regression import BatchFit, fit_batch_model
from perfmodels.transfer import BusModel


class HistoryOracle:
    """Predictions from a :class:`HistoryModel` and a :class:`BusModel`; records every run."""

    REFIT_CHANGE = 0.02  # refit a regression when a batch's prediction moved by more than this fraction

    def __init__(self, history: HistoryModel, bus: BusModel | None = None) -> None:
        self.history = history
        self.bus = bus or BusModel()
        self._fits: dict[tuple[str, str], tuple[dict[int, float], BatchFit | None]] = {}
        self._lock = threading.Lock()

    def predict(self, task: Task, worker: WorkerSpec) -> float:
        # tuple.__new__ makes the named tuple without the Python frame of HistoryKey(...)
        exact = self.history.predict(tuple.__new__(HistoryKey, (task.stage, worker.arch, task.footprint)))
        if math.isfinite(exact):
            return exact
        return self._regression(task.stage, worker.arch, task.batch)

    def _regression(self, stage: str, arch: str, batch: int) -> float:
        points = [(b, seconds) for b, seconds, _ in self.history.batch_points(stage, arch)]
        if len({b for b, _ in points}) < 2:
            return math.nan
        by_batch = dict(points)
        with self._lock:
            cached = self._fits.get((stage, arch))
            if cached is None or _moved(cached[0], by_batch, self.REFIT_CHANGE):
                cached = (by_batch, fit_batch_model(points))
                self._fits[(stage, arch)] = cached
        fit = cached[1]
        return fit.predict(batch) if fit is not None else math.nan

    def transfer(self, task: Task, worker: WorkerSpec) -> float:
        if self.bus.empty:  # one memory node (or no link measured yet): nothing is ever charged
            return 0.0
        total = 0.0
        for name, nbytes in task.input_bytes.items():
            nodes = task.input_nodes.get(name)
            if not nodes or worker.memory_node in nodes:
                continue
            costs = [self.bus.predict(src, worker.memory_node, nbytes) for src in nodes]
            finite = [c for c in costs if math.isfinite(c)]
            total += min(finite) if finite else 0.0  # an uncalibrated link costs nothing rather than NaN
        return total

    def record(self, task: Task, worker: WorkerSpec, duration_s: float) -> None:
        if duration_s > 0 and math.isfinite(duration_s):
            key = tuple.__new__(HistoryKey, (task.stage, worker.arch, task.footprint))
            self.history.record(key, duration_s)


def _moved(fitted: dict[int, float], now: dict[int, float], tolerance: float) -> bool:
    """Whether the batches differ, or a prediction moved past ``tolerance``: recorded samples keep
    moving the window medians a little, and refitting on each one (milliseconds) would cost more
    than the prediction is worth."""
    if fitted.keys() != now.keys():
        return True
    return any(abs(now[b] - fitted[b]) > tolerance * fitted[b] for b in now)


class TableOracle:
    """Fixed compute times per (stage, arch): for simulations and policy tests; records nothing."""

    def __init__(self, seconds: Mapping[tuple[str, str], float], transfer_s: float = 0.0) -> None:
        self.seconds = dict(seconds)
        self.transfer_s = transfer_s

    def predict(self, task: Task, worker: WorkerSpec) -> float:
        return self.seconds.get((task.stage, worker.arch), math.nan)

    def transfer(self, task: Task, worker: WorkerSpec) -> float:
        moved = [n for n, nodes in task.input_nodes.items() if nodes and worker.memory_node not in nodes]
        return self.transfer_s * len(moved)

    def record(self, task: Task, worker: WorkerSpec, duration_s: float) -> None:
        """A table does not learn."""

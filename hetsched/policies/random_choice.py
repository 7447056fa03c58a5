"""random: each ready task goes to a worker drawn at random (seeded), weighted by expected speed."""

from __future__ import annotations

import math
import random

from hetsched.policies.base import PerWorkerQueues
from hetsched.task import Task, WorkerSpec


class RandomChoice(PerWorkerQueues):
    name = "random"
    description = "each task to a random worker, weighted by predicted speed (uniform until calibrated)"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def push(self, task: Task) -> None:
        workers = self.context.eligible(task)
        predicted = [self.context.predict_s(task, w) for w in workers]
        if all(math.isfinite(p) and p > 0 for p in predicted):
            weights = [1.0 / p for p in predicted]
        else:
            weights = [1.0] * len(workers)
        chosen = self._rng.choices(workers, weights)[0]
        self._queue(chosen).append(task)

    def pop(self, worker: WorkerSpec) -> Task | None:
        queue = self._queues.get(worker.name)
        return queue.popleft() if queue else None


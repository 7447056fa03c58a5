"""eager: one central FIFO queue; an idle worker takes the oldest task it can run."""

from __future__ import annotations

from collections import deque

from hetsched.policies.base import Policy
from hetsched.task import Task, WorkerSpec


class Eager(Policy):
    name = "eager"
    description = "one central FIFO queue; idle workers take the oldest task they can run"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[Task] = deque()

    def push(self, task: Task) -> None:
        self._queue.append(task)

    def pop(self, worker: WorkerSpec) -> Task | None:
        for task in self._queue:
            if worker in self.context.eligible(task):
                self._queue.remove(task)
                return task
        return None

    def discard(self, task: Task) -> bool:
        if task in self._queue:
            self._queue.remove(task)
            return True
        return False

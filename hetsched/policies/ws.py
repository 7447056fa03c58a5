"""ws: work stealing. Tasks go to the shortest worker queue; an idle worker with nothing queued
steals the newest task of the longest queue (StarPU's ws, without locality hints)."""

from __future__ import annotations

from hetsched.policies.base import PerWorkerQueues
from hetsched.task import Task, WorkerSpec


class WorkStealing(PerWorkerQueues):
    name = "ws"
    description = "per-worker queues; tasks to the shortest, idle workers steal from the longest"

    def push(self, task: Task) -> None:
        workers = self.context.eligible(task)
        target = min(workers, key=lambda w: (len(self._queue(w)), w.name))
        self._queue(target).append(task)

    def pop(self, worker: WorkerSpec) -> Task | None:
        own = self._queue(worker)
        for task in list(own):
            if worker in self.context.eligible(task):
                own.remove(task)
                return task
        victims = sorted(self._queues.items(), key=lambda item: (-len(item[1]), item[0]))
        for name, queue in victims:
            if name == worker.name:
                continue
            for task in reversed(queue):  # steal the newest: the victim keeps its oldest work
                if worker in self.context.eligible(task):
                    queue.remove(task)
                    return task
        return None


"""The policy interface: a few hooks the scheduler calls (StarPU's push/pop/post-exec hooks).

Every hook runs under the scheduler's lock, so a policy needs no locking of its
own and must not block: it only decides.  Hooks:

- ``push(task)``: the scheduler calls it once per task, when the task becomes
  ready (all its inputs produced), or again after the task failed on a worker
  and is retried elsewhere.  A policy may pick the worker now (dmda) or keep
  the task in a shared queue (eager).
- ``pop(worker)``: called whenever ``worker`` is idle and every core it needs
  is free — after each push and after each task ends.  Return the task it
  should run now, or None.  Returning a task commits the worker to it.
- ``on_done(task, worker, duration_s)``: after a task ran, successfully or not
  (the worker's cores are free again), or was popped and dropped.
- ``discard(task)``: the task's request failed; forget the task if still held.
- ``add_worker(worker)`` / ``remove_worker(worker)``: the platform changed (a Dask
  worker joined or left); a leaving worker's queued tasks are handed back to be
  placed anew.

A policy learns about the platform through :class:`PolicyContext`: the workers,
the clock, predicted compute and transfer times, whether work waits beyond what
it was given (``backlog``), and ``prefetch`` to start moving a task's inputs to
the chosen worker as soon as it is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

from hetsched.clock import Clock
from hetsched.task import Task, WorkerSpec


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may know and do; built by the scheduler."""

    workers: Sequence[WorkerSpec]
    clock: Clock
    predict_s: Callable[[Task, WorkerSpec], float]  # compute seconds, NaN when not calibrated
    transfer_s: Callable[[Task, WorkerSpec], float]  # seconds to bring the inputs to the worker
    prefetch: Callable[[Task, WorkerSpec], None]  # start moving the inputs there now
    # whether more work waits than the workers hold (requests the runtime holds back until a
    # worker frees up): the load is past capacity, whatever the pushed tasks alone suggest
    backlog: Callable[[], bool] = lambda: False

    def eligible(self, task: Task) -> Sequence[WorkerSpec]:
        """Workers that may run ``task``: among ``task.allowed`` (when set), and it has not failed
        there.  Read-only: the common case, any worker, returns the scheduler's own list."""
        allowed, failed = task.allowed, task.failed_on
        if allowed is None and not failed:
            return self.workers
        return [w for w in self.workers
                if w.name not in failed and (allowed is None or w.name in allowed)]


class _Unattached:
    """A policy's context before the scheduler attached it: any use says so."""

    def __init__(self, policy: str) -> None:
        self._policy = policy

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"policy {self._policy!r} used before the scheduler attached it")


class Policy(ABC):
    """Base of every policy; subclasses register themselves by ``name``."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self) -> None:
        # A plain attribute, not a checking property: hooks read it several times per task.
        self.context: PolicyContext = cast(PolicyContext, _Unattached(self.name))

    def attach(self, ctx: PolicyContext) -> None:
        """Called once by the scheduler before any other hook."""
        self.context = ctx

    @abstractmethod
    def push(self, task: Task) -> None: ...

    @abstractmethod
    def pop(self, worker: WorkerSpec) -> Task | None: ...

    def on_done(self, task: Task, worker: WorkerSpec, duration_s: float) -> None:
        """Default: nothing to learn (the scheduler feeds the perf models itself)."""

    @abstractmethod
    def discard(self, task: Task) -> bool:
        """Forget a ready task whose request failed; True if it was held (then it is never popped)."""

    def add_worker(self, worker: WorkerSpec) -> None:
        """``worker`` is in the context's workers from now on; default: nothing to index."""

    def remove_worker(self, worker: WorkerSpec) -> list[Task]:
        """``worker`` left the context's workers; return the tasks held for it (default: none)."""
        return []


class PerWorkerQueues(Policy):
    """Base of policies that keep one FIFO queue per worker (random, ws)."""

    def __init__(self) -> None:
        super().__init__()
        self._queues: dict[str, deque[Task]] = {}

    def _queue(self, worker: WorkerSpec) -> deque[Task]:
        return self._queues.setdefault(worker.name, deque())

    def remove_worker(self, worker: WorkerSpec) -> list[Task]:
        return list(self._queues.pop(worker.name, ()))

    def discard(self, task: Task) -> bool:
        for queue in self._queues.values():
            if task in queue:
                queue.remove(task)
                return True
        return False


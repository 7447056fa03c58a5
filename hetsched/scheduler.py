"""The scheduler core: tasks become ready along the plan's DAG, a policy places them, an executor runs them.

Time and threads are passed in (``clock``, ``executor``): production gives the
monotonic clock and worker threads running ONNX Runtime; tests and what-if
simulations give a fake clock and workers that "finish" by advancing it.  The
same code runs on both.

All state changes happen under one lock, in plain methods; policy hooks are
called under it and never block.  Callbacks to the outside (a job finished)
run after the lock is released.  The executor reports back with
:meth:`Scheduler.task_done` from whatever thread ran the task.

State, field by field:

- ``_running``: worker name -> the task it runs now;
- ``_busy_cores``: cores held by running tasks (a wide worker holds all of its group's);
- ``job.remaining`` (on each job): its tasks not closed yet; the job finishes at 0.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hetsched.clock import Clock
from hetsched.policies.base import Policy, PolicyContext
from hetsched.task import Job, Task, TaskState, WorkerSpec

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a task failing because of its worker is retried elsewhere at most this often


class Executor(Protocol):
    """Runs tasks for the scheduler; reports each end with ``scheduler.task_done``."""

    def start(self, task: Task, worker: WorkerSpec) -> None:
        """Begin running ``task`` on ``worker`` without blocking."""

    def prefetch(self, task: Task, worker: WorkerSpec) -> None:
        """Start moving the task's inputs to the worker's memory node (no-op when already there)."""


class PerfOracle(Protocol):
    """Predictions for the policy, and the sink of every measured duration."""

    def predict(self, task: Task, worker: WorkerSpec) -> float: ...

    def transfer(self, task: Task, worker: WorkerSpec) -> float: ...

    def record(self, task: Task, worker: WorkerSpec, duration_s: float) -> None: ...


class Instrument(Protocol):
    """Observes task events (tracing, metrics); called under the scheduler lock, must be quick."""

    def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None: ...


class SchedulingError(Exception):
    """No worker can run a task (every eligible one failed it, or none holds its stage)."""


class WorkerFault(Exception):
    """Raised by an executor when a task failed because of its worker (not its input): retry elsewhere."""


@dataclass(frozen=True)
class SchedulerStats:
    """A frozen snapshot of the scheduler's counters."""

    submitted_jobs: int
    finished_jobs: int
    failed_jobs: int
    tasks_done: int
    tasks_retried: int
    running: tuple[str, ...]


class Scheduler:
    """Places every ready task with ``policy`` on ``workers`` and runs it with ``executor``."""

    def __init__(
        self,
        policy: Policy,
        workers: Sequence[WorkerSpec],
        *,
        clock: Clock,
        executor: Executor,
        perf: PerfOracle,
        instruments: Sequence[Instrument] = (),
        backlog: Callable[[], bool] | None = None,
    ) -> None:
        """``backlog()``: whether requests wait outside the scheduler for room (the runtime's
        batchers hold them back past capacity); the policy reads it as "saturated"."""
        if not workers:
            raise ValueError("a scheduler needs at least one worker")
        self.policy = policy
        self.workers = list(workers)
        self.clock = clock
        self.executor = executor
        self.perf = perf
        self.instruments = list(instruments)
        self._lock = threading.Lock()
        self._running: dict[str, Task] = {}
        self._busy_cores: set[int] = set()
        self._submitted = self._finished = self._failed_jobs = self._done = self._retried = 0
        policy.attach(PolicyContext(
            workers=self.workers, clock=clock, predict_s=perf.predict, transfer_s=perf.transfer,
            prefetch=executor.prefetch, backlog=backlog or (lambda: False),
        ))

    # -- entry points -----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue every task of ``job``; those with no dependency become ready at once."""
        finished: list[Job] = []
        with self._lock:
            now = self.clock.now()
            self._submitted += 1
            tasks, depends_on = job.tasks, job.depends_on
            job.remaining = len(tasks)
            for task in tasks:
                task.submit_s = now
            if self.instruments:
                for task in tasks:
                    self._emit("submit", task, None, now)
            for task in tasks:
                if not depends_on[task.part] and task.state is TaskState.WAITING:
                    self._make_ready(task, now, finished)
            self._dispatch(finished)
        self._notify(finished)

    def task_done(self, task: Task, error: BaseException | None = None) -> None:
        """The executor's report: ``task`` ended on ``task.worker``, successfully or with ``error``."""
        finished: list[Job] = []
        with self._lock:
            now = self.clock.now()
            worker = task.worker
            assert worker is not None and self._running.get(worker.name) is task, f"{task} was not running"
            del self._running[worker.name]
            self._busy_cores.difference_update(worker.cores)
            task.end_s = now
            if error is None:
                self._succeeded(task, worker, now, finished)
            else:
                self._failed(task, worker, error, now, finished)
            self._dispatch(finished)
        self._notify(finished)

    def add_worker(self, worker: WorkerSpec) -> None:
        """A worker that joined (a Dask worker started later): it takes tasks from now on."""
        finished: list[Job] = []
        with self._lock:
            if any(w.name == worker.name for w in self.workers):
                raise ValueError(f"a worker named {worker.name!r} is already scheduled")
            self.workers.append(worker)  # the policy's context lists these same workers
            self.policy.add_worker(worker)
            self._dispatch(finished)
        self._notify(finished)

    def remove_worker(self, name: str) -> None:
        """A worker that left: no task is placed on it again; those queued for it are placed anew.

        A task running on it stays running until the executor reports its end (an error, when
        the worker died)."""
        finished: list[Job] = []
        with self._lock:
            worker = next((w for w in self.workers if w.name == name), None)
            if worker is None:
                return
            self.workers.remove(worker)
            now = self.clock.now()
            for task in self.policy.remove_worker(worker):
                task.worker, task.predicted_s = None, math.nan
                self._make_ready(task, now, finished)
            self._dispatch(finished)
        self._notify(finished)

    def statistics(self) -> SchedulerStats:
        with self._lock:
            return SchedulerStats(self._submitted, self._finished, self._failed_jobs, self._done,
                                  self._retried, tuple(sorted(self._running)))

    # -- transitions (under the lock) -------------------------------------------------------

    def _make_ready(self, task: Task, now: float, finished: list[Job]) -> None:
        """Hand a task whose inputs exist to the policy, or fail its job if no worker can take it."""
        if not self.policy.context.eligible(task):
            error = SchedulingError(f"{task}: no worker may run it (failed on {sorted(task.failed_on)}, "
                                    "or no worker holds its stage)")
            self._fail_job(task, error, finished)
            return
        task.state = TaskState.READY
        task.ready_s = now
        if self.instruments:
            self._emit("ready", task, None, now)
        self.policy.push(task)

    def _succeeded(self, task: Task, worker: WorkerSpec, now: float, finished: list[Job]) -> None:
        task.state = TaskState.DONE
        # A remote worker measures compute alone; end - start would add the network round trip.
        duration = task.compute_s if math.isfinite(task.compute_s) else task.end_s - task.start_s
        self._done += 1
        if self.instruments:
            self._emit("end", task, worker, now)
        self.perf.record(task, worker, duration)
        self.policy.on_done(task, worker, duration)
        job = task.job
        for other in job.tasks:
            if other.state is TaskState.WAITING and all(
                job.tasks[d].state is TaskState.DONE for d in job.depends_on[other.part]
            ):
                self._make_ready(other, now, finished)
        self._task_closed(task, finished)

    def _failed(self, task: Task, worker: WorkerSpec, error: BaseException, now: float,
                finished: list[Job]) -> None:
        self._emit("fail", task, worker, now)
        self.policy.on_done(task, worker, task.end_s - task.start_s)
        task.failed_on.add(worker.name)
        retry = isinstance(error, WorkerFault) and len(task.failed_on) < MAX_ATTEMPTS
        if retry and self.policy.context.eligible(task):
            log.warning("%s failed on %s (%s); retrying elsewhere", task, worker.name, error)
            self._retried += 1
            self._make_ready(task, now, finished)
            return
        cause = error.__cause__ if isinstance(error, WorkerFault) and error.__cause__ else error
        self._fail_job(task, cause, finished)

    def _fail_job(self, task: Task, error: BaseException, finished: list[Job]) -> None:
        """Close ``task`` as failed and, with it, every task of its job that has not started."""
        task.state = TaskState.FAILED
        job = task.job
        if job.error is None:
            job.error, job.failed_task = error, task
        self._task_closed(task, finished)
        for other in job.tasks:
            if other.state is TaskState.WAITING or (
                    other.state is TaskState.READY and self.policy.discard(other)):
                other.state = TaskState.FAILED
                self._task_closed(other, finished)

    def _task_closed(self, task: Task, finished: list[Job]) -> None:
        job = task.job
        job.remaining -= 1
        if job.remaining == 0:
            job.finished = True
            if job.error is None:
                self._finished += 1
            else:
                self._failed_jobs += 1
            finished.append(job)

    def _dispatch(self, finished: list[Job]) -> None:
        """Offer every idle worker whose cores are free a task.

        One pass suffices, since a start never lets a worker passed over take a task: the started
        task's cores are busy now.  Another pass follows only when a task left a policy's queue
        without running (its job failed, or its worker refused it), which may expose a
        reservation, or a pushed task, that a worker passed over can take."""
        again = True
        while again:
            again = False
            running, busy, pop = self._running, self._busy_cores, self.policy.pop
            for worker in self.workers:
                if worker.name in running or not busy.isdisjoint(worker.cores):
                    continue
                task = pop(worker)
                while task is not None and task.job.error is not None:  # its job already failed
                    self.policy.on_done(task, worker, 0.0)  # the policy counted it as started
                    task.state = TaskState.FAILED
                    self._task_closed(task, finished)
                    again = True
                    task = self.policy.pop(worker)
                if task is not None and not self._start(task, worker, finished):
                    again = True

    def _start(self, task: Task, worker: WorkerSpec, finished: list[Job]) -> bool:
        """Run ``task`` on ``worker``; False when the worker refused it (the task failed or was retried)."""
        now = self.clock.now()
        task.state = TaskState.RUNNING
        task.worker = worker
        task.start_s = now
        if not math.isfinite(task.predicted_s):
            task.predicted_s = self.perf.predict(task, worker)
        self._running[worker.name] = task
        self._busy_cores.update(worker.cores)
        if self.instruments:
            self._emit("start", task, worker, now)
        try:
            self.executor.start(task, worker)
        except Exception as exc:  # the worker could not take it: free it, fail (or retry) the task
            del self._running[worker.name]
            self._busy_cores.difference_update(worker.cores)
            task.end_s = now
            self._failed(task, worker, exc, now, finished)
            return False
        return True

    def _emit(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
        for instrument in self.instruments:
            instrument.on_event(event, task, worker, when_s)

    @staticmethod
    def _notify(jobs: list[Job]) -> None:
        for job in jobs:
            if job.on_done is not None:
                try:
                    job.on_done(job, job.error)
                except Exception:  # a caller's callback must not take the worker thread down
                    log.exception("completion callback of %s failed", job.name)

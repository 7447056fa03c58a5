"""A simulated platform: workers take the time a table says, on a virtual clock.

It runs the real :class:`~hetsched.scheduler.Scheduler` and policies unchanged;
only the executor is simulated (an event heap of task ends).  Policy tests use
it with extreme costs; it also answers what-if questions for platforms we do
not have (a GPU beside two core groups).  It is deliberately thin: no second
scheduler lives here.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping

from hetsched.clock import FakeClock
from hetsched.scheduler import Scheduler
from hetsched.task import Job, Task, WorkerSpec


class SimulatedExecutor:
    """Ends each task after its true duration (``duration(task, worker)``) on the fake clock.

    Inputs moved to another memory node cost ``transfer_s`` each, before compute starts,
    unless prefetched early enough.
    """

    def __init__(self, clock: FakeClock, duration: Callable[[Task, WorkerSpec], float],
                 transfer_s: float = 0.0) -> None:
        self.clock = clock
        self.duration = duration
        self.transfer_s = transfer_s
        self.scheduler: Scheduler | None = None
        self._events: list[tuple[float, int, Task]] = []
        self._order = itertools.count()
        self._arrivals: dict[tuple[int, str], float] = {}  # (task id, node) -> inputs there at
        self.started: list[tuple[str, str]] = []  # (task label, worker) in start order

    def prefetch(self, task: Task, worker: WorkerSpec) -> None:
        moved = [n for n, nodes in task.input_nodes.items() if nodes and worker.memory_node not in nodes]
        self._arrivals[(task.id, worker.memory_node)] = self.clock.now() + self.transfer_s * len(moved)

    def start(self, task: Task, worker: WorkerSpec) -> None:
        now = self.clock.now()
        if (task.id, worker.memory_node) not in self._arrivals:
            self.prefetch(task, worker)
        ready = max(now, self._arrivals.pop((task.id, worker.memory_node)))
        seconds = self.duration(task, worker)
        if not math.isfinite(seconds):
            raise ValueError(f"no simulated duration for {task} on {worker.name}")
        self.started.append((f"{task.job.name}/{task.part}", worker.name))
        heapq.heappush(self._events, (ready + seconds, next(self._order), task))

    def run(self, until_s: float = math.inf) -> float:
        """Advance the clock event by event until nothing runs, or to ``until_s`` (then submit
        what arrives at that time: open-loop arrivals); returns the clock's time."""
        assert self.scheduler is not None, "attach the scheduler first"
        while self._events and self._events[0][0] <= until_s:
            when, _, task = heapq.heappop(self._events)
            self.clock.set(when)
            self.scheduler.task_done(task)
        if math.isfinite(until_s):
            self.clock.set(max(until_s, self.clock.now()))
        return self.clock.now()


def poisson_arrivals(executor: SimulatedExecutor, rate_per_s: float, requests: int,
                     make_job: Callable[[int], Job], seed: int = 0) -> list[tuple[float, Job]]:
    """Submit ``requests`` jobs (``make_job(index)``) at seeded Poisson arrival times, each when
    the clock reaches it (open loop), run to the end; returns (arrival time, job) pairs."""
    assert executor.scheduler is not None, "attach the scheduler first"
    rng = random.Random(seed)
    arrivals = []
    now = 0.0
    for index in range(requests):
        now += rng.expovariate(rate_per_s)
        executor.run(until_s=now)
        job = make_job(index)
        executor.scheduler.submit(job)
        arrivals.append((now, job))
    executor.run()
    return arrivals


def table_duration(seconds: Mapping[tuple[str, str], float]) -> Callable[[Task, WorkerSpec], float]:
    """True durations from a (stage, arch) -> seconds table."""
    return lambda task, worker: seconds.get((task.stage, worker.arch), math.nan)

"""dmda and dmdas: deque model data aware (StarPU), choosing each task's worker by expected completion.

At push, for every worker w that may run the task::

    transfer = time to bring the task's inputs to w's memory node
    start    = max(w's expected free time, now + transfer)
    end      = start + predicted length of the task on w's kind
    fitness  = alpha * (end - best end over workers) + beta * transfer

and the task goes to the worker of least fitness; its inputs are prefetched
there at once, not when the worker frees up.  A worker whose perf model for the
task is not calibrated yet (NaN) gets the task instead, to calibrate it, as
StarPU does; the one with the fewest tasks queued is chosen (its queue's length
in time is unknown).

Wide and narrow workers share cores.  Greedy completion times alone would send
every task to the wide worker whenever it is faster per task, even under load
(a narrow worker must wait for the wide one's reservation of its core too), so
the queue would grow while half the cores' throughput is lost.  Hence a wide
worker is a candidate only while no task waits for its cores (at most the running
ones are ahead of it): at low load a request gets every core — also when it
arrives while another runs, since a narrow worker would have to wait for that one
too and then run slower — and once a backlog forms the narrow workers keep every
core busy (StarPU's combined workers, with the mode chosen per task).

Expected free times are kept per core
(a worker is free when all its cores are), and every assignment reserves its
cores in assignment order: a worker starts a task only when it holds the head
reservation of each of its cores.  The globally oldest reservation can always
start, so no two workers wait on each other.

dmdas adds priorities: within one worker's queue, higher ``task.priority``
first (the runtime gives older requests higher priority so work already in
flight finishes first); the reservation order between workers is unchanged.
"""

from __future__ import annotations

import itertools
import math
from collections import deque

from hetsched.policies.base import Policy, PolicyContext
from hetsched.task import Task, WorkerSpec

# A wide worker that delivers at least this share of its narrow workers' combined throughput
# stays a candidate under load (StarPU's parallel tasks pay when their efficiency is high).
WIDE_EFFICIENCY = 0.95


class Dmda(Policy):
    name = "dmda"
    description = "minimum expected completion (free time, transfer, predicted length); prefetch at once"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self._order = itertools.count()
        self._queues: dict[str, list[tuple[int, Task]]] = {}
        self._free_s: dict[str, float] = {}  # per core ("c3") or per coreless worker ("w:gpu0")
        self._reservations: dict[str, deque[tuple[int, str]]] = {}  # slot -> (order, worker name)
        self._wide: set[str] = set()  # workers whose cores strictly contain another worker's
        self._slot_names: dict[str, list[str]] = {}
        self._narrow_of: dict[str, list[WorkerSpec]] = {}  # wide worker -> narrow ones on its cores
        self._busy: set[str] = set()  # slots of running tasks

    @staticmethod
    def _slots_of(worker: WorkerSpec) -> list[str]:
        return [f"c{core}" for core in worker.cores] or [f"w:{worker.name}"]

    def _slots(self, worker: WorkerSpec) -> list[str]:
        slots = self._slot_names.get(worker.name)  # a worker that left is no longer indexed
        return slots if slots is not None else self._slots_of(worker)

    def attach(self, ctx: PolicyContext) -> None:
        super().attach(ctx)
        self._index()

    def _index(self) -> None:
        """Slots and wide/narrow relations, computed when the workers change, not on every push."""
        workers = self.context.workers
        self._slot_names = {w.name: self._slots_of(w) for w in workers}
        self._narrow_of = {w.name: [o for o in workers if o.cores and set(o.cores) < set(w.cores)]
                           for w in workers}
        self._wide = {name for name, narrow in self._narrow_of.items() if narrow}

    def add_worker(self, worker: WorkerSpec) -> None:
        self._index()

    def remove_worker(self, worker: WorkerSpec) -> list[Task]:
        held = [task for _, task in self._queues.pop(worker.name, [])]
        for slot in self._slots(worker):
            reservations = self._reservations.get(slot, deque())
            for entry in [e for e in reservations if e[1] == worker.name]:
                reservations.remove(entry)
        self._index()
        return held

    def _candidates(self, workers: list[WorkerSpec], predicted: dict[str, float], now: float
                    ) -> list[WorkerSpec]:
        """Eligible workers; a wide one only while no task waits for its cores, unless it is
        about as efficient as its narrow workers together (then it never loses throughput)."""
        keep = [w for w in workers
                if w.name not in self._wide or self._unqueued(w) or self._efficient(w, workers, predicted)]
        return keep or workers

    def _efficient(self, wide: WorkerSpec, workers: list[WorkerSpec], predicted: dict[str, float]) -> bool:
        """Wide time <= (narrow time / number of cores) / WIDE_EFFICIENCY, both calibrated."""
        narrow_s = [predicted[w.name] for w in self._narrow_of[wide.name] if w in workers]
        wide_s = predicted[wide.name]
        if not narrow_s or not math.isfinite(wide_s) or not all(math.isfinite(t) for t in narrow_s):
            return False
        return wide_s * WIDE_EFFICIENCY <= min(narrow_s) / len(wide.cores)

    def _load(self, worker: WorkerSpec) -> int:
        """Tasks queued or running on the worker: spreads calibration work, whose length is unknown."""
        running = bool(self._busy.intersection(self._slots(worker)))
        return len(self._queues.get(worker.name, ())) + int(running)

    def _unqueued(self, worker: WorkerSpec) -> bool:
        """No task waits for the worker's cores (tasks may be running on them)."""
        return not any(self._reservations.get(slot) for slot in self._slots(worker))

    def _expected_free_s(self, worker: WorkerSpec, now: float) -> float:
        free = now
        for slot in self._slots(worker):
            free = max(free, self._free_s.get(slot, now))
        return free

    def push(self, task: Task) -> None:
        ctx = self.context
        now = ctx.clock.now()
        eligible = ctx.eligible(task)
        if not eligible:
            raise RuntimeError(f"{task}: no worker may run it (failed on {sorted(task.failed_on)})")
        predicted = {w.name: ctx.predict_s(task, w) for w in eligible}  # once per push: the hot path
        workers = self._candidates(eligible, predicted, now)
        lengths = [predicted[w.name] for w in workers]
        transfers = [ctx.transfer_s(task, w) for w in workers]
        frees = [self._expected_free_s(w, now) for w in workers]
        uncalibrated = [i for i, length in enumerate(lengths) if not math.isfinite(length)]
        if uncalibrated:
            known = [length for length in lengths if math.isfinite(length)]
            guess = min(known) if known else 0.0
            choice = min(uncalibrated, key=lambda i: (self._load(workers[i]), frees[i], i))
            self._assign(task, workers[choice], guess, transfers[choice], now, frees[choice])
            return
        ends = [max(free, now + t) + length for free, t, length in zip(frees, transfers, lengths)]
        best_end = min(ends)
        fitness = [self.alpha * (end - best_end) + self.beta * t for end, t in zip(ends, transfers)]
        choice = min(range(len(workers)), key=lambda i: (fitness[i], i))
        self._assign(task, workers[choice], lengths[choice], transfers[choice], now, frees[choice])

    def _assign(self, task: Task, worker: WorkerSpec, length_s: float, transfer_s: float, now: float,
                free_s: float) -> None:
        order = next(self._order)
        end = max(free_s, now + transfer_s) + length_s
        for slot in self._slots(worker):
            self._free_s[slot] = end
            reservations = self._reservations.get(slot)
            if reservations is None:
                reservations = self._reservations[slot] = deque()
            reservations.append((order, worker.name))
        self._queues.setdefault(worker.name, []).append((order, task))
        task.worker = worker
        task.predicted_s = length_s
        self.context.prefetch(task, worker)

    def _pick(self, queue: list[tuple[int, Task]]) -> tuple[int, Task]:
        return queue[0]

    def pop(self, worker: WorkerSpec) -> Task | None:
        queue = self._queues.get(worker.name)
        if not queue:
            return None
        slots = self._slots(worker)
        if any(self._reservations[slot][0][1] != worker.name for slot in slots):
            return None  # another worker reserved one of these cores earlier: it goes first
        order, task = self._pick(queue)
        queue.remove((order, task))
        for slot in slots:
            self._reservations[slot].remove((order, worker.name))
        self._busy.update(slots)
        return task

    def discard(self, task: Task) -> bool:
        for name, queue in self._queues.items():
            for order, queued in queue:
                if queued is task:
                    queue.remove((order, queued))
                    for slot in self._slots(task.worker) if task.worker else []:
                        self._reservations[slot].remove((order, name))
                    return True
        return False

    def on_done(self, task: Task, worker: WorkerSpec, duration_s: float) -> None:
        """A core with nothing reserved is free now, whatever the prediction said."""
        now = self.context.clock.now()
        slots = self._slots(worker)
        self._busy.difference_update(slots)
        for slot in slots:
            if not self._reservations.get(slot):
                self._free_s[slot] = now


class Dmdas(Dmda):
    name = "dmdas"
    description = "dmda, and within a worker's queue higher priority (older requests) first"

    def _pick(self, queue: list[tuple[int, Task]]) -> tuple[int, Task]:
        return min(queue, key=lambda item: (-item[1].priority, item[0]))

"""dmda and dmdas: deque model data aware (StarPU), choosing each task's worker by expected completion.

At push, for every worker w that may run the task::

    transfer = time to bring the task's inputs to w's memory node
    start    = max(w's expected free time, now + transfer)
    end      = start + predicted length of the task on w's kind
    fitness  = alpha * (end - best end over workers) + beta * transfer

and the task goes to the worker of least fitness; its inputs are prefetched
there at once, not when the worker frees up.  That placement is not final: a worker
free to start a task takes over one queued on another worker when it would finish it
no later there and it comes before its own next one (:meth:`Dmda._steal`), so where
workers are alike and runs vary, requests wait as in a central queue.  A worker whose perf model for the
task is not calibrated yet (NaN) gets the task instead, to calibrate it, as
StarPU does; the one with the fewest tasks queued is chosen (its queue's length
in time is unknown).

Wide and narrow workers share cores.  Greedy completion times alone would send
every task to the wide worker whenever it is faster per task, even under load
(a narrow worker must wait for the wide one's reservation of its core too), so
the queue would grow while half the cores' throughput is lost; and a wide worker
taken whenever it is idle makes the next request wait for it, which on a model
that scales poorly over threads costs more in the tail than it saves.  So the
mode is chosen for the load actually offered: the predicted wide and narrow
seconds of every pushed task, decayed over about LOAD_WINDOW_S, make the wide
worker an M/D/1 queue and its narrow workers an M/D/c queue, and the wide worker
is a candidate while its TAIL quantile of time in system (:func:`tail_latency`)
is at most TAIL_SLACK times theirs; when both would saturate, while it has about
their capacity (WIDE_EFFICIENCY); when work already waits outside the scheduler
(``context.backlog()``: the runtime holds requests back past capacity, so what is
pushed is the service rate, not the offered one), only while it has clearly more
(BACKLOG_WIDE_EFFICIENCY).  Light load on a model that scales well: every
request gets every core, as on one session with all threads; heavier load, or
poor scaling: the narrow workers, as Triton's one instance per core.  While requests
come one at a time (none of the last second's found the group busy), one that finds
the whole group idle may take the wide worker: a client sending its next request when
the last is answered keeps the group busy all the time (the load estimate says
saturated) though nobody ever waits.  Once arrivals overlap (OVERLAP_TOLERANCE), the tail model decides
for every request, since one taking every core makes the next arrivals wait.
Simulated (bench/wide_or_narrow.py), its p99 stays within 5% of the better of the two
static configurations at every load from 30% up, on models that scale well or poorly
(wide 9.5 to 16 ms against narrow 18 ms), and at 10% on those that scale well; at 10%
on one that scales poorly it costs up to 1.2x the narrow workers' p99 (the tail model
is rough at light load).  Taking the idle group whatever the arrivals had cost up to
1.4x there, from 10% to 70% load.  Until the perf models are calibrated, the wide
worker is a candidate while no task waits for it; once they are, a wide worker that has
not run for PROBE_AFTER_S may take a task that finds its group idle and predicts it no
slower than a narrow worker, so a prediction timed in a bad second is timed again.
(StarPU's combined workers, with the mode chosen per task.)

Expected free times are kept per core
(a worker is free when all its cores are), and every assignment reserves its
cores in assignment order: a worker starts a task only when it holds the head
reservation of each of its cores.  The globally oldest reservation can always
start, so no two workers wait on each other.  Expected free times follow what
really happens, as StarPU's do: when a task starts, its cores are expected free at
now + its predicted length + the predicted lengths still reserved on them; when
it ends, at now + those.  And workers of one kind share one perf model, so each
worker also keeps its pace: how much longer than predicted its runs take
(exponentially averaged over about 1 / PACE_WEIGHT tasks), which scales its
predictions.  A core slower than its kind's model says (the one the daemon's and
the client's threads also run on) would otherwise take its share of every burst
while its backlog grew and the other core idled: simulated, one core 1.5x slower
than the other at 80% and 90% load, dmda's p99 was 4.6x and 5.9x a central
queue's; with the paces, within 3% (tests/test_policies.py), and the corrected
free times add nothing there (alone they gave 1.25x and 1.17x).  They help where
runs vary around the prediction instead: a worker whose task overran is not offered
the next arrival as if its queue ended on time (tests/test_policies.py); with
lognormal run times (sigma 0.5) on two equal cores, p99 5-11% lower at 50-80% load,
3% higher at 90% (a throwaway simulation, not a test).

dmdas adds priorities: within one worker's queue, higher ``task.priority``
first (the runtime gives older requests higher priority so work already in
flight finishes first); the reservation order between workers is unchanged.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from collections.abc import Sequence

from hetsched.policies.base import Policy, PolicyContext
from hetsched.task import Task, TaskState, WorkerSpec

# When both modes would saturate, a wide worker that delivers at least this share of its narrow
# workers' combined throughput stays a candidate (StarPU's parallel tasks pay when efficient).
WIDE_EFFICIENCY = 0.95
# With a backlog (work waiting outside the scheduler), the wide worker must be predicted this much
# faster than its narrow workers together: its predictions date from quieter times (under load it
# rarely runs; yolov8n in batches of 3: 72 ms predicted, 110 ms run), and each switch from narrow to
# wide idles one core until the other's task ends.  Overloaded yolov8n answered 41, 37 and 29 req/s
# in three runs as 9, 15 and 44 wide tasks slipped in.
BACKLOG_WIDE_EFFICIENCY = 1.1
LOAD_WINDOW_S = 1.0  # the offered load is the work pushed over about the last second
# Arrivals that found the group busy, counted (decayed) over about LOAD_WINDOW_S, below which
# requests are taken to come one at a time (a closed-loop client): then one that finds the cores
# idle gets them all.
OVERLAP_TOLERANCE = 0.5
TAIL = 0.99  # the quantile the wide/narrow choice minimizes
# ... up to this factor: a wide worker whose tail is about the narrow ones' also gives the lower median
TAIL_SLACK = 1.05
# Weight of each finished task in a worker's pace (its runs' length over its kind's prediction,
# averaged exponentially over about 1 / PACE_WEIGHT tasks); a pace stays within PACE_LIMITS.
PACE_WEIGHT = 0.05
PACE_LIMITS = (0.25, 4.0)
# A wide worker the tail model keeps dropping never runs, so a pessimistic prediction of it (its
# calibration timed during a noisy second: googlenet's 2-thread runs at 35 ms, not 19) would stand
# for good, and the group serve as narrow workers at a load where wide answers sooner.  So when it
# has not run for this long, a task that finds its group idle and predicts it no slower than a
# narrow worker may take it: by the prediction that request loses nothing, and its run re-times it.
PROBE_AFTER_S = 1.0
# A running task past its predicted end is expected to need this share of its predicted length
# more: a guess (its remaining time is unknown), which decides whether an idle worker takes over
# the tasks queued behind it (Dmda._steal).
OVERRUN_REMAINING = 0.5


def tail_latency(service_s: float, servers: int, utilization: float) -> float:
    """Approximate TAIL quantile of the time in system of an M/D/c queue (Poisson arrivals, fixed
    service, ``servers`` alike, each busy ``utilization`` of the time); infinite at saturation.

    A request waits with Erlang C's probability; given that it waits, its wait is the larger of
    the residual service of the first of ``servers`` busy ones (a minimum of uniform residuals:
    right at light load) and an exponential tail ``e^(-theta t)`` whose rate is the Cramér root
    of the queue seen as one server ``servers`` times faster (right in heavy traffic).  Against
    Erlang's exact M/D/1 distribution it is within 15% from 20% to 70% load (low at light load);
    what counts is the choice it drives, which bench/wide_or_narrow.py and the policy tests check
    against both static configurations."""
    if utilization >= 1:
        return math.inf
    offered = servers * utilization  # in erlangs
    term, below = 1.0, 1.0  # offered**k / k!, and its sum over k < servers
    for k in range(1, servers):
        term *= offered / k
        below += term
    top = term * offered / servers / (1 - utilization)  # offered**c / c! * c / (c - offered)
    waiting = top / (below + top)
    beyond = 1 - TAIL
    if waiting <= beyond:
        return service_s
    residual = service_s * (1 - (beyond / waiting) ** (1 / servers))
    theta = _decay_exponent(round(max(utilization, 1e-3), 3)) * servers / service_s
    return service_s + max(residual, math.log(waiting / beyond) / theta)


@functools.lru_cache(maxsize=1024)
def _decay_exponent(utilization: float) -> float:
    """The root x > 0 of ``utilization * (e^x - 1) = x`` (the M/D/1 waiting time's tail exponent
    times the service time), by bisection; cached, since the load is rounded to 0.001."""
    low, high = 1e-12, 1.0
    while utilization * math.expm1(high) <= high:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        if utilization * math.expm1(middle) > middle:
            high = middle
        else:
            low = middle
    return (low + high) / 2


class Dmda(Policy):
    name = "dmda"
    description = "minimum expected completion (free time, transfer, predicted length); prefetch at once"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self._order = itertools.count()
        self._queues: dict[str, list[tuple[int, Task]]] = {}
        self._queued = 0  # tasks in all the queues: none, and an idle worker has nothing to take over
        self._free_s: dict[str, float] = {}  # per core ("c3") or per coreless worker ("w:gpu0")
        self._reservations: dict[str, deque[tuple[int, str]]] = {}  # slot -> (order, worker name)
        self._queued_s: dict[str, float] = {}  # slot -> predicted seconds reserved there, not started
        self._pace: dict[str, float] = {}  # worker -> how much longer its runs are than predicted
        self._calibrating: set[int] = set()  # ids of tasks sent to calibrate (their length a guess)
        self._wide: set[str] = set()  # workers whose cores strictly contain another worker's
        self._slot_names: dict[str, list[str]] = {}
        self._narrow_of: dict[str, list[WorkerSpec]] = {}  # wide worker -> narrow ones on its cores
        self._wide_workers: list[WorkerSpec] = []  # those of self._wide
        self._busy: set[str] = set()  # slots of running tasks
        self._running_s: dict[str, float] = {}  # slot -> predicted seconds of the task running there
        # wide worker -> predicted (wide, narrow) seconds of the work offered to its group, and the
        # count of pushes that found the group busy (an arrival overlapping another's run), decayed
        self._offered: dict[str, list[float]] = {}
        self._offered_at: float | None = None
        self._wide_ran_s: dict[str, float] = {}  # wide worker -> when it last started a task (or joined)

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
        self._wide_workers = [w for w in workers if w.name in self._wide]
        now = self.context.clock.now()
        for wide in self._wide_workers:  # staleness counts from when a worker joined
            self._wide_ran_s.setdefault(wide.name, now)

    def add_worker(self, worker: WorkerSpec) -> None:
        self._index()

    def remove_worker(self, worker: WorkerSpec) -> list[Task]:
        held = [task for _, task in self._queues.pop(worker.name, [])]
        self._queued -= len(held)
        for slot in self._slots(worker):
            reservations = self._reservations.get(slot, deque())
            for entry in [e for e in reservations if e[1] == worker.name]:
                reservations.remove(entry)
            for task in held:
                self._unreserve(slot, task.predicted_s)
        self._calibrating.difference_update(task.id for task in held)
        self._index()
        return held

    def _choose_mode(self, eligible: Sequence[WorkerSpec], predicted: dict[str, float],
                     now: float) -> Sequence[WorkerSpec]:
        """The candidates among ``eligible``: a wide worker only while it is expected to answer the
        tail sooner than its narrow workers at the load offered before this task (see the module
        doc); then the task's predicted work is counted into that load."""
        self._decay_offered(now)
        groups = []  # (wide worker, its length, its fastest narrow one's, whether its cores are idle)
        for wide in self._wide_workers:
            wide_s, narrow_s = self._group_lengths(wide.name, predicted)
            groups.append((wide, wide_s, narrow_s, self._idle(wide)))
        dropped = [wide.name for wide, wide_s, narrow_s, idle in groups
                   if not ((idle and (self._alone(wide) or self._probe(wide, wide_s, narrow_s, now)))
                           or self._wide_pays(wide, wide_s, narrow_s))]
        known = [group for group in groups if math.isfinite(group[1]) and math.isfinite(group[2])]
        for wide, wide_s, narrow_s, idle in known:  # the task goes to one group: each sees its share
            offered = self._offered.setdefault(wide.name, [0.0, 0.0, 0.0])
            offered[0] += wide_s / len(known)
            offered[1] += narrow_s / len(known)
            offered[2] += (not idle) / len(known)
        if not dropped:
            return eligible
        keep = [w for w in eligible if w.name not in dropped]
        return keep or eligible

    def _alone(self, wide: WorkerSpec) -> bool:
        """Whether the group's recent arrivals came one at a time (none found another's task on the
        cores, as from a client that waits for each answer): then every request may have every core,
        though the load estimate reads the group as always busy.  Once arrivals overlap, the tail
        model decides even for one that finds the cores idle: on a model that scales poorly (wide
        16 ms, narrow 18 ms) taking them cost the next arrivals up to 1.4x the narrow workers' p99."""
        offered = self._offered.get(wide.name)
        return offered is None or offered[2] < OVERLAP_TOLERANCE

    def _probe(self, wide: WorkerSpec, wide_s: float, narrow_s: float, now: float) -> bool:
        """Whether an idle group's wide worker, not run for PROBE_AFTER_S and predicted no slower
        than its narrow ones for this task, may take it to be timed again (see PROBE_AFTER_S)."""
        return wide_s <= narrow_s and now - self._wide_ran_s[wide.name] >= PROBE_AFTER_S

    def _group_lengths(self, wide: str, predicted: dict[str, float]) -> tuple[float, float]:
        """Predicted seconds of the task on a wide worker and on its fastest narrow one (NaN when
        either is unknown or not eligible)."""
        narrow = [predicted.get(n.name, math.nan) for n in self._narrow_of[wide]]
        return predicted.get(wide, math.nan), min(narrow) if narrow else math.nan

    def _decay_offered(self, now: float) -> None:
        """Age the offered work to ``now`` (exponentially, over about LOAD_WINDOW_S)."""
        decay = math.exp(-(now - self._offered_at) / LOAD_WINDOW_S) if self._offered_at is not None else 0.0
        self._offered_at = now
        for offered in self._offered.values():
            offered[0] *= decay
            offered[1] *= decay
            offered[2] *= decay

    def _wide_pays(self, wide: WorkerSpec, wide_s: float, narrow_s: float) -> bool:
        """Whether the wide worker (a task of ``wide_s`` there, ``narrow_s`` on its fastest narrow
        one) is expected to give the lower tail latency at the offered load; past capacity (both
        modes saturated, or a backlog outside the scheduler), whether it has about (clearly, with
        a backlog) its narrow workers' capacity."""
        offered = self._offered.get(wide.name)
        if offered is None or not (math.isfinite(wide_s) and math.isfinite(narrow_s)):
            return self._unqueued(wide)  # uncalibrated: one request at a time gets every core
        cores = len(wide.cores)
        if self.context.backlog():  # past capacity, whatever was pushed: a clearly higher capacity wins
            return wide_s * BACKLOG_WIDE_EFFICIENCY <= narrow_s / cores
        wide_load = offered[0] / LOAD_WINDOW_S  # utilization of the wide worker if it took everything
        narrow_load = offered[1] / LOAD_WINDOW_S / cores  # of each narrow worker if they did
        if wide_load >= 1 and narrow_load >= 1:  # overloaded either way: about the capacity wins
            return wide_s * WIDE_EFFICIENCY <= narrow_s / cores
        return tail_latency(wide_s, 1, wide_load) <= TAIL_SLACK * tail_latency(narrow_s, cores, narrow_load)

    def _load(self, worker: WorkerSpec) -> int:
        """Tasks queued or running on the worker: spreads calibration work, whose length is unknown."""
        running = bool(self._busy.intersection(self._slots(worker)))
        return len(self._queues.get(worker.name, ())) + int(running)

    def _idle(self, worker: WorkerSpec) -> bool:
        """Nothing runs on the worker's cores and nothing waits for them."""
        slots = self._slots(worker)
        return self._unqueued(worker) and not self._busy.intersection(slots)

    def _unqueued(self, worker: WorkerSpec) -> bool:
        """No task waits for the worker's cores (tasks may be running on them)."""
        return not any(self._reservations.get(slot) for slot in self._slots(worker))

    def push(self, task: Task) -> None:
        ctx = self.context
        now = ctx.clock.now()
        eligible = ctx.eligible(task)
        if not eligible:
            raise RuntimeError(f"{task}: no worker may run it (failed on {sorted(task.failed_on)})")
        predict, pace = ctx.predict_s, self._pace.get
        predicted = {w.name: predict(task, w) * pace(w.name, 1.0) for w in eligible}  # once per push
        workers = self._choose_mode(eligible, predicted, now) if self._wide else eligible
        # One pass gathers each candidate's (free time, transfer, length); plain loops, no lambdas
        # nor calls that need not be: this runs for every task.
        transfer, free_s, slot_names = ctx.transfer_s, self._free_s, self._slot_names
        rows = []
        uncalibrated = False
        best_end = math.inf
        for worker in workers:
            free = now  # when all the worker's cores are expected free
            for slot in slot_names[worker.name]:  # an eligible worker is a current one: indexed
                at = free_s.get(slot, now)
                if at > free:
                    free = at
            moved = transfer(task, worker)
            length = predicted[worker.name]
            if length == length:  # calibrated (not NaN)
                end = max(free, now + moved) + length
                best_end = min(best_end, end)
            else:
                uncalibrated = True
                end = math.nan
            rows.append((worker, free, moved, length, end))
        if uncalibrated:  # calibrate: the least loaded uncalibrated worker, soonest free first
            known = [row[3] for row in rows if row[3] == row[3]]
            guess = min(known) if known else 0.0
            chosen, best = rows[0], None
            for row in rows:
                if row[3] != row[3]:
                    rank = (self._load(row[0]), row[1])
                    if best is None or rank < best:
                        chosen, best = row, rank
            self._assign(task, chosen[0], guess, chosen[2], now, chosen[1])
            self._calibrating.add(task.id)
            return
        alpha, beta = self.alpha, self.beta
        chosen, best_fitness = rows[0], math.inf
        for row in rows:  # the first of equal fitness wins, as the workers are listed
            fitness = alpha * (row[4] - best_end) + beta * row[2]
            if fitness < best_fitness:
                chosen, best_fitness = row, fitness
        self._assign(task, chosen[0], chosen[3], chosen[2], now, chosen[1])

    def _assign(self, task: Task, worker: WorkerSpec, length_s: float, transfer_s: float, now: float,
                free_s: float) -> None:
        order = next(self._order)
        end = max(free_s, now + transfer_s) + length_s
        name, all_free, all_reservations = worker.name, self._free_s, self._reservations
        queued_s = self._queued_s
        for slot in self._slot_names[name]:  # a worker just chosen is a current one: indexed
            all_free[slot] = end
            queued_s[slot] = queued_s.get(slot, 0.0) + length_s
            reservations = all_reservations.get(slot)
            if reservations is None:
                reservations = all_reservations[slot] = deque()
            reservations.append((order, name))
        self._queues.setdefault(name, []).append((order, task))
        self._queued += 1
        task.worker = worker
        task.predicted_s = length_s
        self.context.prefetch(task, worker)

    @staticmethod
    def _precedence(order: int, task: Task) -> tuple[int, ...]:
        """Which of the queued tasks runs first (least first): the oldest assignment."""
        return (order,)

    def _in_precedence(self, queue: list[tuple[int, Task]]) -> list[tuple[int, Task]]:
        """``queue`` first to last by :meth:`_precedence`: as assigned, which is oldest first."""
        return queue

    def _pick(self, queue: list[tuple[int, Task]]) -> int:
        """Index in ``queue`` of the task to run next: the oldest assignment, the first."""
        return 0

    def pop(self, worker: WorkerSpec) -> Task | None:
        name = worker.name
        queue = self._queues.get(name)
        if not queue:
            return self._steal(worker, None)
        slots = self._slot_names[name]  # the scheduler offers current workers only: indexed
        reservations = self._reservations
        for slot in slots:
            if reservations[slot][0][1] != name:
                return None  # another worker reserved one of these cores earlier: it goes first
        index = self._pick(queue)
        stolen = self._steal(worker, self._precedence(*queue[index]))
        if stolen is not None:
            return stolen
        order, task = queue.pop(index)
        self._queued -= 1
        for slot in slots:
            held = reservations[slot]
            if held[0][0] == order:
                held.popleft()
            else:
                held.remove((order, name))
            self._unreserve(slot, task.predicted_s)
        self._started(worker, task.predicted_s, self.context.clock.now())
        return task

    def _started(self, worker: WorkerSpec, length_s: float, now: float) -> None:
        """A task of ``length_s`` predicted seconds starts on ``worker`` now: its cores are busy, and
        expected free once it and what is reserved on them have run, whatever was predicted."""
        free_s, queued_s, running_s = self._free_s, self._queued_s, self._running_s
        slots = self._slot_names[worker.name]
        for slot in slots:
            free_s[slot] = now + length_s + queued_s.get(slot, 0.0)
            running_s[slot] = length_s
        self._busy.update(slots)
        if worker.name in self._wide:
            self._wide_ran_s[worker.name] = now

    def _steal(self, thief: WorkerSpec, before: tuple[int, ...] | None) -> Task | None:
        """A task queued on another worker that ``thief``, free to start one now, would finish no
        later than there, and that precedes ``before`` (the thief's own next task; None: it has
        none): the first by precedence among those, or None.

        Placing each task at arrival binds it early: when a run overruns its prediction, what
        waits behind it waits while another worker idles, and one worker's queue may hold older
        requests than the next that another runs.  A central queue has neither problem; this
        gives dmda both of its answers where workers are alike, and keeps its choices where
        they are not (a task stays where it ends sooner).  A task sent to calibrate its worker
        stays there, and so does one whose worker could start it now."""
        if self._queued <= len(self._queues.get(thief.name, ())):
            return None  # no other worker has a task waiting
        ctx = self.context
        now = ctx.clock.now()
        slots = self._slot_names[thief.name]
        reservations, free_s, queued_s = self._reservations, self._free_s, self._queued_s
        best: tuple[tuple[int, ...], str, int, Task, float] | None = None
        for owner, queue in self._queues.items():
            if owner == thief.name or not queue:
                continue
            owner_slots = self._slot_names.get(owner)
            if owner_slots is None:
                continue
            # when the owner's running tasks are expected to end, then its queue in turn
            running_end = now
            for slot in owner_slots:
                end = free_s.get(slot, now) - queued_s.get(slot, 0.0)
                if slot in self._busy and end <= now:  # overran its prediction: its end is unknown
                    end = now + OVERRUN_REMAINING * self._running_s.get(slot, 0.0)
                running_end = max(running_end, end)
            owner_busy = bool(self._busy.intersection(owner_slots))
            ahead = 0.0
            for order, task in self._in_precedence(queue):
                length_there = task.predicted_s
                start_there = running_end + ahead
                ahead += length_there
                if task.id in self._calibrating:
                    continue
                if not owner_busy and all(reservations[s][0][0] == order for s in owner_slots):
                    continue  # its worker can start it now
                rank = self._precedence(order, task)
                if before is not None and rank >= before:
                    break  # the rest of this queue comes later still
                if any(held and held[0][1] != thief.name and held[0][0] != order
                       for held in (reservations.get(s) for s in slots)):
                    continue  # another worker's task was promised the thief's cores first
                if not any(w.name == thief.name for w in ctx.eligible(task)):
                    continue
                length = ctx.predict_s(task, thief) * self._pace.get(thief.name, 1.0)
                if not length == length:  # uncalibrated there
                    continue
                if (now + ctx.transfer_s(task, thief) + length <= start_there + length_there
                        and (best is None or rank < best[0])):
                    best = (rank, owner, order, task, length)
        if best is None:
            return None
        _, owner, order, task, length = best
        self._queues[owner].remove((order, task))
        self._queued -= 1
        for slot in self._slot_names[owner]:
            reservations[slot].remove((order, owner))
            self._unreserve(slot, task.predicted_s)
            free_s[slot] = max(now, free_s.get(slot, now) - task.predicted_s)
        self._started(thief, length, now)
        task.worker = thief
        task.predicted_s = length
        ctx.prefetch(task, thief)
        return task

    def _unreserve(self, slot: str, length_s: float) -> None:
        """A task reserved on ``slot`` started or left: its predicted length no longer waits there."""
        if self._reservations.get(slot):
            self._queued_s[slot] -= length_s
        else:
            self._queued_s[slot] = 0.0  # exactly, once nothing waits: no rounding drifts in

    def discard(self, task: Task) -> bool:
        for name, queue in self._queues.items():
            for order, queued in queue:
                if queued is task:
                    queue.remove((order, queued))
                    self._queued -= 1
                    for slot in self._slots(task.worker) if task.worker else []:
                        self._reservations[slot].remove((order, name))
                        self._unreserve(slot, task.predicted_s)
                    self._calibrating.discard(task.id)
                    return True
        return False

    def on_done(self, task: Task, worker: WorkerSpec, duration_s: float) -> None:
        """The worker's pace learns from the run's length; its cores are expected free once what is
        reserved on them has run, counted from now, whatever the prediction said."""
        now = self.context.clock.now()
        slots = self._slots(worker)
        self._busy.difference_update(slots)
        predicted = task.predicted_s
        if task.id in self._calibrating:  # its length was a guess, not this worker's prediction
            self._calibrating.discard(task.id)
        elif task.state is TaskState.DONE and duration_s > 0 and 0 < predicted < math.inf:  # ran to its end
            pace = self._pace.get(worker.name, 1.0) * (1 + PACE_WEIGHT * (duration_s / predicted - 1))
            self._pace[worker.name] = min(max(pace, PACE_LIMITS[0]), PACE_LIMITS[1])
        queued_s = self._queued_s
        for slot in slots:
            self._free_s[slot] = now + queued_s.get(slot, 0.0)


class Dmdas(Dmda):
    name = "dmdas"
    description = "dmda, and within a worker's queue higher priority (older requests) first"

    @staticmethod
    def _precedence(order: int, task: Task) -> tuple[int, ...]:
        return (-task.priority, order)

    def _in_precedence(self, queue: list[tuple[int, Task]]) -> list[tuple[int, Task]]:
        return sorted(queue, key=lambda entry: self._precedence(*entry))

    def _pick(self, queue: list[tuple[int, Task]]) -> int:
        return min(range(len(queue)), key=lambda i: self._precedence(*queue[i]))

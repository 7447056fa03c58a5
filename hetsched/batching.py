"""Dynamic batching: requests of one model wait briefly to run as one batch; results go back by rows.

Batching trades waiting for throughput.  With requests arriving every
``interval`` seconds, a batch of N costs its first request ``interval·(N−1)``
of waiting plus ``compute(N)``; the batch must also keep up with arrivals,
``N / compute(N) >= rate``.  :func:`choose_batch` picks the N minimizing that
latency among those that keep up (StarONNX §IV, §VI-B), plus the time a batch
queues for a worker, which StarONNX leaves out: a size that only just keeps up
runs the machine at a utilization near 1, where waits grow without bound
(Kingman's formula).  Without that term the chooser kept batch 1 on ocr-mobile
while the rate estimate sat within a few percent of batch 1's capacity, and a
backlog built that batches of 4 would have drained.  The batcher flushes when
that many rows wait, or when the oldest request has waited ``max_delay_s``.

While every worker is busy (``may_leave()`` is false) and the chooser wants
batches for the rate seen, the batcher holds what arrives instead of queueing it
behind the running work one request at a time: a worker that frees up then takes
a batch of the chooser's size at once (Triton's dynamic batcher holds requests the
same way, and takes up to its maximum).
When the chooser says single requests keep up, nothing is held: on CPU a batch
of N takes about N times one request, so a held batch only makes its rows wait
for each other while the other workers could have taken them (measured through
the daemon: p99 up to 1.5x the unbatched one at light and moderate load, in
bench/compare_triton.py).  So at low load a request leaves at once, and under
overload batches grow and throughput with them.

Rows are never mixed: each request's rows are a contiguous slice of the batch,
and the outputs are cut back at the same offsets.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetsched.affinity import name_os_thread
from hetsched.clock import Clock
from perfmodels.history import WINDOW

Arrays = dict[str, np.ndarray]


def choose_batch(rate_per_s: float, compute_s: Callable[[int], float], max_batch: int,
                 rows_per_s: Callable[[int], float] | None = None) -> int:
    """The batch size minimizing expected latency at ``rate_per_s`` while keeping up with it.

    ``compute_s(n)`` is the predicted seconds of one batch of n (its latency); ``rows_per_s(n)``
    the rows per second the platform sustains in batches of n -- several workers side by side
    keep up with more than one batch after another, which is all ``n / compute_s(n)`` (the
    default) says.  NaN means unknown: such sizes are skipped.  With no rate observed yet, or
    nothing predicted, returns 1.  The latency weighed is :func:`batch_latency_s`'s.
    """
    if rate_per_s <= 0 or not math.isfinite(rate_per_s):
        return 1
    best, best_latency = 1, math.inf
    fallback, fallback_rate = 1, 0.0
    for n in range(1, max_batch + 1):
        seconds = compute_s(n)
        if not math.isfinite(seconds) or seconds <= 0:
            continue
        throughput = rows_per_s(n) if rows_per_s is not None else n / seconds
        if not math.isfinite(throughput):
            continue
        if throughput > fallback_rate:
            fallback, fallback_rate = n, throughput
        if throughput <= rate_per_s:
            continue
        latency = batch_latency_s(n, rate_per_s, seconds, throughput)
        if latency < best_latency:
            best, best_latency = n, latency
    return best if math.isfinite(best_latency) else fallback  # overloaded: the best throughput


def batch_latency_s(n: int, rate_per_s: float, compute_s: float, rows_per_s: float) -> float:
    """Expected latency of a batch of ``n``'s first request at ``rate_per_s`` arrivals, on a
    platform that computes one batch in ``compute_s`` and sustains ``rows_per_s`` in batches of n:
    waiting for the other n - 1 requests, queueing for a worker, computing.

    The queueing is Kingman's heavy-traffic wait for one server doing a batch per
    ``n / rows_per_s`` seconds at utilization ``rate_per_s / rows_per_s``: batches arrive every n
    Poisson gaps (squared coefficient of variation 1/n) and take a steady time (0), so
    ``utilization / (1 - utilization) * (1/n) / 2 * (n / rows_per_s)``.  Several workers wait less
    than one fast one at light load and alike near saturation, where the term matters: it is there
    to rank a size with headroom above one that only just keeps up."""
    utilization = rate_per_s / rows_per_s
    if utilization >= 1:
        return math.inf
    queueing = utilization / (1 - utilization) / (2 * rows_per_s)  # (1/n)/2 * n/rows_per_s
    return (n - 1) / rate_per_s + queueing + compute_s


class SizeTable:
    """The predictions by batch size that :func:`choose_batch` reads, compared at one load.

    A size's prediction is the median of its last WINDOW runs, so under load only the sizes that
    run are re-timed: the others keep the times they had when calibrated before traffic, on quiet
    cores.  Compared as they stand, a size that has not run looks cheaper than the one that runs
    beside the daemon's own threads; the chooser switches to it, it runs until its window fills
    with loaded times, and then the chooser switches back (ocr-mobile past saturation ran batches
    of 2 and 4 it had no cause to, and answered less than without batching: bench/overload.py).

    So each size keeps a quiet cost (its first prediction), and every size is read as its quiet
    cost times the present load: the recent over the quiet times of the sizes whose windows hold
    loaded runs (formed at least half a window's worth since they last went unused), weighted by
    the batches formed.  Where two or more sizes have such windows, their quiet costs are learned
    from them (their loaded times over the load): under load a larger batch can cost more a row
    than its quiet calibration said (the cores share their caches), and a size dropped after
    that keeps its loaded cost relative to the others instead of looking cheap again.
    """

    FRESH_AFTER = WINDOW // 2 + 1  # batches of a size until its window's median is loaded runs
    STALE_AFTER = 10  # updates with no batch of a size (about a second under traffic) restart its count

    def __init__(self) -> None:
        self._quiet_s: list[float] = []  # by batch size (index 0 unused)
        self._quiet_rows: list[float] = []
        self._formed: dict[int, int] = {}  # batches formed by rows since the last update
        self._since: dict[int, int] = {}  # batches of each size formed since it last went unused
        self._unused: dict[int, int] = {}  # updates in a row without a batch of each size
        self.load = 1.0  # recent over quiet times of the sizes that ran

    def formed(self, rows: int) -> None:
        """A batch of ``rows`` was formed (its run will be timed at the present load)."""
        self._formed[rows] = self._formed.get(rows, 0) + 1

    def update(self, seconds: list[float], rows_per_s: list[float]) -> tuple[list[float], list[float]]:
        """Predicted seconds and rows per second by batch size, as read now, to the same sizes
        read at the present load."""
        formed, self._formed = self._formed, {}
        grow = len(seconds) - len(self._quiet_s)
        if grow > 0:
            self._quiet_s += [math.nan] * grow
            self._quiet_rows += [math.nan] * grow
        for n in set(self._since) | set(formed):
            if formed.get(n):
                self._since[n] = self._since.get(n, 0) + formed[n]
                self._unused[n] = 0
            else:
                self._unused[n] = self._unused.get(n, 0) + 1
                if self._unused[n] >= self.STALE_AFTER:
                    self._since[n] = 0
        fresh = [n for n, count in self._since.items() if count >= self.FRESH_AFTER and n < len(seconds)
                 and math.isfinite(seconds[n]) and math.isfinite(rows_per_s[n])
                 and math.isfinite(self._quiet_s[n])]
        weights = {n: formed.get(n, 0) for n in fresh}
        total = sum(weights.values())
        if total:
            self.load = sum(w * seconds[n] / self._quiet_s[n] for n, w in weights.items()) / total
        if len(fresh) >= 2:  # the sizes' costs relative to each other, as loaded runs show them
            for n in fresh:
                self._quiet_s[n], self._quiet_rows[n] = seconds[n] / self.load, rows_per_s[n] * self.load
        for n, (now_s, now_rows) in enumerate(zip(seconds, rows_per_s)):
            if not math.isfinite(self._quiet_s[n]) and math.isfinite(now_s) and math.isfinite(now_rows):
                # first timed now, at the present load: kept as its quiet equivalent
                self._quiet_s[n], self._quiet_rows[n] = now_s / self.load, now_rows * self.load
        return ([t * self.load for t in self._quiet_s[:len(seconds)]],
                [r / self.load for r in self._quiet_rows[:len(seconds)]])


@dataclass
class _Pending:
    feeds: Arrays
    rows: int
    future: Future[Arrays]
    arrived_s: float


class ArrivalRate:
    """Requests per second over about the last ``window_s``: arrivals counted with weights that
    decay as ``e^(-age / window_s)``.  An average of inter-arrival gaps read 20 s of Poisson
    arrivals at 57/s as anything from 23 to 163/s, request by request, and the chooser's batch
    followed; this count reads them as 43 to 69/s (tests/test_batching.py)."""

    def __init__(self, clock: Clock, window_s: float = 1.0) -> None:
        self.clock = clock
        self.window_s = window_s
        self._count = 0.0  # decayed arrivals, as of the last one
        self.arrivals = 0  # every arrival ever counted
        self._last: float | None = None
        self._first = 0.0

    def tick(self) -> None:
        now = self.clock.now()
        if self._last is None:
            self._first = now
        else:
            self._count *= math.exp(-(now - self._last) / self.window_s)
        self._count += 1.0
        self.arrivals += 1
        self._last = now

    @property
    def per_s(self) -> float:
        if self._last is None:
            return 0.0
        now = self.clock.now()
        count = self._count * math.exp(-(now - self._last) / self.window_s)
        # the window observed so far: shorter than window_s in the first seconds
        span = self.window_s * -math.expm1(-(now - self._first) / self.window_s)
        return count / span if span > 0 else 0.0


class DynamicBatcher:
    """Collects requests of one model and runs them as batches through ``run_batch``.

    ``run_batch(feeds, rows, turn)`` returns a future of the batch's outputs (``turn``: what
    :meth:`serve_turn` was given, else None).  ``target(rate)`` says how many rows to wait for
    (the batch-size chooser, or a constant).  ``may_leave()`` says whether a batch smaller than
    the chooser's may leave now rather than grow (a worker is free, or other requests already
    wait for room: growing is moot then).  ``take_turn(batcher)`` says whether a batch may go to
    the scheduler now (there is room and nothing waits for it); if not, the batcher takes its
    place in its model's admission line (:mod:`hetsched.admission`), and when the turn comes
    the runtime calls :meth:`serve_turn` with the room it kept for it, from the thread that
    freed the room.  So
    past capacity requests wait here and leave when a worker frees up, in a batch chosen then,
    as Triton's batcher forms a batch when an instance frees up: a backlog pushed to the
    scheduler at once had every batch's size and worker fixed seconds before it ran (yolov8n at
    1.35x capacity: 38 batches of 3 committed to the wide worker on a guess of 72 ms, before one
    of them ran, in 110 ms).  ``leave_turns(batcher)`` takes it out of that queue (on close).  The
    runtime calls :meth:`poke` when a worker may have freed up.
    """

    RECHECK_S = 0.05  # a missed poke costs at most this much waiting

    def __init__(self, run_batch: Callable[[Arrays, int, Any], Future[Arrays]], max_batch: int,
                 max_delay_s: float, clock: Clock, target: Callable[[float], int] | None = None,
                 may_leave: Callable[[], bool] | None = None,
                 take_turn: Callable[[DynamicBatcher], bool] | None = None,
                 leave_turns: Callable[[DynamicBatcher], None] | None = None) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_s >= 0, got {max_batch}, {max_delay_s}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.target = target or (lambda rate: max_batch)
        self.may_leave = may_leave or (lambda: True)
        self.take_turn = take_turn or (lambda batcher: True)
        self.leave_turns = leave_turns or (lambda batcher: None)
        self._turn_queued = False  # waiting for serve_turn in the runtime's queue
        self.rate = ArrivalRate(clock)
        self._queue: list[_Pending] = []
        self._rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # rows per batch run (for metrics and tests)
        self._thread = threading.Thread(target=self._loop, name="hetsched-batcher", daemon=True)
        self._thread.start()

    def submit(self, feeds: Arrays, rows: int) -> Future[Arrays]:
        future: Future[Arrays] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher closed")
            self.rate.tick()
            self._queue.append(_Pending(feeds, rows, future, self.clock.now()))
            self._rows += rows
            if not self._turn_queued:  # else the loop waits for serve_turn, not for arrivals: past
                self._cond.notify()    # saturation a wake-up per arrival only fought for the GIL
        return future

    def refused(self) -> None:
        """A request arrived that its model's full queue refused: it still counts toward the rate.
        The chooser must size batches for the load offered, not for what was let in: past
        capacity, what is let in is what the workers answer, which batch 1 "keeps up" with; so the
        chooser kept batch 1 behind a full queue (ocr-mobile at 234 req/s: a third of the tasks)."""
        with self._cond:
            self.rate.tick()

    @property
    def waiting(self) -> bool:
        """Whether requests wait here (for their batch to fill, or for a turn)."""
        return self._rows > 0

    def poke(self) -> None:
        """Capacity may have freed up (a batch finished): look again."""
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        """Flush what waits, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        name_os_thread()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: (self._queue and not self._turn_queued) or self._closed)
                if self._closed and self._turn_queued:  # what waits is flushed now, turn or not
                    self.leave_turns(self)
                    self._turn_queued = False
                if not self._queue and self._closed:
                    return
                want = self._wanted()
                while not self._closed and 1 < want and self._rows < want and not self.may_leave():
                    self._cond.wait(self.RECHECK_S)  # every worker busy, and batches pay: let one grow
                    want = self._wanted()
                deadline = self._queue[0].arrived_s + self.max_delay_s
                while self._rows < want and not self._closed:
                    remaining = deadline - self.clock.now()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._closed and not self.take_turn(self):
                    self._turn_queued = True  # a backlog waits here; serve_turn launches it (see above)
                    continue
                batch = self._take(want)
            self._launch(batch)

    def serve_turn(self, turn: Any) -> None:
        """This batcher's turn to send a batch to the scheduler (the runtime calls it once room frees
        up and this batcher is first in line; ``turn`` is that room, handed to ``run_batch``): the
        chooser's size for the rate seen now, launched from the calling thread.  (A held batch once
        grew to max_batch: a batch the chooser had just judged worse; requests that piled up leave
        as batches of their own on later turns.)"""
        batch: list[_Pending] = []
        with self._cond:
            try:
                self._turn_queued = False
                if self._queue:
                    batch = self._take(self._wanted())
            finally:
                self._cond.notify()  # the loop asks for the next turn if more wait
        if batch:
            self._launch(batch, turn)

    def _wanted(self) -> int:
        """Rows to wait for at the rate seen now (the chooser's answer, within 1..max_batch)."""
        return max(1, min(self.max_batch, self.target(self.rate.per_s)))

    def _take(self, limit: int) -> list[_Pending]:
        """Requests in arrival order up to ``limit`` rows (at least one, whatever its size)."""
        taken: list[_Pending] = []
        rows = 0
        while self._queue and (not taken or rows + self._queue[0].rows <= limit):
            item = self._queue.pop(0)
            taken.append(item)
            rows += item.rows
        self._rows -= rows
        return taken

    def _launch(self, batch: list[_Pending], turn: Any = None) -> None:
        rows = sum(p.rows for p in batch)
        self.batches.append(rows)
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds}
            future = self.run_batch(feeds, rows, turn)
        except Exception as exc:  # e.g. the runtime closed: every request hears of it
            for pending in batch:
                _settle(pending.future, error=exc)
            return
        future.add_done_callback(lambda done: _split(done, batch))


def _settle(future: Future[Arrays], result: Arrays | None = None, error: BaseException | None = None) -> None:
    """Complete a request's future unless its caller cancelled it."""
    if not future.set_running_or_notify_cancel():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result if result is not None else {})


def _split(done: Future[Arrays], batch: list[_Pending]) -> None:
    """Cut each output back into the requests' rows, at the offsets they were concatenated at."""
    error = done.exception()
    if error is not None:
        for pending in batch:
            _settle(pending.future, error=error)
        return
    outputs = done.result()
    if len(batch) == 1:
        _settle(batch[0].future, outputs)
        return
    offset = 0
    for pending in batch:
        rows = slice(offset, offset + pending.rows)
        _settle(pending.future, {name: value[rows].copy() for name, value in outputs.items()})
        offset += pending.rows

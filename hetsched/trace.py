"""Traces: every task's submit / ready / start / end and worker, every transfer of a task's
inputs that a platform makes ahead of the task, and, in the daemon, every client request's way
through its frontend, as Chrome trace JSON (opens in Perfetto) and as summaries (per-worker
utilization and idle time, and the share of its tasks' time their thread spent off CPU; transfer
time and the share of it hidden under compute, i.e. over before the task it feeds started).

A task's slice runs from its start on a worker (the scheduler's dispatch) to its end, and holds
the CPU time of the thread that ran it (``cpu_ms``).  On a CPU worker what is left is mostly
time that thread was ready to run but waited for its core while another thread (the daemon's
frontend, a client, another process) ran there: a task that runs long for its model with little
CPU was crowded out, one that runs long on CPU was slow itself.

A :class:`TraceRecorder` is an instrument: the scheduler calls ``on_event`` under its
lock, so recording is a list append and nothing else; platforms call ``on_transfer``, the
daemon's frontends ``on_request``.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hetsched.task import Task, WorkerSpec


@dataclass(frozen=True)
class TraceEvent:
    event: str  # submit | ready | start | end | fail
    task_id: int
    job: str
    part: int
    worker: str | None
    when_s: float
    rows: int  # the task's batch: how many requests' rows it ran at once
    cpu_s: float = math.nan  # an end's: the CPU time of the thread that ran the task (Task.cpu_s)


@dataclass(frozen=True)
class TransferEvent:
    task_id: int
    job: str
    source: str  # memory node(s) the data came from
    target: str  # memory node it went to
    nbytes: int
    start_s: float
    end_s: float


class RequestStamps:
    """One client request's way through a daemon frontend, on the scheduler's clock.

    A frontend stamps what it sees (``arrived_s``, ``received_s``, ``encoded_s``, ``sent_s``),
    the service the hand-over to the model and its answer (``submitted_s``, ``answered_s``);
    a point a frontend cannot see stays NaN.  The phases between them (:data:`PHASES`) are what
    a client's latency spends outside the scheduler, which a task trace alone cannot show.
    Answered requests are recorded; one refused or failed, or a call its client cancelled before
    the answer went out, is not.
    """

    __slots__ = ("frontend", "model", "arrived_s", "received_s", "submitted_s", "answered_s",
                 "encoded_s", "sent_s")

    def __init__(self, frontend: str, model: str, arrived_s: float) -> None:
        self.frontend = frontend  # "grpc", "grpc stream", "http"
        self.model = model
        # gRPC unary: its headers reached grpc's poller; HTTP: its handler began reading the body;
        # the gRPC stream: = received_s
        self.arrived_s = arrived_s
        self.received_s = math.nan  # the frontend's handler holds the whole request
        self.submitted_s = math.nan  # decoded and checked: handed to the model (batcher, scheduler)
        self.answered_s = math.nan  # the model's answer (or error) is there
        self.encoded_s = math.nan  # the response is built and handed to the protocol library
        self.sent_s = math.nan  # gRPC unary: the call is over, its response and status sent


PHASES = (  # (name, from, to): a request's way through a frontend, in order
    ("receive", "arrived_s", "received_s"),  # gRPC: the upload and the hop to a pool thread; HTTP: the body
    ("decode", "received_s", "submitted_s"),
    ("model", "submitted_s", "answered_s"),  # the dynamic batcher's wait, then the scheduler's tasks
    ("encode", "answered_s", "encoded_s"),  # the handler's wake-up, then the response built
    ("send", "encoded_s", "sent_s"),
)


@dataclass(frozen=True)
class TransferSummary:
    transfers: int
    nbytes: int
    seconds: float
    hidden_share: float  # of the transfer time, the part before its task started (NaN: none timed)


@dataclass(frozen=True)
class WorkerSummary:
    worker: str
    tasks: int
    busy_s: float
    utilization: float  # busy time / traced span
    # of the busy time of its tasks whose CPU time is known, the share their thread was off CPU:
    # the hand-over to it, and on a CPU worker the waits for its core while other threads ran there
    # (NaN: none known, as on a remote worker)
    off_cpu_share: float = math.nan


class TraceRecorder:
    """Collects task events; exports Chrome trace JSON and a per-worker summary."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit  # events kept at most, so a long-running daemon cannot grow without bound
        self._events: list[TraceEvent] = []
        self._transfers: list[TransferEvent] = []
        self._requests: list[RequestStamps] = []
        self._arrivals: dict[str, float] = {}  # job -> when its request reached the runtime
        self._lock = threading.Lock()

    def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
        with self._lock:
            if len(self._events) < self.limit:
                name = worker.name if worker else None
                self._events.append(TraceEvent(event, task.id, task.job.name, task.part, name, when_s,
                                                  task.batch, task.cpu_s if event == "end" else math.nan))

    def on_transfer(self, task: Task, source: str, target: str, nbytes: int, start_s: float,
                    end_s: float) -> None:
        """A platform moved ``nbytes`` of ``task``'s inputs from ``source`` to ``target`` between
        those times (the scheduler's clock)."""
        with self._lock:
            if len(self._transfers) < self.limit:
                self._transfers.append(TransferEvent(task.id, task.job.name, source, target, nbytes,
                                                     start_s, end_s))

    def on_arrival(self, job: str, arrived_s: float) -> None:
        """The runtime is starting ``job`` for a request it got at ``arrived_s``, which waited for room
        in the admission line since."""
        with self._lock:
            if len(self._arrivals) < self.limit:
                self._arrivals[job] = arrived_s

    def on_request(self, stamps: RequestStamps) -> None:
        """A frontend has answered a client request."""
        with self._lock:
            if len(self._requests) < self.limit:
                self._requests.append(stamps)

    def requests(self) -> list[RequestStamps]:
        with self._lock:
            return list(self._requests)

    def events(self) -> list[TraceEvent]:
        with self._lock:
            return list(self._events)

    def transfers(self) -> list[TransferEvent]:
        with self._lock:
            return list(self._transfers)

    @staticmethod
    def _spans(events: list[TraceEvent]) -> list[tuple[TraceEvent, TraceEvent]]:
        starts: dict[int, TraceEvent] = {}
        spans = []
        for event in events:
            if event.event == "start":
                starts[event.task_id] = event
            elif event.event in ("end", "fail") and event.task_id in starts:
                spans.append((starts.pop(event.task_id), event))
        return spans

    def chrome_trace(self) -> dict[str, Any]:
        """Complete ("X") events, one row per worker; one async slice (category "request") per job
        from its request's arrival in the runtime to its last task's end, with a "<job> held" slice
        nested in it while the request waited for room (the admission line); and one (category
        "frontend") per client request from its arrival at a frontend to its answer's sending,
        its phases nested in it.  Microseconds from the first event."""
        # one snapshot: tracing may go on meanwhile
        events, transfers, requests = self.events(), self.transfers(), self.requests()
        with self._lock:
            arrivals = dict(self._arrivals)
        spans = self._spans(events)
        origin = min([e.when_s for e in events] + [t.start_s for t in transfers]
                     + [r.arrived_s for r in requests] + list(arrivals.values()), default=0.0)
        links = sorted({_link(t) for t in transfers})
        rows = sorted({s.worker for s, _ in spans if s.worker}) + links  # a row per worker, per link
        tid = {name: i for i, name in enumerate(rows)}
        trace: list[dict[str, Any]] = [
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": i, "args": {"name": name}}
            for name, i in tid.items()
        ]
        for start, end in spans:
            args: dict[str, Any] = {"task": start.task_id, "rows": start.rows, "status": end.event}
            if not math.isnan(end.cpu_s):
                args["cpu_ms"] = round(end.cpu_s * 1e3, 3)
            trace.append(
                {
                    "ph": "X",
                    "pid": 1,
                    "tid": tid[start.worker or ""],
                    "name": f"{start.job} part {start.part}",
                    "ts": (start.when_s - origin) * 1e6,
                    "dur": (end.when_s - start.when_s) * 1e6,
                    "args": args,
                }
            )
        for t in transfers:
            trace.append({"ph": "X", "pid": 1, "tid": tid[_link(t)], "name": f"{t.job} inputs",
                          "ts": (t.start_s - origin) * 1e6, "dur": (t.end_s - t.start_s) * 1e6,
                          "args": {"task": t.task_id, "bytes": t.nbytes}})
        admitted: dict[str, float] = {}
        ended: dict[str, float] = {}
        for event in events:
            if event.event == "submit":
                admitted.setdefault(event.job, event.when_s)
            elif event.event in ("end", "fail"):
                ended[event.job] = max(ended.get(event.job, event.when_s), event.when_s)

        def job_event(ph: str, name: str, number: int, when: float) -> dict[str, Any]:
            return {"ph": ph, "cat": "request", "name": name, "id": number, "pid": 1,
                    "ts": (when - origin) * 1e6}

        for number, job in enumerate(j for j in admitted if j in ended):
            arrived = min(arrivals.get(job, admitted[job]), admitted[job])
            trace.append(job_event("b", job, number, arrived))
            if arrived < admitted[job]:  # it waited for room in the admission line
                trace += [job_event("b", f"{job} held", number, arrived),
                          job_event("e", f"{job} held", number, admitted[job])]
            trace.append(job_event("e", job, number, ended[job]))
        for number, stamps in enumerate(requests):
            trace.extend(_frontend_slices(stamps, f"frontend {number}", origin))
        return {"traceEvents": trace, "displayTimeUnit": "ms"}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.chrome_trace()))

    def summary(self) -> list[WorkerSummary]:
        spans = self._spans(self.events())
        if not spans:
            return []
        span_s = max(e.when_s for _, e in spans) - min(s.when_s for s, _ in spans)
        busy: dict[str, list[float]] = defaultdict(list)
        timed: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (duration, cpu) where known
        for start, end in spans:
            worker, duration = start.worker or "?", end.when_s - start.when_s
            busy[worker].append(duration)
            if not math.isnan(end.cpu_s):
                timed[worker].append((duration, end.cpu_s))
        return [
            WorkerSummary(w, len(t), sum(t), sum(t) / span_s if span_s > 0 else 0.0,
                          off_cpu_share(timed[w]))
            for w, t in sorted(busy.items())
        ]

    def transfer_summary(self) -> TransferSummary:
        """Transfers made, their bytes and seconds, and the share of those seconds hidden under
        compute: a transfer's time before the task it feeds started (the rest, the task began
        without the data or waited for it)."""
        transfers = self.transfers()
        started = {e.task_id: e.when_s for e in self.events() if e.event == "start"}
        seconds = hidden = 0.0
        for t in transfers:
            length = t.end_s - t.start_s
            seconds += length
            if t.task_id in started:
                hidden += max(0.0, min(t.end_s, started[t.task_id]) - t.start_s)
        return TransferSummary(len(transfers), sum(t.nbytes for t in transfers), seconds,
                               hidden / seconds if seconds > 0 else math.nan)


def off_cpu_share(tasks: list[tuple[float, float]]) -> float:
    """Of the summed durations of ``tasks`` (duration, CPU seconds), the share spent off CPU (NaN for
    none).  A thread's CPU clock and the scheduler's run on separate clocks, so a short task can read
    a little more CPU than duration: the share is kept at 0 or more."""
    duration = sum(d for d, _ in tasks)
    if duration <= 0:
        return math.nan
    return max(0.0, 1.0 - sum(c for _, c in tasks) / duration)


def _frontend_slices(stamps: RequestStamps, ident: str, origin: float) -> list[dict[str, Any]]:
    """A client request as async slices of one id: the whole (its frontend and model in ``args``),
    and each phase it was seen through, nested in it: the whole begins first and ends last."""
    points = [PHASES[0][1]] + [last for _, _, last in PHASES]
    seen = [when for when in (getattr(stamps, point) for point in points) if not math.isnan(when)]
    common = {"cat": "frontend", "id": ident, "pid": 1}

    def event(ph: str, name: str, when: float, **extra: Any) -> dict[str, Any]:
        return {"ph": ph, "name": name, "ts": (when - origin) * 1e6, **common, **extra}

    whole = f"{stamps.frontend} {stamps.model}"
    slices = [event("b", whole, seen[0], args={"frontend": stamps.frontend, "model": stamps.model})]
    for phase, first, last in PHASES:
        start, end = getattr(stamps, first), getattr(stamps, last)
        if not (math.isnan(start) or math.isnan(end)):
            slices += [event("b", phase, start), event("e", phase, end)]
    return [*slices, event("e", whole, seen[-1])]


def _link(transfer: TransferEvent) -> str:
    return f"transfers {transfer.source} -> {transfer.target}"

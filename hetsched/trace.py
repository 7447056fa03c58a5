"""Traces: every task's submit / ready / start / end and worker, and every transfer of a task's
inputs that a platform makes ahead of the task, as Chrome trace JSON (opens in Perfetto) and as
summaries (per-worker utilization and idle time; transfer time and the share of it hidden under
compute, i.e. over before the task it feeds started).

A :class:`TraceRecorder` is an instrument: the scheduler calls ``on_event`` under its
lock, so recording is a list append and nothing else; platforms call ``on_transfer``.
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


@dataclass(frozen=True)
class TransferEvent:
    task_id: int
    job: str
    source: str  # memory node(s) the data came from
    target: str  # memory node it went to
    nbytes: int
    start_s: float
    end_s: float


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


class TraceRecorder:
    """Collects task events; exports Chrome trace JSON and a per-worker summary."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit  # events kept at most, so a long-running daemon cannot grow without bound
        self._events: list[TraceEvent] = []
        self._transfers: list[TransferEvent] = []
        self._lock = threading.Lock()

    def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
        with self._lock:
            if len(self._events) < self.limit:
                name = worker.name if worker else None
                self._events.append(TraceEvent(event, task.id, task.job.name, task.part, name, when_s,
                                                  task.batch))

    def on_transfer(self, task: Task, source: str, target: str, nbytes: int, start_s: float,
                    end_s: float) -> None:
        """A platform moved ``nbytes`` of ``task``'s inputs from ``source`` to ``target`` between
        those times (the scheduler's clock)."""
        with self._lock:
            if len(self._transfers) < self.limit:
                self._transfers.append(TransferEvent(task.id, task.job.name, source, target, nbytes,
                                                     start_s, end_s))

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
        """Complete ("X") events, one row per worker, and one async slice per request from its
        arrival (its tasks' submission) to its last task's end; microseconds from the first event."""
        events, transfers = self.events(), self.transfers()  # one snapshot: tracing may go on meanwhile
        spans = self._spans(events)
        origin = min([e.when_s for e in events] + [t.start_s for t in transfers], default=0.0)
        links = sorted({_link(t) for t in transfers})
        rows = sorted({s.worker for s, _ in spans if s.worker}) + links  # a row per worker, per link
        tid = {name: i for i, name in enumerate(rows)}
        trace: list[dict[str, Any]] = [
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": i, "args": {"name": name}}
            for name, i in tid.items()
        ]
        for start, end in spans:
            trace.append(
                {
                    "ph": "X",
                    "pid": 1,
                    "tid": tid[start.worker or ""],
                    "name": f"{start.job} part {start.part}",
                    "ts": (start.when_s - origin) * 1e6,
                    "dur": (end.when_s - start.when_s) * 1e6,
                    "args": {"task": start.task_id, "rows": start.rows, "status": end.event},
                }
            )
        for t in transfers:
            trace.append({"ph": "X", "pid": 1, "tid": tid[_link(t)], "name": f"{t.job} inputs",
                          "ts": (t.start_s - origin) * 1e6, "dur": (t.end_s - t.start_s) * 1e6,
                          "args": {"task": t.task_id, "bytes": t.nbytes}})
        arrived: dict[str, float] = {}
        ended: dict[str, float] = {}
        for event in events:
            if event.event == "submit":
                arrived.setdefault(event.job, event.when_s)
            elif event.event in ("end", "fail"):
                ended[event.job] = max(ended.get(event.job, event.when_s), event.when_s)
        for number, job in enumerate(j for j in arrived if j in ended):
            for phase, when in (("b", arrived[job]), ("e", ended[job])):
                trace.append(
                    {
                        "ph": phase,
                        "cat": "request",
                        "name": job,
                        "id": number,
                        "pid": 1,
                        "ts": (when - origin) * 1e6,
                    }
                )
        return {"traceEvents": trace, "displayTimeUnit": "ms"}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.chrome_trace()))

    def summary(self) -> list[WorkerSummary]:
        spans = self._spans(self.events())
        if not spans:
            return []
        span_s = max(e.when_s for _, e in spans) - min(s.when_s for s, _ in spans)
        busy: dict[str, list[float]] = defaultdict(list)
        for start, end in spans:
            busy[start.worker or "?"].append(end.when_s - start.when_s)
        return [
            WorkerSummary(w, len(t), sum(t), sum(t) / span_s if span_s > 0 else 0.0)
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


def _link(transfer: TransferEvent) -> str:
    return f"transfers {transfer.source} -> {transfer.target}"

"""Traces: every task's submit / ready / start / end and worker, as Chrome trace JSON (opens in
Perfetto) and as a summary (per-worker utilization and idle time).

A :class:`TraceRecorder` is an instrument: the scheduler calls ``on_event`` under its
lock, so recording is a list append and nothing else.
"""

from __future__ import annotations

import json
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
        self._lock = threading.Lock()

    def on_event(self, event: str, task: Task, worker: WorkerSpec | None, when_s: float) -> None:
        with self._lock:
            if len(self._events) < self.limit:
                name = worker.name if worker else None
                self._events.append(TraceEvent(event, task.id, task.job.name, task.part, name, when_s,
                                                  task.batch))

    def events(self) -> list[TraceEvent]:
        with self._lock:
            return list(self._events)

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
        events = self.events()  # one snapshot: tracing may go on meanwhile
        spans = self._spans(events)
        origin = min((e.when_s for e in events), default=0.0)
        rows = sorted({s.worker for s, _ in spans if s.worker})
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

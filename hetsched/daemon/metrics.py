"""Prometheus metrics on their own port, read at scrape time from the same counters as the statistics
extension.

The request metrics carry Triton's exact names and labels
(``nv_inference_request_success{model="...",version="..."}``,
``nv_inference_queue_duration_us``...), so a Triton dashboard works unchanged;
what Triton has no word for is ``hetsched_*``: busy time and utilization per
worker, batches by size, requests refused because a queue was full, requests
waiting.  Written in Prometheus' text format by hand: Triton's counters have no
``_total`` suffix, which client libraries would add.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from hetsched.daemon.service import InferenceService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> None:
        self.samples.append((labels, value))

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{self.name}{{{text}}} {value:.17g}" if text else f"{self.name} {value:.17g}")
        return "\n".join(lines)


class MetricsText:
    """Renders the service's counters; keeps the previous scrape to turn busy time into utilization."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self._last: tuple[float, dict[str, float]] | None = None

    def render(self) -> str:
        return "\n".join(f.render() for f in [*self._models(), *self._workers()]) + "\n"

    def _models(self) -> Sequence[Family]:
        success = Family("nv_inference_request_success", "counter", "Successful requests")
        failure = Family("nv_inference_request_failure", "counter", "Failed requests")
        count = Family("nv_inference_count", "counter", "Inferences (rows) answered")
        executions = Family("nv_inference_exec_count", "counter", "Batches executed")
        request_us = Family(
            "nv_inference_request_duration_us", "counter", "Cumulative request duration, accepted to answered"
        )
        queue_us = Family("nv_inference_queue_duration_us", "counter", "Cumulative queue time of executions")
        compute_us = Family(
            "nv_inference_compute_infer_duration_us",
            "counter",
            "Cumulative compute time of executions (sum of their parts)",
        )
        rejected = Family(
            "hetsched_requests_rejected",
            "counter",
            "Requests refused at once because the model's queue was full",
        )
        pending = Family("hetsched_requests_pending", "gauge", "Requests accepted and not answered yet")
        batches = Family("hetsched_batch_executions", "counter", "Batches executed, by batch size")
        for versions in self.service.served.values():
            for served in versions.values():
                key = (("model", served.name), ("version", served.version))
                stats = served.stats.as_dict(served.name, served.version)
                inference = stats["inference_stats"]
                success.add(key, inference["success"]["count"])
                failure.add(key, inference["fail"]["count"])
                count.add(key, stats["inference_count"])
                executions.add(key, stats["execution_count"])
                request_us.add(key, (inference["success"]["ns"] + inference["fail"]["ns"]) / 1e3)
                queue_us.add(key, inference["queue"]["ns"] / 1e3)
                compute_us.add(key, inference["compute_infer"]["ns"] / 1e3)
                rejected.add(key, served.stats.rejected)
                pending.add(key, served.model.pending)
                for batch in stats["batch_stats"]:
                    batches.add(
                        (*key, ("batch_size", str(batch["batch_size"]))), batch["compute_infer"]["count"]
                    )
        return [
            success,
            failure,
            count,
            executions,
            request_us,
            queue_us,
            compute_us,
            rejected,
            pending,
            batches,
        ]

    def _workers(self) -> Sequence[Family]:
        busy = Family("hetsched_worker_busy_seconds", "counter", "Seconds each worker spent running tasks")
        utilization = Family(
            "hetsched_worker_utilization",
            "gauge",
            "Fraction of the time since the previous scrape each worker ran tasks",
        )
        task_stats = self.service.task_stats
        now = time.monotonic()
        current = dict(task_stats.busy_s)
        since, before = self._last or (task_stats.started, {})
        window = max(now - since, 1e-9)
        for runtime in self.service.runtimes.values():
            for spec in runtime.specs:
                labels = (("worker", spec.name), ("arch", spec.arch))
                seconds = current.get(spec.name, 0.0)
                busy.add(labels, seconds)
                utilization.add(labels, min(1.0, (seconds - before.get(spec.name, 0.0)) / window))
        self._last = (now, current)
        return [busy, utilization]


def build_app(service: InferenceService) -> web.Application:
    text = MetricsText(service)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=text.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

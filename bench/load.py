"""Load against any KServe v2 server — hetsched or Triton — through ``tritonclient``: the same generator
for both, so a comparison differs only in the server.

- Open loop (``--rates``): requests leave at fixed times, constant or Poisson
  arrivals, whether or not earlier ones were answered.  A request's latency runs
  from its *scheduled* send time to its answer, so a client or server that falls
  behind shows up in the numbers (no coordinated omission).  Past the duration,
  the generator waits ``--drain`` seconds for stragglers; those still missing are
  errors ("timeout").
- Closed loop (``--concurrency``): N clients, each sending its next request when
  the previous one is answered.

Both record p50/p90/p99/mean latency, achieved throughput (answers per second
of the run), and errors by kind.  On a machine this small the client competes
with the server for the same cores; it does so equally for every server.

    PYTHONPATH=. python bench/load.py --url grpc://127.0.0.1:8001 --model resnet --rates 10,20,40
    PYTHONPATH=. python bench/load.py --url http://127.0.0.1:8000 --model resnet --concurrency 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass
class LoadResult:
    mode: str  # "open" or "closed"
    protocol: str
    offered_rate: float  # requests/s asked for (open loop); 0 for closed loop
    concurrency: int  # clients (closed loop); 0 for open loop
    duration_s: float
    sent: int
    completed: int
    achieved_rate: float  # answers per second, from the start to the last answer (or the schedule's end)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    schedule_s: float = 0.0  # open loop: how long requests were being sent
    client_cpu_ms: float = float("nan")  # open loop: this process's CPU per answer (the client's cost)

    @property
    def sent_rate(self) -> float:
        """The rate the schedule really sent (Poisson counts vary around the offered rate)."""
        return self.sent / self.schedule_s if self.schedule_s else 0.0

    def line(self) -> str:
        load = f"{self.offered_rate:g} req/s" if self.mode == "open" else f"{self.concurrency} clients"
        errors = f", errors {self.errors}" if self.errors else ""
        return (
            f"{self.protocol} {load}: {self.achieved_rate:.1f} answers/s, p50 {self.p50_ms:.2f} ms, "
            f"p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms{errors}"
        )


class Target:
    """One model on one server: ``url`` is ``grpc://host:port`` or ``http://host:port``."""

    def __init__(self, url: str, model: str, inputs: Arrays | None = None) -> None:
        scheme, _, address = url.partition("://")
        if scheme not in ("grpc", "http") or not address:
            raise SystemExit(f"--url {url!r}: write grpc://host:port or http://host:port")
        self.protocol, self.address, self.model = scheme, address, model
        if scheme == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module: Any = module
        self.inputs = inputs if inputs is not None else self.random_inputs()

    def client(self) -> Any:
        if self.protocol == "http":
            return self.module.InferenceServerClient(
                self.address, connection_timeout=120, network_timeout=120
            )
        return self.module.InferenceServerClient(self.address)

    def random_inputs(self, batch: int = 1) -> Arrays:
        """One request of random values shaped by the model's metadata (-1 dims become ``batch``)."""
        from tritonclient.utils import triton_to_np_dtype

        client = self.client()
        metadata = client.get_model_metadata(
            self.model, **({"as_json": True} if self.protocol == "grpc" else {})
        )
        client.close()
        rng = np.random.default_rng(0)
        arrays = {}
        for spec in metadata["inputs"]:
            shape = [batch if int(d) < 0 else int(d) for d in spec["shape"]]
            dtype = triton_to_np_dtype(spec["datatype"])
            if np.issubdtype(dtype, np.floating):
                arrays[spec["name"]] = rng.standard_normal(shape).astype(dtype)
            else:
                arrays[spec["name"]] = rng.integers(0, 3, shape).astype(dtype)
        return arrays

    def request(self) -> list[Any]:
        from tritonclient.utils import np_to_triton_dtype

        made = []
        for name, value in self.inputs.items():
            tensor = self.module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            if self.protocol == "http":
                tensor.set_data_from_numpy(value, binary_data=True)
            else:
                tensor.set_data_from_numpy(value)
            made.append(tensor)
        return made


def server_url(server: Any, protocol: str) -> str:
    """``grpc://host:port`` or ``http://host:port`` of a server that has both (a DaemonProcess, a
    TritonServer): the same load through either protocol."""
    return f"{protocol}://{server.grpc if protocol == 'grpc' else server.http}"


def arrival_times(rate: float, duration_s: float, arrivals: str, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of an open-loop run."""
    if arrivals == "constant":
        return [i / rate for i in range(int(rate * duration_s))]
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=int(rate * duration_s * 2) + 16)
    times = np.cumsum(gaps) - gaps[0]
    return [float(t) for t in times if t < duration_s]


def open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    arrivals: str = "poisson",
    drain_s: float = 30.0,
    seed: int = 0,
) -> LoadResult:
    schedule = arrival_times(rate, duration_s, arrivals, seed)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    done = threading.Semaphore(0)
    last_answer = [0.0]
    request = target.request()
    client = target.client() if target.protocol == "grpc" else None
    pool = ThreadPoolExecutor(64) if target.protocol == "http" else None  # HTTP has no callbacks

    def finished(scheduled: float, error: Any) -> None:
        now = time.perf_counter()
        with lock:
            last_answer[0] = max(last_answer[0], now)
            if error is None:
                latencies.append(now - scheduled)
            else:
                errors[_kind(error)] += 1
        done.release()

    cpu_start, start = time.process_time(), time.perf_counter()
    for offset in schedule:
        scheduled = start + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if pool is not None:
            pool.submit(_http_call, target, request, scheduled, finished)
        else:
            client.async_infer(target.model, request, lambda result, error, s=scheduled: finished(s, error))
    sent_end = time.perf_counter()
    deadline = sent_end + drain_s
    answered = 0
    while answered < len(schedule) and done.acquire(timeout=max(0.0, deadline - time.perf_counter())):
        answered += 1
    with lock:
        errors["timeout"] += len(schedule) - answered
        # a run that keeps up answers its last request about when the schedule ends; a backlog later
        elapsed = max(duration_s, last_answer[0] - start)
        result = _summary("open", target.protocol, rate, 0, elapsed, len(schedule), latencies, errors)
        result.schedule_s = duration_s
        result.client_cpu_ms = (time.process_time() - cpu_start) / max(1, result.completed) * 1e3
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    if client is not None:
        client.close()
    return result


_local = threading.local()


def _http_call(
    target: Target, request: list[Any], scheduled: float, finished: Callable[[float, Any], None]
) -> None:
    """On a pool thread, with that thread's own client (HTTP clients are not thread-safe)."""
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = target.client()
    try:
        client.infer(target.model, request)
    except Exception as exc:
        finished(scheduled, exc)
        return
    finished(scheduled, None)


def closed_loop(target: Target, concurrency: int, duration_s: float) -> LoadResult:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s
    sent = [0] * concurrency

    def client_loop(index: int) -> None:
        client = target.client()
        request = target.request()
        while time.perf_counter() < stop_at:
            begin = time.perf_counter()
            sent[index] += 1
            try:
                client.infer(target.model, request)
            except Exception as exc:
                with lock:
                    errors[_kind(exc)] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - begin)
        client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary(
        "closed", target.protocol, 0.0, concurrency, time.perf_counter() - start, sum(sent), latencies, errors
    )


def _summary(
    mode: str,
    protocol: str,
    rate: float,
    concurrency: int,
    elapsed_s: float,
    sent: int,
    latencies: list[float],
    errors: Mapping[str, int],
) -> LoadResult:
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")

    return LoadResult(
        mode,
        protocol,
        rate,
        concurrency,
        elapsed_s,
        sent,
        len(ordered),
        len(ordered) / elapsed_s,
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        statistics.fmean(ordered) * 1e3 if ordered else float("nan"),
        {k: v for k, v in errors.items() if v},
    )


def _kind(error: Any) -> str:
    """A short error label: the server's status when it gave one."""
    status = error.status() if hasattr(error, "status") else None
    return str(status or type(error).__name__).removeprefix("StatusCode.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="grpc://host:port or http://host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rates", help="open loop: requests/s, e.g. 10,20,40")
    parser.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson")
    parser.add_argument("--concurrency", help="closed loop: clients, e.g. 1,2,4,8")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point (default 10)")
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    if not args.rates and not args.concurrency:
        parser.error("give --rates (open loop) or --concurrency (closed loop)")
    target = Target(args.url, args.model)
    if args.batch != 1:
        target.inputs = target.random_inputs(args.batch)
    results = []
    for rate in [float(r) for r in (args.rates or "").split(",") if r]:
        results.append(open_loop(target, rate, args.duration, args.arrivals))
        print(results[-1].line(), flush=True)
    for clients in [int(c) for c in (args.concurrency or "").split(",") if c]:
        results.append(closed_loop(target, clients, args.duration))
        print(results[-1].line(), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump([asdict(r) for r in results], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

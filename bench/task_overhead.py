"""The scheduler's own overhead per task, in process, on a one-node model (issue 4's ≤ 50 µs target).

Side by side in one run, rounds interleaved so the machine's noise hits every path
alike, one request at a time on a Relu over 4 floats (microseconds of compute):

- ``session.run``: plain ONNX Runtime, the floor;
- ``thread round trip``: a Python queue put + Future answered by another thread, no
  work at all: what handing a task to a worker thread and the answer back costs on
  this machine before any bookkeeping;
- ``hetsched 1x1``: ``Model.infer`` on one one-core worker (dmda); ``infer`` runs the
  task on the calling thread, pinned to the worker's core meanwhile (``run_here``), so
  no thread round trip is paid;
- ``hetsched auto``: ``Model.infer`` on the default workers (a wide worker and a
  narrow one per core; dmda chooses among them per task).

The overhead of a configuration is its median minus session.run's median.

Under load the workers never sleep, so what a task costs is its Python work, not the wake-ups
of an idle machine: ``hetsched 1x1, N in flight`` keeps N requests (``submit``, run by the
worker's thread) queued on the one worker
and divides the elapsed time by the requests answered; its overhead is that minus
session.run's time per call back to back (the machine's throughput cost per task).  Wall
time on a shared VM moves by 2x from one day to the next, so beside it the bench
counts the Python work of one request, which barely moves (under 1% for dmda, whose
load estimate reads the clock): bytecodes executed and Python calls made
(``sys.settrace`` with opcode events), with the worker's part run on the calling
thread so that one trace sees the whole path.  Writes
bench/results/task_overhead.json and its section of bench/RESULTS.md;
``--python-work`` only prints the counts (to compare two checkouts: put the other
one first on PYTHONPATH).

    PYTHONPATH=.:bench python bench/task_overhead.py [--requests 3000] [--rounds 3] [--python-work]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import queue
import statistics
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from results_md import package_version, write_section
from timing import timed_calls

from hetsched import Runtime
from perfmodels.measure import cpu_session

HERE = Path(__file__).parent
TARGET_US = 50.0
RUNTIMES = {"hetsched 1x1": {"workers": "1x1", "narrow": False}, "hetsched auto": {"workers": "auto"}}


def relu_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def thread_round_trip(requests: int) -> list[float]:
    inbox: queue.SimpleQueue[Future[int] | None] = queue.SimpleQueue()

    def answer() -> None:
        while (future := inbox.get()) is not None:
            future.set_result(0)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()

    def call() -> None:
        future: Future[int] = Future()
        inbox.put(future)
        future.result()

    samples = timed_calls(call, requests)
    inbox.put(None)
    thread.join()
    return samples


IN_FLIGHT = 16
LOADED_BLOCKS = 10  # per round: the loaded path's samples are medians over blocks of requests
LOADED = f"hetsched 1x1, {IN_FLIGHT} in flight"


def loaded_seconds(model: Any, feeds: dict[str, np.ndarray], requests: int) -> float:
    """Seconds per request with IN_FLIGHT requests always queued (the worker never waits)."""
    window: deque[Future[Any]] = deque(model.submit(feeds) for _ in range(IN_FLIGHT))
    start = time.perf_counter()
    for _ in range(requests):
        window.popleft().result()
        window.append(model.submit(feeds))
    elapsed = time.perf_counter() - start
    for future in window:
        future.result()
    return elapsed / requests


def back_to_back_seconds(session: Any, feeds: dict[str, np.ndarray], requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        session.run(None, feeds)
    return (time.perf_counter() - start) / requests


def measure(requests: int, rounds: int, warmup: int = 300) -> dict[str, list[float]]:
    """Seconds per request of each path, all rounds pooled."""
    proto = relu_model()
    feeds = {"x": np.ones((1, 4), np.float32)}
    session = cpu_session(proto, 1)
    samples: dict[str, list[float]] = {}
    for round_ in range(rounds):
        samples.setdefault("session.run", []).extend(timed_calls(lambda: session.run(None, feeds), requests))
        samples.setdefault("thread round trip", []).extend(thread_round_trip(requests))
        for label, config in RUNTIMES.items():
            with Runtime(policy="dmda", **config) as runtime:
                model = runtime.load(proto)
                infer = model.infer
                # the warm-up calibrates every worker first
                samples.setdefault(label, []).extend(timed_calls(lambda: infer(feeds), requests, warmup))
                if label == "hetsched 1x1":  # each block of requests is one sample, against the floor's
                    for _ in range(LOADED_BLOCKS):
                        samples.setdefault("session.run back to back", []).append(
                            back_to_back_seconds(session, feeds, requests // LOADED_BLOCKS))
                        samples.setdefault(LOADED, []).append(
                            loaded_seconds(model, feeds, requests // LOADED_BLOCKS))
        medians = {k: f"{statistics.median(v) * 1e6:.0f}" for k, v in samples.items()}
        print(f"round {round_ + 1}/{rounds}: median µs so far {medians}", flush=True)
    return samples


def python_work(config: dict[str, Any], requests: int = 200, warmup: int = 300) -> dict[str, float]:
    """Bytecodes executed and Python calls made per request on ``config``, deterministic.

    The executor's ``start`` is replaced for the count: the task is run on the calling thread once
    ``submit`` returns (the scheduler's lock is free again), then reported done, so one thread runs
    the whole path the worker thread would."""
    feeds = {"x": np.ones((1, 4), np.float32)}
    with Runtime(policy="dmda", **config) as runtime:
        model = runtime.load(relu_model())
        for _ in range(warmup):  # calibrate through the real worker threads first
            model.infer(feeds)
        started: list[Any] = []
        runtime.executor.start = lambda task, worker: started.append(task)  # type: ignore[method-assign]
        workers = runtime.executor.workers  # type: ignore[attr-defined]

        def one() -> None:
            future = model.submit(feeds)
            task = started.pop()
            runtime._run_task(task, workers[task.worker.name].sessions[task.stage])
            runtime.scheduler.task_done(task)
            future.result()

        for _ in range(50):
            one()
        counts = {"bytecodes": 0, "calls": 0}

        def trace(frame: Any, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            if event == "opcode":
                counts["bytecodes"] += 1
            elif event == "call":
                counts["calls"] += 1
            return trace

        sys.settrace(trace)
        try:
            for _ in range(requests):
                one()
        finally:
            sys.settrace(None)
    return {k: v / requests for k, v in counts.items()}


BLOCKS = {"session.run back to back": "session.run back to back", LOADED: "session.run back to back"}


def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, p99 and overhead over its floor of each path; a block path's samples are block
    means, so it has no p99 of single requests."""
    rows = {}
    for label, values in samples.items():
        median = statistics.median(values)
        floor = statistics.median(samples[BLOCKS.get(label, "session.run")])
        rows[label] = {"median_us": median * 1e6,
                       "p99_us": math.nan if label in BLOCKS else float(np.percentile(values, 99)) * 1e6,
                       "overhead_us": (median - floor) * 1e6}
    return rows


def markdown(rows: dict[str, dict[str, float]], work_rows: dict[str, dict[str, float]],
             args: argparse.Namespace) -> str:
    lines = [
        "## Scheduler overhead per task (bench/task_overhead.py)",
        "",
        "`PYTHONPATH=.:bench python bench/task_overhead.py "
        f"--requests {args.requests} --rounds {args.rounds}` on {date.today().isoformat()}, "
        f"{platform.node()} ({platform.machine()}, 2-core shared VM), Python {platform.python_version()}, "
        f"onnxruntime {package_version('onnxruntime')}. One request at a time on a one-node model (Relu "
        "over 4 floats), rounds interleaved; overhead = median − session.run's median.",
        "",
        "| path | median µs | p99 µs | overhead µs |",
        "|---|---:|---:|---:|",
    ]
    for label, row in rows.items():
        if label not in BLOCKS:
            overhead = "" if label == "session.run" else f"{row['overhead_us']:.0f}"
            lines.append(f"| {label} | {row['median_us']:.0f} | {row['p99_us']:.0f} | {overhead} |")
    lines += ["", f"Under load: {IN_FLIGHT} requests always queued on the one worker, time per request "
              f"(median of {LOADED_BLOCKS} blocks a round); overhead over session.run called back to back:",
              "", "| path | µs per request | overhead µs |", "|---|---:|---:|"]
    for label in BLOCKS:
        if label in rows:
            overhead = "" if label == BLOCKS[label] else f"{rows[label]['overhead_us']:.0f}"
            lines.append(f"| {label} | {rows[label]['median_us']:.0f} | {overhead} |")
    lines += ["", "Python work per request, the worker's part run on the calling thread (deterministic):", "",
              "| path | bytecodes | Python calls |", "|---|---:|---:|"]
    for label, work in work_rows.items():
        lines.append(f"| {label} | {work['bytecodes']:.0f} | {work['calls']:.0f} |")
    worst = max(rows[label]["overhead_us"] for label in RUNTIMES)
    verdict = "met" if worst <= TARGET_US else "NOT met"
    lines += ["", f"Target: overhead ≤ {TARGET_US:.0f} µs median per task: {verdict} "
              f"(worst configuration {worst:.0f} µs; one bare thread round trip, which a request "
              f"handed to a worker thread pays, cost {rows['thread round trip']['overhead_us']:.0f} µs "
              "in the same run)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python-work", action="store_true",
                        help="only count bytecodes and calls; write nothing")
    args = parser.parse_args()
    work_rows = {label: python_work(config) for label, config in RUNTIMES.items()}
    for label, work in work_rows.items():
        print(f"{label:18} {work['bytecodes']:6.0f} bytecodes, {work['calls']:4.0f} Python calls per request")
    if args.python_work:
        return 0
    rows = summary(measure(args.requests, args.rounds))
    for label, row in rows.items():
        print(f"{label:26} median {row['median_us']:6.0f} µs  p99 {row['p99_us']:6.0f} µs  "
              f"overhead {row['overhead_us']:6.0f} µs")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "task_overhead.json").write_text(json.dumps({"timing": rows, "python_work": work_rows}, indent=1))
    write_section(markdown(rows, work_rows, args), HERE / "RESULTS.md", marker="task_overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
